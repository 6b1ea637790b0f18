"""Manual promotion, rollback, crash safety and the gate on a real MLflow registry."""

from __future__ import annotations

import json
import shutil

import pytest

from models import canary, registry, rollout
from rollout_fixtures import NAME, aliases, channels, register, settings, store  # noqa: F401
from edge_fixtures import edge_model_dirs, signing_keys  # noqa: F401


def _channel_bytes(settings):  # noqa: F811
    folder = settings.bundles_root() / "channels"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))} if folder.exists() else {}


def test_failed_version_needs_override_and_reason(settings, edge_model_dirs, store):  # noqa: F811
    good, bad = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"], gate="fail")
    rollout.promote(store, good, "first champion", "alice")
    before = _channel_bytes(settings)
    with pytest.raises(rollout.PromotionRefused, match="did not pass the gate"):
        rollout.promote(store, bad, "looks fine to me", "bob")
    with pytest.raises(rollout.PromotionRefused, match="needs a reason"):
        rollout.promote(store, bad, "  ", "bob", override_failed_gate=True)
    assert _channel_bytes(settings) == before and aliases(settings) == (good, None)
    assert not (settings.bundles_root() / f"v{bad}").exists()

    out = rollout.promote(store, f"v{bad}", "accuracy floor too strict for this shop; reviewed",
                                  "bob", override_failed_gate=True)
    assert out["overridden"] and aliases(settings) == (bad, good) and channels(settings)["canary"] == f"v{bad}"
    tags = registry.version_tags(settings.tracking_uri(), NAME, bad)
    assert tags["override.reason"].startswith("accuracy floor") and tags["override.by"] == "bob"
    entry = registry.read_history(settings.home_path(), NAME)[-1]
    assert entry["override_failed_gate"] is True and entry["gate_decision"] == "fail" and entry["by"] == "bob"


def test_rollback_moves_aliases_and_republishes_rebuilt_bundles(settings, edge_model_dirs, store):  # noqa: F811
    v1, v2, v3 = (register(settings, edge_model_dirs[k]) for k in ("v1", "v2", "v3"))
    for v in (v1, v2, v3):
        rollout.promote(store, v, f"night {v}", "nightly")
        rollout.release(store, v, "healthy", "nightly")
    assert aliases(settings) == (v3, v2) and channels(settings) == {"canary": "v3", "stable": "v3"}
    shutil.rmtree(settings.bundles_root() / f"v{v2}")  # e.g. a cleaned-up bundle store

    out = rollout.rollback(store, "complaints about refunds", "carol")
    assert aliases(settings) == (v2, v1)  # previous_champion: the champion before v2, not the bad v3
    assert channels(settings) == {"canary": f"v{v2}", "stable": f"v{v2}"}
    assert (settings.bundles_root() / f"v{v2}" / "manifest.json").is_file()
    assert {c["channel"] for c in out["channels"]} == {"canary", "stable"}
    tags = registry.version_tags(settings.tracking_uri(), NAME, v3)
    assert tags["rollout.status"] == "rolled_back" and tags["rollout.reason"] == "complaints about refunds"
    entry = registry.read_history(settings.home_path(), NAME)[-1]
    assert (entry["action"], entry["from"], entry["to"], entry["by"]) == ("rollback", v3, v2, "carol")
    rollout.rollback(store, "v2 too", "carol")  # and once more: to v1
    assert aliases(settings) == (v1, None) and channels(settings)["stable"] == f"v{v1}"


def test_crash_between_alias_and_channel_is_reconciled(settings, edge_model_dirs, monkeypatch, store):  # noqa: F811
    v1, v2 = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"])
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")

    def boom(*a, **k):
        raise OSError("disk full")

    # A crash while building the bundle: nothing moved at all.
    monkeypatch.setattr("models.bundle.build_bundle", boom)
    with pytest.raises(OSError):
        rollout.promote(store, v2, "night 2", "nightly")
    assert aliases(settings) == (v1, None) and channels(settings) == {"canary": "v1", "stable": "v1"}
    monkeypatch.undo()

    # A crash after the alias moved, before the channel: devices stay on the previous champion
    # (a version that was champion, never an unpromoted one) ...
    monkeypatch.setattr(rollout, "_publish", boom)
    with pytest.raises(OSError):
        rollout.promote(store, v2, "night 2", "nightly")
    monkeypatch.undo()
    assert aliases(settings) == (v2, v1) and channels(settings) == {"canary": "v1", "stable": "v1"}
    # ... until the next night (or promote/rollback) reconciles: canary follows the champion.
    moves = rollout.reconcile(store, "nightly:next")
    assert [m["channel"] for m in moves] == ["canary"] and channels(settings) == {"canary": "v2", "stable": "v1"}
    assert rollout.reconcile(store, "again") == []

    # A rollback that crashed before republishing: stable must not keep a rolled-back version.
    rollout.release(store, v2, "healthy", "nightly")
    monkeypatch.setattr(rollout, "_publish", boom)
    with pytest.raises(OSError):
        rollout.rollback(store, "bad", "carol")
    monkeypatch.undo()
    assert aliases(settings)[0] == v1 and channels(settings) == {"canary": "v2", "stable": "v2"}
    rollout.reconcile(store, "nightly:next")
    assert channels(settings) == {"canary": "v1", "stable": "v1"}


def test_failed_gate_publishes_nothing(settings, edge_model_dirs, tmp_path, store, monkeypatch):  # noqa: F811
    good, bad = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"], gate="fail")
    rollout.promote(store, good, "first", "alice")
    rollout.release(store, good, "first", "alice")
    before, history = _channel_bytes(settings), registry.read_history(settings.home_path(), NAME)
    candidate = tmp_path / "candidate"
    shutil.copytree(edge_model_dirs["v2"], candidate / "edge")
    with pytest.raises(rollout.PromotionRefused):
        rollout.promote(store, bad, "gate failed?", "nightly", edge_dir=candidate / "edge")
    assert _channel_bytes(settings) == before and aliases(settings) == (good, None)
    assert registry.read_history(settings.home_path(), NAME) == history
    assert not (settings.bundles_root() / f"v{bad}").exists()
    # The nightly's own path for a passing candidate: bundle signed from its folder (no download),
    # with the lineage its registration tagged → champion → canary.
    passed = register(settings, edge_model_dirs["v3"])
    shutil.rmtree(candidate / "edge")
    shutil.copytree(edge_model_dirs["v3"], candidate / "edge")
    monkeypatch.setattr(registry, "download_version", lambda *a, **k: pytest.fail("the night's bundle was downloaded"))
    out = rollout.promote(store, passed, "gate passed", "nightly", edge_dir=candidate / "edge")
    assert out["promotion"]["to"] == passed and aliases(settings) == (passed, good)
    assert channels(settings) == {"canary": f"v{passed}", "stable": f"v{good}"}
    manifest = json.loads((settings.bundles_root() / f"v{passed}" / "manifest.json").read_text())
    assert manifest["metrics"] == {"accuracy": 0.9} and manifest["data_hash"] == "abc"
    assert (settings.bundles_root() / f"v{passed}" / "model.onnx").read_bytes() == \
        (edge_model_dirs["v3"] / "model.onnx").read_bytes()


def test_cli_promote_rollback_history(settings, edge_model_dirs, monkeypatch, capsys):  # noqa: F811
    """The commands, through the real Prefect flows (one test API for this test)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli import main

    for key in ("EDGELOOP_HOME", "MLFLOW_TRACKING_URI", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(key, raising=False)  # main() sets them; monkeypatch restores them after
    v1, bad = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"], gate="fail")
    sets = ["--set", f"home={settings.home}", "--set", f"bundle.signing_key={settings.bundle.signing_key}",
            "--set", f"bundle.public_key={settings.bundle.public_key}"]
    with prefect_test_harness(server_startup_timeout=120):
        assert main(["promote", v1, "--reason", "first", "--by", "alice", *sets]) == 0
        assert main(["promote", bad, "--reason", "try", *sets]) == 1
        assert "did not pass the gate" in capsys.readouterr().err
        assert main(["promote", bad, "--reason", "reviewed by hand", "--override-failed-gate", *sets]) == 0
        assert main(["rollback", "--reason", "complaints", "--by", "carol", *sets]) == 0
    assert aliases(settings)[0] == v1 and channels(settings) == {"canary": "v1", "stable": "v1"}
    capsys.readouterr()
    assert main(["history", "--json", *sets]) == 0
    history = json.loads(capsys.readouterr().out)
    # the first promotion is also the first release (no stable channel to canary against)
    assert [h["action"] for h in history] == ["promote", "stable", "promote", "rollback"]
    assert history[2]["override_failed_gate"] and history[3]["by"] == "carol"


def test_model_card_shows_the_promotion_history():
    from models.card import render_card
    from models.gate import Check, GateDecision

    decision = GateDecision(False, [Check("accuracy_floor", 0.5, 0.85, ">=", False)])
    history = [{"at": "2026-11-01T02:00:00+00:00", "action": "promote", "from": None, "to": "1", "by": "nightly",
                "why": "gate passed"},
               {"at": "2026-11-02T09:00:00+00:00", "action": "promote", "from": "1", "to": "2", "by": "bob",
                "why": "reviewed", "override_failed_gate": True},
               {"at": "2026-11-03T02:00:00+00:00", "action": "rollback", "from": "2", "to": "1", "by": "nightly",
                "why": "canary unhealthy"}]
    card = render_card(NAME, "3", decision, {}, {"night": "2026-11-03"}, history)
    assert "**Gate: FAIL**" in card and "| accuracy_floor |" in card
    section = card.split("## Promotion history")[1]
    assert "**promote** — → v1 by nightly" in section
    assert "v1 → v2 by bob: reviewed (**failed gate overridden**)" in section
    assert "**rollback** v2 → v1 by nightly: canary unhealthy" in section
