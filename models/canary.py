"""The canary's judgement: the devices' feedback decides whether it is released or rolled back."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Literal

import pandas as pd

from edge.channels import CANARY, STABLE
from edgeloop.config import BundleConfig
from models import rollout
from models.stores import StudentStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryVerdict:
    """What the feedback says about the canary. ``action``: none / wait / release / rollback."""

    action: Literal["none", "wait", "release", "rollback"]
    reason: str
    canary_version: str | None = None
    stable_version: str | None = None
    canary_events: int = 0
    stable_events: int = 0
    canary_acceptance: float | None = None
    stable_acceptance: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def acceptance(feedback: pd.DataFrame, model_version: str) -> tuple[int, float | None]:
    """(events, acceptance rate) of feedback events for ``model_version`` (a bundle name, ``v3``)."""
    if feedback.empty:
        return 0, None
    rows = feedback[feedback["model_version"] == model_version]
    return len(rows), (float(rows["accepted"].astype(bool).mean()) if len(rows) else None)


def judge_canary(feedback: pd.DataFrame, canary: str | None, stable: str | None, cfg: BundleConfig) -> CanaryVerdict:
    """Compare the canary's acceptance rate with stable's over feedback events.

    ``canary``/``stable`` are bundle names (``v3``) or None when unpublished. With no stable yet
    the canary is released at once (a first release has nothing to compare with; the gate's
    floors stood for it). Both need ``cfg.canary_min_events`` events before a verdict; then the
    canary is rolled back when its rate is more than ``cfg.canary_min_acceptance_margin``
    below stable's, and released otherwise.
    """
    if canary is None:
        return CanaryVerdict("none", "no canary published", canary, stable)
    if canary == stable:
        return CanaryVerdict("none", f"canary {canary} is already stable", canary, stable)
    if stable is None:
        return CanaryVerdict("release", f"first release: no stable channel yet, {canary} becomes stable",
                             canary, stable)
    (n_c, rate_c), (n_s, rate_s) = acceptance(feedback, canary), acceptance(feedback, stable)
    found = dict(canary_events=n_c, stable_events=n_s, canary_acceptance=rate_c, stable_acceptance=rate_s)
    need = cfg.canary_min_events
    if n_c < need or n_s < need:
        return CanaryVerdict("wait", f"not enough feedback yet: canary {canary} {n_c}, stable {stable} {n_s} "
                             f"event(s), {need} needed each", canary, stable, **found)
    gap = rate_s - rate_c
    if gap > cfg.canary_min_acceptance_margin + 1e-9:  # exactly at the margin is healthy (no float noise)
        return CanaryVerdict("rollback", f"canary {canary} acceptance {rate_c:.3f} is {gap:.3f} below stable "
                             f"{stable} {rate_s:.3f} (margin {cfg.canary_min_acceptance_margin}) over "
                             f"{n_c}/{n_s} events", canary, stable, **found)
    return CanaryVerdict("release", f"canary {canary} acceptance {rate_c:.3f} vs stable {stable} {rate_s:.3f} "
                         f"within margin {cfg.canary_min_acceptance_margin} over {n_c}/{n_s} events",
                         canary, stable, **found)


def settle_canary(store: StudentStore, cfg: BundleConfig, feedback: pd.DataFrame, by: str) -> dict:
    """Reconcile the channels, judge the canary on ``feedback`` and act: release it or roll it back;
    then re-sign the TUF timestamp (:func:`models.rollout.resign`), as the night must every run.

    A rollback moves ``canary`` and ``champion`` to stable's version (the one the feedback
    vouches for; normally ``previous_champion``) and tags the canary version
    ``rollout.status=rolled_back`` with the verdict as ``rollout.reason``.
    """
    from models.bundle import read_channel

    rollout.reconcile(store, by)  # canary == champion from here on
    names = {ch: (read_channel(store.bundles_root, ch) or {}).get("model_version") for ch in (CANARY, STABLE)}
    verdict = judge_canary(feedback, names[CANARY], names[STABLE], cfg)
    out: dict = {"verdict": verdict.to_dict(), "action": verdict.action}
    if verdict.action == "release":
        out.update(rollout.release(store, names[CANARY], f"canary healthy: {verdict.reason}", by))
    elif verdict.action == "rollback":
        out.update(rollout.rollback(store, f"canary unhealthy: {verdict.reason}", by,
                                    to_version=names[STABLE], channels=(CANARY,)))
    out["tuf_versions"] = rollout.resign(store)
    log.info("canary %s: %s (%s)", names[CANARY], verdict.action, verdict.reason)
    return out
