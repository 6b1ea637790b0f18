"""One edge device: follow a channel, install verified bundles, predict, record feedback.

Device home layout::

    home/models/<version>/          verified bundles (only current and previous are kept)
    home/models/<version>.partial/  a download in progress; never loaded, removed on failure
    home/current -> models/<version>    symlinks, each swapped with one atomic rename
    home/previous -> models/<version>
    home/feedback/<date>.jsonl      feedback events for the night to collect
    home/tuf/                       the pinned TUF root and trusted metadata, once enrolled
    home/last_refusal.json          why the last refused sync was refused (``status`` shows it)

A bundle is verified (signature, then every file) after download and again whenever a process
first loads it, so neither a tampered server nor a corrupted disk ever reaches ONNX Runtime.
A device enrolled with a TUF root (:meth:`Device.enroll`) follows channels only through the TUF
repository at ``bundles`` (:mod:`edge.updater`): older, expired or mixed metadata and any file the
signed targets do not name are refused before anything is installed.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edge.channels import CANARY, STABLE
from edge.feedback import append_event, is_device_id, looks_like_message_id, make_event, message_id
from edge.fetch import FetchError, PlainFeed, Source, check_record, open_source
from edge.manifest import MANIFEST_FILE
from edge.predictor import LABELS_FILE, OnnxPredictor
from edge.redact import redact
from edge.verify import BundleVerificationError, verify_bundle

log = logging.getLogger(__name__)

TUF_DIR = "tuf"
LAST_REFUSAL = "last_refusal.json"
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
    device that only serves what it has); for a device enrolled with a TUF root it is the TUF
    repository (the night's ``<home>/tuf``). ``public_key`` is the PEM file of the key that signs bundles.
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
        self.bundles = bundles
        self._plain = PlainFeed(self.source, public_key, max_bundle_bytes) if self.source is not None else None
        self.public_key = Path(public_key)
        self.canary_share = canary_share
        self.max_bundle_bytes = max_bundle_bytes
        self.timeout = timeout
        self.threads = threads
        self._updater = None  # edge.updater.TufUpdater, made on the first sync once enrolled
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
        """Id, channel, installed versions, TUF enrolment and the last refused sync (or None)."""
        refusal = self.home / LAST_REFUSAL
        return {"device_id": self.device_id, "channel": self.channel(),
                "model_version": self.current_version(), "previous_version": self.previous_version(),
                "tuf": self.tuf_status(),
                "last_refusal": json.loads(refusal.read_text(encoding="utf-8")) if refusal.is_file() else None}

    # ---- TUF -------------------------------------------------------------------------------------
    @property
    def tuf_dir(self) -> Path:
        return self.home / TUF_DIR

    def enroll(self, root: bytes | str | Path) -> dict[str, Any]:
        """Pin ``root`` (the night's ``<home>/tuf/metadata/root.json``, delivered out of band) as
        this device's TUF trust anchor; from then on it follows channels only through TUF."""
        from edge.updater import enroll

        enroll(self.tuf_dir, root)
        self._updater = None
        return self.tuf_status()

    def tuf_status(self) -> dict[str, Any]:
        """``enrolled`` and the version of the root the device trusts now (the enrolled one before a sync)."""
        from edge.updater import ENROLLED_ROOT

        if not (self.tuf_dir / ENROLLED_ROOT).is_file():
            return {"enrolled": False}
        trusted = self.tuf_dir / "metadata" / "root.json"  # ngclient's cache, once a sync has run
        root = json.loads((trusted if trusted.is_file() else self.tuf_dir / ENROLLED_ROOT).read_bytes())
        return {"enrolled": True, "root_version": root["signed"]["version"]}

    def _tuf(self):
        """The device's :class:`edge.updater.TufUpdater`, or None when it is not enrolled."""
        if self._updater is None and self.tuf_status()["enrolled"] and self.bundles is not None:
            from edge.updater import TufUpdater

            self._updater = TufUpdater(self.tuf_dir, self.bundles, timeout=self.timeout,
                                       max_bundle_bytes=self.max_bundle_bytes)
        return self._updater

    # ---- sync --------------------------------------------------------------------------------
    def sync(self) -> SyncResult:
        """Install the bundle the device's channel points at, if it verifies and loads.

        On any failure the running model is kept and the result says why; nothing raises for a
        bad bundle or an unreachable server. A refusal (``refused``: TUF refused the repository's
        metadata, or a bundle failed verification or its smoke query) is kept for :meth:`status`.
        """
        channel = self.channel()
        with self._sync_lock:
            current = self.current_version()
            try:
                record = self._read_channel(channel)
            except BundleVerificationError as exc:  # edge.updater.UpdateRefused: an attack or a frozen mirror
                return self._report("refused", channel, current, None, f"repository refused: {exc}",
                                    getattr(exc, "kind", None))
            except (FetchError, ValueError) as exc:
                return self._report("failed", channel, current, None, f"cannot read channel: {exc}")
            target = record["model_version"]
            if target == current and self._usable(target):
                return SyncResult("up_to_date", channel, current, target)
            try:
                folder = self._obtain(record)
                predictor = self._load(folder)
            except BundleVerificationError as exc:
                return self._report("refused", channel, current, target, f"bundle {target} refused: {exc}",
                                    getattr(exc, "kind", "bundle"))
            except FetchError as exc:
                return self._report("failed", channel, current, target, f"download of {target} failed: {exc}")
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises many kinds for a bad model
                return self._report("refused", channel, current, target,
                                    f"bundle {target} verified but does not load: {exc}", "smoke")
            self._install(target, predictor)
            self._prune()
            log.info("device %s now runs %s from %s (was %s)", self.device_id, target, channel, current)
            return SyncResult("updated", channel, target, target)

    def _report(self, status, channel, current, target, reason, kind: str | None = None) -> SyncResult:
        log.warning("device %s sync %s: %s; keeping %s", self.device_id, status, reason, current)
        result = SyncResult(status, channel, current, target, reason)
        if status == "refused":
            tmp = self.home / f".{LAST_REFUSAL}.tmp"
            self.home.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({**result.to_dict(), "kind": kind,
                                       "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
            os.replace(tmp, self.home / LAST_REFUSAL)
        return result

    def _read_channel(self, channel: str) -> dict[str, Any]:
        if self.source is None:
            raise FetchError("no bundles source configured")
        updater = self._tuf()
        if updater is None:
            return self._plain.channel(channel)
        updater.refresh()  # every sync: this is where rollback, freeze and mix-and-match are refused
        return updater.channel(channel)

    def _usable(self, version: str) -> bool:
        return (self.models_dir / version / MANIFEST_FILE).is_file()

    def _obtain(self, record: dict[str, Any]) -> Path:
        """A verified local folder for the channel's bundle, downloading it when needed."""
        updater = self._tuf()
        if updater is None:
            return self._plain.fetch_bundle(record, self.models_dir)
        folder = updater.fetch_bundle(record, self.models_dir, public_key=self.public_key)
        check_record(folder, record, self.public_key)  # TUF vouched for the bytes; the record for the version
        return folder

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

