"""One edge device: follow a channel, install verified bundles, predict, record feedback.

Device home layout::

    home/models/<version>/          verified bundles (only current and previous are kept)
    home/models/<version>.partial/  a download in progress; never loaded, removed on failure
    home/current -> models/<version>    symlinks, each swapped with one atomic rename
    home/previous -> models/<version>
    home/feedback/<date>.jsonl      feedback events for the night to collect

A bundle is verified (signature, then every file) after download and again whenever a process
first loads it, so neither a tampered server nor a corrupted disk ever reaches ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from edge.channels import CANARY, STABLE, channel_file, followed, parse_record
from edge.feedback import append_event, is_device_id, looks_like_message_id, make_event, message_id
from edge.fetch import FetchError, Source, open_source
from edge.manifest import MANIFEST_FILE
from edge.predictor import LABELS_FILE, OnnxPredictor
from edge.redact import redact
from edge.verify import (BundleVerificationError, check_manifest_shape, read_manifest,
                         verify_bundle, verify_signature)

log = logging.getLogger(__name__)

MANIFEST_LIMIT = 1 << 20
MAX_TEXT_CHARS = 20_000
_RECENT = 1024  # message ids remembered so feedback can name a message by id only


class NoModelError(RuntimeError):
    """The device has no usable model yet (run ``sync``) or nothing to roll back to."""


@dataclass(frozen=True)
class SyncResult:
    """Outcome of :meth:`Device.sync`. ``model_version`` is what runs after the sync."""

    status: Literal["updated", "up_to_date", "refused", "failed"]
    channel: str
    model_version: str | None
    target_version: str | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("updated", "up_to_date")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    model_version: str
    message_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canary_bucket(device_id: str) -> float:
    """A stable number in [0, 1) from the device id: the same device always lands the same way."""
    return int(hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:15], 16) / 16 ** 15


def assign_channel(device_id: str, canary_share: float) -> str:
    """``canary`` for the ``canary_share`` of ids whose bucket falls below it, else ``stable``."""
    return CANARY if canary_bucket(device_id) < canary_share else STABLE


class Device:
    """An edge device rooted at ``home`` that follows channels published under ``bundles``.

    ``bundles`` is the bundles root as a path, ``file://`` URL or ``http(s)://`` URL (None for a
    device that only serves what it has); ``public_key`` the PEM file of the key that signs bundles.
    """

    def __init__(self, device_id: str, home: str | Path, bundles: str | Path | None, public_key: str | Path,
                 canary_share: float = 0.1, *, max_bundle_bytes: int = 1 << 30,
                 timeout: float = 30.0, threads: int = 1):
        if not is_device_id(device_id):
            raise ValueError(f"device_id {device_id!r} must be 'dev-' + 4-32 lowercase letters/digits")
        if not 0.0 <= canary_share <= 1.0:
            raise ValueError(f"canary_share must be within [0, 1], got {canary_share}")
        self.device_id = device_id
        self.home = Path(home)
        self.source: Source | None = open_source(bundles, timeout) if bundles is not None else None
        self.public_key = Path(public_key)
        self.canary_share = canary_share
        self.max_bundle_bytes = max_bundle_bytes
        self.threads = threads
        self._lock = threading.RLock()  # guards the running predictor; held only briefly
        self._sync_lock = threading.Lock()  # one sync/rollback at a time; predictions go on meanwhile
        self._predictor: OnnxPredictor | None = None
        self._predictor_version: str | None = None
        self._recent: OrderedDict[str, str] = OrderedDict()

    # ---- state -----------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    def channel(self) -> str:
        """The channel this device follows, from a stable hash of its id."""
        return assign_channel(self.device_id, self.canary_share)

    def _pointer(self, name: str) -> str | None:
        link = self.home / name
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def current_version(self) -> str | None:
        """The installed model version, or None before the first successful sync."""
        return self._pointer("current")

    def previous_version(self) -> str | None:
        """The version ``rollback`` would return to, or None."""
        return self._pointer("previous")

    def status(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "channel": self.channel(),
                "model_version": self.current_version(), "previous_version": self.previous_version()}

    # ---- sync --------------------------------------------------------------------------------
    def sync(self) -> SyncResult:
        """Install the bundle the device's channel points at, if it verifies and loads.

        On any failure the running model is kept and the result says why; nothing raises for a
        bad bundle or an unreachable server.
        """
        channel = self.channel()
        with self._sync_lock:
            current = self.current_version()
            try:
                record = self._read_channel(channel)
            except (FetchError, ValueError) as exc:
                return self._report("failed", channel, current, None, f"cannot read channel: {exc}")
            target = record["model_version"]
            if target == current and self._usable(target):
                return SyncResult("up_to_date", channel, current, target)
            try:
                folder = self._obtain(record)
                predictor = self._load(folder)
            except BundleVerificationError as exc:
                return self._report("refused", channel, current, target, f"bundle {target} refused: {exc}")
            except FetchError as exc:
                return self._report("failed", channel, current, target, f"download of {target} failed: {exc}")
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many kinds for a bad model
                return self._report("refused", channel, current, target,
                                    f"bundle {target} verified but does not load: {exc}")
            self._install(target, predictor)
            self._prune()
            log.info("device %s now runs %s from %s (was %s)", self.device_id, target, channel, current)
            return SyncResult("updated", channel, target, target)

    def _report(self, status, channel, current, target, reason) -> SyncResult:
        log.warning("device %s sync %s: %s; keeping %s", self.device_id, status, reason, current)
        return SyncResult(status, channel, current, target, reason)

    def _read_channel(self, channel: str) -> dict[str, Any]:
        if self.source is None:
            raise FetchError("no bundles source configured")
        names = followed(channel)
        for i, name in enumerate(names):
            try:
                raw = self.source.read_bytes(channel_file(name), MANIFEST_LIMIT)
            except FetchError:
                if i + 1 < len(names):
                    continue
                raise
            return parse_record(raw, name)
        raise AssertionError("unreachable")

    def _usable(self, version: str) -> bool:
        return (self.models_dir / version / MANIFEST_FILE).is_file()

    def _obtain(self, record: dict[str, Any]) -> Path:
        """A verified local folder for the channel's bundle, downloading it when needed."""
        version = record["model_version"]
        final = self.models_dir / version
        if final.is_dir():
            try:  # kept from before (e.g. the previous model): reuse it if it is still intact
                self._verify_local(final, record)
                return final
            except BundleVerificationError as exc:
                log.warning("local copy of %s is damaged (%s); downloading again", version, exc)
                shutil.rmtree(final)
        partial = self.models_dir / f"{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted sync
        partial.mkdir(parents=True)
        try:
            self._download(record, partial)
            self._verify_local(partial, record)
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return final

    def _download(self, record: dict[str, Any], partial: Path) -> None:
        bundle = record["bundle"]
        raw = self.source.read_bytes(f"{bundle}/{MANIFEST_FILE}", MANIFEST_LIMIT)
        (partial / MANIFEST_FILE).write_bytes(raw)
        manifest = read_manifest(partial)
        # Check the signature before downloading the weights: a forged manifest costs nothing.
        verify_signature(manifest, self._key())
        files = check_manifest_shape(manifest)
        total = sum(e["size"] for e in files.values())
        if total > self.max_bundle_bytes:
            raise BundleVerificationError(f"bundle is {total} bytes, above this device's limit of "
                                          f"{self.max_bundle_bytes}")
        for name, entry in sorted(files.items()):
            self.source.download(f"{bundle}/{name}", partial / name, entry["size"])

    def _verify_local(self, folder: Path, record: dict[str, Any]) -> None:
        digest = hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest() \
            if (folder / MANIFEST_FILE).is_file() else None
        manifest = verify_bundle(folder, self.public_key)
        if digest != record["manifest_sha256"]:
            raise BundleVerificationError(
                f"manifest sha256 {str(digest)[:16]}… differs from the channel's "
                f"{record['manifest_sha256'][:16]}…")
        if manifest.get("model_version") != record["model_version"]:
            raise BundleVerificationError(
                f"manifest model_version {manifest.get('model_version')!r} differs from the "
                f"channel's {record['model_version']!r}")

    def _key(self):
        from edge.manifest import load_public_key
        return load_public_key(self.public_key)

    def _load(self, folder: Path) -> OnnxPredictor:
        """Open the bundle and answer one smoke query, so a model that cannot run is refused."""
        predictor = OnnxPredictor(folder, threads=self.threads)
        probs = predictor.predict_proba(["hello"])
        if probs.shape != (1, len(predictor.labels)):
            raise BundleVerificationError(
                f"model answers {probs.shape[1]} classes but labels.json lists {len(predictor.labels)}")
        return predictor

    def _install(self, version: str, predictor: OnnxPredictor) -> None:
        with self._lock:
            current = self.current_version()
            if current and current != version:
                self._point("previous", current)
            self._point("current", version)
            self._predictor, self._predictor_version = predictor, version

    def _point(self, name: str, version: str) -> None:
        # rename() over an existing symlink is atomic: a reader sees the old or the new model.
        tmp = self.home / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"models/{version}", tmp)
        os.replace(tmp, self.home / name)

    def _prune(self) -> None:
        keep = {self.current_version(), self.previous_version()}
        for entry in self.models_dir.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def rollback(self) -> str:
        """Swap back to the previous model and return its version.

        The next ``sync`` installs the channel's version again: to make a rollback stick, move
        the channel back on the server.
        """
        with self._sync_lock, self._lock:
            previous, current = self.previous_version(), self.current_version()
            if previous is None:
                raise NoModelError("no previous model to roll back to")
            folder = self.models_dir / previous
            verify_bundle(folder, self.public_key)
            predictor = self._load(folder)
            if current:
                self._point("previous", current)
            self._point("current", previous)
            self._predictor, self._predictor_version = predictor, previous
            log.warning("device %s rolled back from %s to %s", self.device_id, current, previous)
            return previous

    # ---- serving -----------------------------------------------------------------------------
    def _active(self) -> tuple[OnnxPredictor, str]:
        with self._lock:
            version = self.current_version()
            if version is None:
                raise NoModelError("no model installed yet; run sync first")
            if self._predictor is None or self._predictor_version != version:
                self._open_current(version)
            return self._predictor, self._predictor_version

    def _open_current(self, version: str) -> None:
        """Verify and load the installed model; fall back to the previous one if it is damaged."""
        try:
            verify_bundle(self.models_dir / version, self.public_key)
            self._predictor, self._predictor_version = self._load(self.models_dir / version), version
        except BundleVerificationError as exc:
            previous = self.previous_version()
            log.error("installed model %s failed verification (%s); falling back to %s",
                      version, exc, previous)
            if previous is None or previous == version:
                raise NoModelError(f"installed model {version} is damaged and there is no "
                                   f"previous model: {exc}") from exc
            verify_bundle(self.models_dir / previous, self.public_key)
            self._predictor, self._predictor_version = self._load(self.models_dir / previous), previous
            self._point("current", previous)
            (self.home / "previous").unlink(missing_ok=True)

    def labels(self) -> list[str]:
        """Labels of the running model."""
        return list(self._active()[0].labels)

    def predict(self, text: str) -> Prediction:
        """Redact ``text``, then classify it with the running model."""
        _check_text(text)
        redacted, _ = redact(text)
        predictor, version = self._active()
        label, confidence = predictor.predict([redacted])[0]
        mid = message_id(redacted)
        with self._lock:
            self._recent[mid] = redacted
            self._recent.move_to_end(mid)
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)
        return Prediction(label, round(confidence, 6), version, mid)

    def feedback(self, message: str, predicted: str, accepted: bool,
                 corrected_label: str | None = None, *, model_version: str | None = None) -> dict[str, Any]:
        """Record whether the user accepted ``predicted`` for ``message`` and return the event.

        ``message`` is the message text (redacted here before it is stored) or the
        ``message_id`` a :meth:`predict` returned; for an id this device no longer remembers,
        the event carries the id and no text. ``model_version`` defaults to the running model.
        """
        if not isinstance(message, str) or not message.strip():
            raise ValueError("feedback field 'message' must be a non-empty string (text or message_id)")
        if looks_like_message_id(message):
            mid, text = message, self._recent.get(message)
        else:
            _check_text(message)
            text, _ = redact(message)
            mid = message_id(text)
        version = model_version or self.current_version()
        self._check_labels(version, predicted=predicted, corrected_label=corrected_label)
        event = make_event(device_id=self.device_id, model_version=version, message_id=mid, text=text,
                           predicted=predicted, accepted=accepted, corrected_label=corrected_label)
        append_event(self.home, event)
        return event

    def _check_labels(self, version: str | None, **fields: str | None) -> None:
        path = self.models_dir / str(version) / LABELS_FILE
        if version is None or not path.is_file():
            return  # an old model's labels are gone; the night validates against its own set
        labels = json.loads(path.read_text(encoding="utf-8"))
        for field, value in fields.items():
            if value is not None and value not in labels:
                raise ValueError(f"feedback field '{field}' is {value!r}, not a label of model "
                                 f"{version} ({', '.join(labels)})")


def _check_text(text: Any) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("field 'text' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"field 'text' is {len(text)} characters, above the limit of {MAX_TEXT_CHARS}")

