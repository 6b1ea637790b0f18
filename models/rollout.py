"""Promotion you can trust: manual promotion, rollback, canary judgement, channel repair.

Plain functions over the registry (:mod:`models.registry`) and the bundle channels
(:mod:`models.bundle`); Prefect tasks in ``tasks/registry.py`` wrap them.

**The order every move follows** (promotion, rollback, the nightly's promotion alike):

1. build and verify the signed bundle (nothing is visible to anyone yet);
2. tag the model version (``rollout.*``, ``override.*``): the record exists before the move;
3. move the ``champion`` alias, and append the move to the promotion history;
4. publish the channel(s), each publication verifying the bundle again.

**Invariant.** A channel only ever points at a verified bundle of a version that is, or was,
champion: never at a version nobody promoted. A crash between steps 3 and 4 leaves the channels
on the version they had (the previous champion: known to work, recorded). That state is not
left standing: :func:`reconcile_channels`, which runs at the start of every night and of every
``promote``/``rollback`` flow, finishes the move: ``canary`` := champion, and a ``stable`` that
points at a rolled-back version moves to the champion. After reconciliation ``canary`` is the
champion and no channel serves a rolled-back version.
"""

from __future__ import annotations

import ast
import logging
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pandas as pd

from edgeloop.config import BundleConfig, Settings
from models import registry

log = logging.getLogger(__name__)

ROLLED_BACK = "rolled_back"


class PromotionRefused(ValueError):
    """A promotion or rollback that the rules forbid; the message says which rule."""


def bundle_name(version: str) -> str:
    """The name bundles and channels give a registry version: ``"3"`` → ``"v3"``."""
    return f"v{registry_version(version)}"


def registry_version(version: str | int) -> str:
    """The registry's version number from ``3``, ``"3"`` or ``"v3"``."""
    v = str(version).strip()
    v = v[1:] if v[:1] in ("v", "V") else v
    if not v.isdigit():
        raise PromotionRefused(f"model version {version!r} is not a registry version (3 or v3)")
    return v


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tags(settings: Settings, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    name = settings.mlflow.student_model_name
    try:
        return registry.version_tags(settings.tracking_uri(), name, version)
    except MlflowException:
        raise PromotionRefused(f"{name} v{version} is not registered") from None


def _channel_version(settings: Settings, channel: str) -> str | None:
    from models.bundle import read_channel

    record = read_channel(settings.bundles_root(), channel)
    return registry_version(record["model_version"]) if record else None


# ---- bundles -----------------------------------------------------------------------------------
def _meta(tags: dict[str, str]) -> tuple[dict, str, str, str | None]:
    """(metrics, teacher version, data hash, backend) as ``register_candidate`` tagged them."""
    try:
        metrics = ast.literal_eval(tags.get("meta.metrics", "{}"))
    except (ValueError, SyntaxError):
        metrics = {}
    return (metrics if isinstance(metrics, dict) else {}, tags.get("meta.teacher_version", ""),
            tags.get("meta.split_hash", ""), tags.get("meta.backend"))


def ensure_bundle(settings: Settings, version: str) -> Path:
    """The verified bundle folder of ``version``, rebuilt from the registry when missing.

    The version's ``model/edge`` artifact folder is downloaded and signed into
    ``bundles/v<version>``. An existing bundle is verified, never rebuilt: published bundles are
    immutable, and a damaged one is an error for a person to look at.
    """
    from edge.verify import verify_bundle
    from models.bundle import build_bundle, ensure_signing_key

    version = registry_version(version)
    folder = settings.bundles_root() / bundle_name(version)
    ensure_signing_key(settings.signing_key_path(), settings.public_key_path())
    if not (folder / "manifest.json").is_file():
        tags = _tags(settings, version)
        metrics, teacher, data_hash, backend = _meta(tags)
        work = settings.home_path() / "cache"
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work, prefix=f"bundle-v{version}-") as tmp:
            model = registry.download_version(settings.tracking_uri(), settings.mlflow.student_model_name,
                                              version, tmp)
            build_bundle(model / "edge", folder, model_version=bundle_name(version), metrics=metrics,
                         teacher_version=teacher, data_hash=data_hash,
                         backend=backend or settings.student.quantize, signing_key=settings.signing_key_path())
        log.info("rebuilt bundle %s from the registry", folder)
    verify_bundle(folder, settings.public_key_path())
    return folder


def _publish(settings: Settings, channel: str, version: str, reason: str) -> dict:
    from models.bundle import publish_channel

    return publish_channel(settings.bundles_root(), channel, bundle_name(version), reason,
                           public_key=settings.public_key_path())


# ---- promotion -----------------------------------------------------------------------------------
def check_promotable(settings: Settings, version: str, reason: str, override_failed_gate: bool = False) -> dict:
    """The version's tags when it may be promoted; :class:`PromotionRefused` says why not.

    Every promotion needs a reason. A version whose gate did not pass (``gate.decision`` not
    ``pass``, including untagged versions) needs ``override_failed_gate`` as well.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise PromotionRefused("a promotion needs a reason (who reviewed what)")
    version = registry_version(version)
    tags = _tags(settings, version)
    decision = tags.get("gate.decision", "missing")
    if decision != "pass" and not override_failed_gate:
        raise PromotionRefused(
            f"{settings.mlflow.student_model_name} v{version} did not pass the gate (gate.decision={decision}: "
            f"{tags.get('gate.reason', 'no reason recorded')}); promote it only with override_failed_gate "
            "and a reason")
    return tags


def promote_version(settings: Settings, version: str, reason: str, by: str, *,
                    override_failed_gate: bool = False) -> dict:
    """Make ``version`` the champion and publish it to ``canary`` (the order is in the module doc).

    A failed-gate version needs ``override_failed_gate`` and a reason; the override is recorded
    in the history entry and as ``override.reason``/``override.by`` model-version tags.
    """
    version = registry_version(version)
    tags = check_promotable(settings, version, reason, override_failed_gate)
    name, reason = settings.mlflow.student_model_name, reason.strip()
    overridden = tags.get("gate.decision") != "pass"
    folder = ensure_bundle(settings, version)
    new_tags = {"rollout.status": "canary", "rollout.reason": reason, "rollout.by": by, "rollout.at": _now()}
    extra: dict = {}
    if overridden:
        new_tags.update({"override.reason": reason, "override.by": by})
        extra = {"override_failed_gate": True, "gate_decision": tags.get("gate.decision", "missing")}
    registry.set_version_tags(settings.tracking_uri(), name, version, new_tags)
    entry = registry.move_champion(settings.tracking_uri(), settings.home_path(), name, version, why=reason,
                                   by=by, action="promote", **extra)
    channel = _publish(settings, "canary", version, reason)
    return {"promotion": entry, "bundle": str(folder), "channel": channel, "overridden": overridden}


def promote_stable(settings: Settings, version: str, reason: str, by: str) -> dict:
    """Publish the (healthy) canary ``version`` to ``stable``; history action ``stable``."""
    version = registry_version(version)
    name = settings.mlflow.student_model_name
    ensure_bundle(settings, version)
    registry.set_version_tags(settings.tracking_uri(), name, version,
                              {"rollout.status": "stable", "rollout.reason": reason, "rollout.by": by,
                               "rollout.at": _now()})
    before = _channel_version(settings, "stable")
    channel = _publish(settings, "stable", version, reason)
    entry = registry.append_history(settings.home_path(), name, action="stable", from_version=before,
                                    to_version=version, why=reason, by=by)
    return {"promotion": entry, "channel": channel}


# ---- rollback ------------------------------------------------------------------------------------
def _champion_before(settings: Settings, version: str) -> str | None:
    """Who was champion before ``version`` was last promoted (unless since rolled back)."""
    for h in reversed(registry.read_history(settings.home_path(), settings.mlflow.student_model_name)):
        if h.get("action") == "promote" and h.get("to") == version:
            prior = h.get("from")
            if prior and prior != version and _tags(settings, prior).get("rollout.status") != ROLLED_BACK:
                return prior
            return None
    return None


def rollback(settings: Settings, reason: str, by: str, *, to_version: str | None = None,
             channels: tuple[str, ...] = ("stable", "canary")) -> dict:
    """Move ``champion`` back (to ``previous_champion`` unless ``to_version``) and republish.

    The version rolled away from is tagged ``rollout.status=rolled_back`` with the reason before
    the alias moves; ``previous_champion`` then points at the champion before the target (or is
    removed), so a second rollback never returns to the bad version. ``channels`` are
    republished to the target's bundle, rebuilt from the registry artifact when missing.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise PromotionRefused("a rollback needs a reason")
    reason, name, uri = reason.strip(), settings.mlflow.student_model_name, settings.tracking_uri()
    champion = registry.alias_version(uri, name, registry.CHAMPION)
    target = registry_version(to_version) if to_version else registry.alias_version(uri, name, registry.PREVIOUS_CHAMPION)
    if champion is None or target is None:
        raise PromotionRefused(f"nothing to roll back: champion={champion}, target={target}")
    if target == champion:
        raise PromotionRefused(f"v{target} is already the champion")
    if _tags(settings, target).get("rollout.status") == ROLLED_BACK:
        raise PromotionRefused(f"v{target} was rolled back itself; promote a version explicitly instead")
    folder = ensure_bundle(settings, target)
    registry.set_version_tags(uri, name, champion, {"rollout.status": ROLLED_BACK, "rollout.reason": reason,
                                                    "rollout.by": by, "rollout.at": _now()})
    entry = registry.move_champion(uri, settings.home_path(), name, target, why=reason, by=by, action="rollback")
    prior = _champion_before(settings, target)
    c = registry.client(uri)
    if prior:
        c.set_registered_model_alias(name, registry.PREVIOUS_CHAMPION, prior)
    else:
        c.delete_registered_model_alias(name, registry.PREVIOUS_CHAMPION)
    published = [_publish(settings, ch, target, f"rollback: {reason}") for ch in channels]
    return {"promotion": entry, "bundle": str(folder), "channels": published, "rolled_back": champion}


# ---- reconciliation ------------------------------------------------------------------------------
def reconcile_channels(settings: Settings, by: str) -> list[dict]:
    """Finish a move a crash interrupted: ``canary`` := champion; no channel on a rolled-back version.

    Returns the channel records it wrote (empty when everything was consistent).
    """
    champion = registry.alias_version(settings.tracking_uri(), settings.mlflow.student_model_name,
                                      registry.CHAMPION)
    if champion is None:
        return []
    moves = []
    if _channel_version(settings, "canary") != champion:
        ensure_bundle(settings, champion)
        moves.append(_publish(settings, "canary", champion, f"reconcile: canary follows champion v{champion} ({by})"))
    stable = _channel_version(settings, "stable")
    if stable and stable != champion and _tags(settings, stable).get("rollout.status") == ROLLED_BACK:
        ensure_bundle(settings, champion)
        moves.append(_publish(settings, "stable", champion,
                              f"reconcile: v{stable} was rolled back, stable follows champion v{champion} ({by})"))
    for m in moves:
        log.warning("reconciled channel %s -> %s", m["channel"], m["model_version"])
    return moves


# ---- canary judgement ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CanaryVerdict:
    """What the feedback says about the canary. ``action``: none / wait / promote / rollback."""

    action: Literal["none", "wait", "promote", "rollback"]
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
    the canary is promoted at once (a first release has nothing to compare with; the gate's
    floors stood for it). Both need ``cfg.canary_min_events`` events before a verdict; then the
    canary is rolled back when its rate is more than ``cfg.canary_min_acceptance_margin``
    below stable's, and promoted otherwise.
    """
    if canary is None:
        return CanaryVerdict("none", "no canary published", canary, stable)
    if canary == stable:
        return CanaryVerdict("none", f"canary {canary} is already stable", canary, stable)
    if stable is None:
        return CanaryVerdict("promote", f"first release: no stable channel yet, {canary} becomes stable",
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
    return CanaryVerdict("promote", f"canary {canary} acceptance {rate_c:.3f} vs stable {stable} {rate_s:.3f} "
                         f"within margin {cfg.canary_min_acceptance_margin} over {n_c}/{n_s} events",
                         canary, stable, **found)


def settle_canary(settings: Settings, feedback: pd.DataFrame, by: str) -> dict:
    """Reconcile the channels, judge the canary on ``feedback`` and act: promote it or roll it back.

    A rollback moves ``canary`` and ``champion`` to stable's version (the one the feedback
    vouches for; normally ``previous_champion``) and tags the canary version
    ``rollout.status=rolled_back`` with the verdict as ``rollout.reason``.
    """
    from models.bundle import read_channel

    reconcile_channels(settings, by)  # canary == champion from here on
    names = {ch: (read_channel(settings.bundles_root(), ch) or {}).get("model_version") for ch in ("canary", "stable")}
    verdict = judge_canary(feedback, names["canary"], names["stable"], settings.bundle)
    out: dict = {"verdict": verdict.to_dict(), "action": verdict.action}
    if verdict.action == "promote":
        out.update(promote_stable(settings, names["canary"], f"canary healthy: {verdict.reason}", by))
    elif verdict.action == "rollback":
        out.update(rollback(settings, f"canary unhealthy: {verdict.reason}", by,
                            to_version=names["stable"], channels=("canary",)))
    log.info("canary %s: %s (%s)", names["canary"], verdict.action, verdict.reason)
    return out
