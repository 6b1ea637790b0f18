"""The canary verdict (pure) and the nightly's canary step on a real registry."""

from __future__ import annotations

import pandas as pd
import pytest

from edgeloop.config import BundleConfig
from models import canary, registry, rollout
from rollout_fixtures import NAME, aliases, channels, register, settings, store  # noqa: F401
from edge_fixtures import edge_model_dirs, signing_keys  # noqa: F401

CFG = BundleConfig(canary_min_events=10, canary_min_acceptance_margin=0.05)


def _events(version: str, n: int, accepted: int) -> list[dict]:
    return [{"model_version": version, "accepted": i < accepted} for i in range(n)]


def _feedback(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([e for g in groups for e in g], columns=["model_version", "accepted"])


@pytest.mark.parametrize("canary_n,canary_ok,stable_n,stable_ok,action", [
    (20, 18, 50, 45, "release"),   # same rate
    (20, 17, 50, 45, "release"),   # 0.85 vs 0.90: exactly at the margin is still healthy
    (20, 20, 50, 40, "release"),   # better than stable
    (20, 10, 50, 45, "rollback"),  # 0.50 vs 0.90
    (9, 0, 50, 45, "wait"),        # too few canary events to judge
    (20, 0, 5, 5, "wait"),         # too few stable events to compare with
])
def test_judge_canary(canary_n, canary_ok, stable_n, stable_ok, action):
    fb = _feedback(_events("v2", canary_n, canary_ok), _events("v1", stable_n, stable_ok), _events("v9", 30, 0))
    verdict = canary.judge_canary(fb, "v2", "v1", CFG)
    assert verdict.action == action, verdict.reason
    assert (verdict.canary_events, verdict.stable_events) == (canary_n, stable_n)
    if action == "rollback":
        assert verdict.canary_acceptance == 0.5 and verdict.stable_acceptance == 0.9
        assert "below stable" in verdict.reason


def test_judge_canary_edges():
    empty = _feedback()
    assert canary.judge_canary(empty, None, "v1", CFG).action == "none"
    assert canary.judge_canary(empty, "v1", "v1", CFG).action == "none"
    first = canary.judge_canary(empty, "v1", None, CFG)
    assert first.action == "release" and "no stable" in first.reason


def test_version_names():
    assert rollout.bundle_name("3") == rollout.bundle_name("v3") == "v3"
    with pytest.raises(rollout.PromotionRefused):
        rollout.registry_version("latest")


def test_healthy_canary_becomes_stable(settings, edge_model_dirs, store):  # noqa: F811
    v1, v2 = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"])
    first = rollout.promote(store, v1, "first", "alice")  # no stable channel yet: released at once
    assert first["released"] and channels(settings) == {"canary": "v1", "stable": "v1"}
    assert canary.settle_canary(store, settings.bundle, _feedback(), "night")["action"] == "none"
    rollout.promote(store, v2, "gate passed", "nightly")
    assert channels(settings) == {"canary": "v2", "stable": "v1"}
    fb = _feedback(_events("v2", 12, 11), _events("v1", 40, 36))
    out = canary.settle_canary(store, settings.bundle, fb, "nightly:run1")
    assert out["action"] == "release"
    assert channels(settings) == {"canary": "v2", "stable": "v2"} and aliases(settings) == (v2, v1)
    last = registry.read_history(settings.home_path(), NAME)[-1]
    assert (last["action"], last["from"], last["to"], last["by"]) == ("stable", v1, v2, "nightly:run1")
    assert registry.version_tags(settings.tracking_uri(), NAME, v2)["rollout.status"] == "stable"
    # Nothing left to judge: the next night does nothing.
    assert canary.settle_canary(store, settings.bundle, fb, "nightly:run2")["action"] == "none"


def test_bad_canary_is_rolled_back_with_its_reason(settings, edge_model_dirs, store):  # noqa: F811
    v1, v2 = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"])
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first release", "alice")
    rollout.promote(store, v2, "gate passed", "nightly")
    fb = _feedback(_events("v2", 12, 3), _events("v1", 40, 36))
    out = canary.settle_canary(store, settings.bundle, fb, "nightly:run7")
    assert out["action"] == "rollback"
    assert channels(settings) == {"canary": "v1", "stable": "v1"}
    champion, previous = aliases(settings)
    assert champion == v1 and previous is None  # never back to the bad version
    tags = registry.version_tags(settings.tracking_uri(), NAME, v2)
    assert tags["rollout.status"] == "rolled_back" and "acceptance 0.250" in tags["rollout.reason"]
    last = registry.read_history(settings.home_path(), NAME)[-1]
    assert (last["action"], last["from"], last["to"]) == ("rollback", v2, v1)
    assert "canary unhealthy" in last["why"] and last["by"] == "nightly:run7"
    with pytest.raises(rollout.PromotionRefused, match="nothing to roll back"):
        rollout.rollback(store, "again", "bob")
