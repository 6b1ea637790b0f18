"""Promotion you can trust: promote, release, rollback, and the repair of interrupted moves.

Plain functions over the registry (:mod:`models.registry`) and the bundle channels
(:mod:`models.bundle`, records defined by :mod:`edge.channels`); Prefect tasks in
``tasks/rollout.py`` wrap them. The canary's judgement is in :mod:`models.canary`.

The words, the same at every layer (models, tasks, flows, CLI):

* **promote** a version: it becomes the ``champion`` and its bundle is published to ``canary``;
* **release** a version: its bundle is published to ``stable`` (the canary proved healthy);
* **rollback**: ``champion`` moves back and the channels are republished to it;
* **reconcile**: finish a move a crash interrupted;
* **publish** (lower level): point one channel at a bundle; **bundle**: build and sign it.

Every publication goes to the TUF repository under ``<home>/tuf`` too (:mod:`models.tuf_repository`,
created with its keys on first use, lifetimes from ``bundle.tuf``): devices enrolled with its root
accept a move only through signed, unexpired metadata whose versions go up, so a rollback is a new,
higher version that names the older bundle. :func:`resign` is the night's re-signing of the timestamp.

**The order every move follows** (promotion, rollback, the nightly's promotion alike):

1. build and verify the signed bundle (nothing is visible to anyone yet);
2. tag the model version (``rollout.*``, ``override.*``): the record exists before the move;
3. move the ``champion`` alias, and append the move to the promotion history;
4. publish the channel(s), each publication verifying the bundle again.

**Invariant.** A channel only ever points at a verified bundle of a version that is, or was,
champion: never at a version nobody promoted. A crash between steps 3 and 4 leaves the channels
on the version they had (the previous champion: known to work, recorded). That state is not
left standing: :func:`reconcile`, which runs at the start of every night and of every
``promote``/``rollback`` flow, finishes the move: ``canary`` := champion, and a ``stable`` that
points at a rolled-back version moves to the champion. After reconciliation ``canary`` is the
champion and no channel serves a rolled-back version.
"""

from __future__ import annotations

import ast
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from edge.channels import CANARY, STABLE
from models import registry
from models.stores import StudentStore

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


def _tags(store: StudentStore, version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return registry.version_tags(store.tracking_uri, store.name, version)
    except MlflowException:
        raise PromotionRefused(f"{store.name} v{version} is not registered") from None


def tuf_repository(store: StudentStore):
    """The store's TUF repository (:func:`models.tuf_setup.ensure_repository` on ``store.home``)."""
    from models.tuf_setup import ensure_repository

    return ensure_repository(store.home, expiry=dict(store.tuf_expiry) or None)


def resign(store: StudentStore) -> dict[str, int]:
    """Re-sign the TUF timestamp (and any role past half its life); the night does it every run.

    Devices refuse an expired timestamp, so a night that stops running, or a mirror serving an old
    copy, is noticed within ``bundle.tuf.timestamp_days``. Returns the role versions.
    """
    versions = tuf_repository(store).refresh_timestamp()
    log.info("TUF metadata re-signed: %s", versions)
    return versions


def channel_version(store: StudentStore, channel: str) -> str | None:
    """The registry version ``channel`` serves, or None when it was never published."""
    from models.bundle import read_channel

    record = read_channel(store.bundles_root, channel)
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


def ensure_bundle(store: StudentStore, version: str, edge_dir: str | Path | None = None) -> Path:
    """The verified bundle folder of ``version``, built when missing.

    The bundle is signed from ``edge_dir`` when given (the night's own candidate folder, which it
    registered as this version), else from the version's ``model/edge`` artifact folder; its
    lineage (and ``collab`` policy) comes from the version's ``meta.*`` tags either way. An existing bundle is verified,
    never rebuilt: published bundles are immutable, and a damaged one is for a person to look at.
    A missing folder whose version the TUF repository published is restored from there, byte for
    byte (a rebuilt bundle would be signed anew, hence differ).
    """
    from edge.verify import verify_bundle
    from models.bundle import build_bundle, ensure_signing_key
    from models.registration import collab_block

    version = registry_version(version)
    folder = store.bundles_root / bundle_name(version)
    ensure_signing_key(store.signing_key, store.public_key)
    if not (folder / "manifest.json").is_file() and \
            tuf_repository(store).export_bundle(bundle_name(version), folder) is None:
        tags = _tags(store, version)
        metrics, teacher, data_hash, backend = _meta(tags)
        store.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store.cache_dir, prefix=f"bundle-v{version}-") as tmp:
            source = Path(edge_dir) if edge_dir else \
                registry.download_version(store.tracking_uri, store.name, version, tmp) / "edge"
            build_bundle(source, folder, model_version=bundle_name(version), metrics=metrics,
                         teacher_version=teacher, data_hash=data_hash, backend=backend or store.backend,
                         signing_key=store.signing_key, collab=collab_block(tags))
        log.info("built bundle %s from %s", folder, "the candidate folder" if edge_dir else "the registry")
    verify_bundle(folder, store.public_key)
    return folder


def _publish(store: StudentStore, channel: str, version: str, reason: str) -> dict:
    from models.bundle import publish_channel

    return publish_channel(store.bundles_root, channel, bundle_name(version), reason, public_key=store.public_key,
                           tuf=tuf_repository(store))


# ---- promote and release -------------------------------------------------------------------------
def check_promotable(store: StudentStore, version: str, reason: str, override_failed_gate: bool = False) -> dict:
    """The version's tags when it may be promoted; :class:`PromotionRefused` says why not.

    Every promotion needs a reason. A version whose gate did not pass (``gate.decision`` not
    ``pass``, including untagged versions) needs ``override_failed_gate`` as well.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise PromotionRefused("a promotion needs a reason (who reviewed what)")
    version = registry_version(version)
    tags = _tags(store, version)
    decision = tags.get("gate.decision", "missing")
    if decision != "pass" and not override_failed_gate:
        raise PromotionRefused(
            f"{store.name} v{version} did not pass the gate (gate.decision={decision}: "
            f"{tags.get('gate.reason', 'no reason recorded')}); promote it only with override_failed_gate "
            "and a reason")
    return tags


def promote(store: StudentStore, version: str, reason: str, by: str, *, override_failed_gate: bool = False,
            edge_dir: str | Path | None = None) -> dict:
    """Make ``version`` the champion and publish it to ``canary`` (the order is in the module doc).
    With no ``stable`` channel yet there is nothing to canary against: the first promotion is also
    released to ``stable`` at once, so devices of every cohort have a model after the first night.

    Refused (:class:`PromotionRefused`) before any file is written when the rules forbid it; a
    failed-gate version needs ``override_failed_gate`` and a reason, and the override is recorded
    in the history entry and as ``override.reason``/``override.by`` model-version tags.
    ``edge_dir``: see :func:`ensure_bundle`.
    """
    version = registry_version(version)
    tags = check_promotable(store, version, reason, override_failed_gate)
    reason = reason.strip()
    overridden = tags.get("gate.decision") != "pass"
    folder = ensure_bundle(store, version, edge_dir)
    new_tags = {"rollout.status": CANARY, "rollout.reason": reason, "rollout.by": by, "rollout.at": _now()}
    extra: dict = {}
    if overridden:
        new_tags.update({"override.reason": reason, "override.by": by})
        extra = {"override_failed_gate": True, "gate_decision": tags.get("gate.decision", "missing")}
    registry.set_version_tags(store.tracking_uri, store.name, version, new_tags)
    entry = registry.move_champion(store.tracking_uri, store.home, store.name, version, why=reason, by=by,
                                   action="promote", **extra)
    channel = _publish(store, CANARY, version, reason)
    out = {"promotion": entry, "bundle": str(folder), "channel": channel, "overridden": overridden}
    if channel_version(store, STABLE) is None:
        out["released"] = release(store, version, f"first release: no stable channel yet ({reason})", by)
    return out


def release(store: StudentStore, version: str, reason: str, by: str) -> dict:
    """Publish the (healthy) canary ``version`` to ``stable``; its history action is ``stable``."""
    version = registry_version(version)
    ensure_bundle(store, version)
    registry.set_version_tags(store.tracking_uri, store.name, version,
                              {"rollout.status": STABLE, "rollout.reason": reason, "rollout.by": by,
                               "rollout.at": _now()})
    before = channel_version(store, STABLE)
    channel = _publish(store, STABLE, version, reason)
    entry = registry.append_history(store.home, store.name, action=STABLE, from_version=before,
                                    to_version=version, why=reason, by=by, tracking_uri=store.tracking_uri)
    return {"promotion": entry, "channel": channel}


# ---- rollback ------------------------------------------------------------------------------------
def _champion_before(store: StudentStore, version: str) -> str | None:
    """Who was champion before ``version`` was last promoted (unless since rolled back)."""
    for h in reversed(store.history()):
        if h.get("action") == "promote" and h.get("to") == version:
            prior = h.get("from")
            if prior and prior != version and _tags(store, prior).get("rollout.status") != ROLLED_BACK:
                return prior
            return None
    return None


def rollback(store: StudentStore, reason: str, by: str, *, to_version: str | None = None,
             channels: tuple[str, ...] = (STABLE, CANARY)) -> dict:
    """Move ``champion`` back (to ``previous_champion`` unless ``to_version``) and republish.

    The version rolled away from is tagged ``rollout.status=rolled_back`` with the reason before
    the alias moves; ``previous_champion`` then points at the champion before the target (or is
    removed), so a second rollback never returns to the bad version. ``channels`` are
    republished to the target's bundle, rebuilt from the registry artifact when missing.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise PromotionRefused("a rollback needs a reason")
    reason, name, uri = reason.strip(), store.name, store.tracking_uri
    champion = store.alias(registry.CHAMPION)
    target = registry_version(to_version) if to_version else store.alias(registry.PREVIOUS_CHAMPION)
    if champion is None or target is None:
        raise PromotionRefused(f"nothing to roll back: champion={champion}, target={target}")
    if target == champion:
        raise PromotionRefused(f"v{target} is already the champion")
    if _tags(store, target).get("rollout.status") == ROLLED_BACK:
        raise PromotionRefused(f"v{target} was rolled back itself; promote a version explicitly instead")
    folder = ensure_bundle(store, target)
    registry.set_version_tags(uri, name, champion, {"rollout.status": ROLLED_BACK, "rollout.reason": reason,
                                                    "rollout.by": by, "rollout.at": _now()})
    entry = registry.move_champion(uri, store.home, name, target, why=reason, by=by, action="rollback")
    prior = _champion_before(store, target)
    c = registry.client(uri)
    if prior:
        c.set_registered_model_alias(name, registry.PREVIOUS_CHAMPION, prior)
    else:
        c.delete_registered_model_alias(name, registry.PREVIOUS_CHAMPION)
    published = [_publish(store, ch, target, f"rollback: {reason}") for ch in channels]
    return {"promotion": entry, "bundle": str(folder), "channels": published, "rolled_back": champion}


# ---- reconciliation ------------------------------------------------------------------------------
def reconcile(store: StudentStore, by: str) -> list[dict]:
    """Finish a move a crash interrupted: ``canary`` := champion; no channel on a rolled-back version;
    the TUF repository's channels name what the plain channel files name.

    Returns the channel records it wrote (empty when everything was consistent).
    """
    champion = store.alias(registry.CHAMPION)
    if champion is None:
        return []
    moves = []
    if channel_version(store, CANARY) != champion:
        ensure_bundle(store, champion)
        moves.append(_publish(store, CANARY, champion, f"reconcile: canary follows champion v{champion} ({by})"))
    stable = channel_version(store, STABLE)
    if stable and stable != champion and _tags(store, stable).get("rollout.status") == ROLLED_BACK:
        ensure_bundle(store, champion)
        moves.append(_publish(store, STABLE, champion,
                              f"reconcile: v{stable} was rolled back, stable follows champion v{champion} ({by})"))
    moves += _tuf_follows_channels(store, by)
    for m in moves:
        log.warning("reconciled channel %s -> %s", m["channel"], m["model_version"])
    return moves


def _tuf_follows_channels(store: StudentStore, by: str) -> list[dict]:
    """Point TUF channels at what the plain files (and their history) name where they differ: a home
    published before TUF, or a crash between a publication's TUF write and its plain write."""
    repo, moves = tuf_repository(store), []
    for ch in (CANARY, STABLE):
        plain = channel_version(store, ch)
        signed = (repo.channel(ch) or {}).get("model_version")
        if plain and signed != bundle_name(plain):
            repo.add_bundle(ensure_bundle(store, plain))
            moves.append(repo.set_channel(ch, bundle_name(plain), f"reconcile: TUF {ch} follows v{plain} ({by})"))
    return moves
