"""One edge device: follow a channel, install verified bundles, predict, record feedback.

Device home layout::

    home/models/<version>/          verified bundles (only current and previous are kept)
    home/models/<version>.partial/  a download in progress; never loaded, removed on failure
    home/current -> models/<version>    symlinks, each swapped with one atomic rename
    home/previous -> models/<version>
    home/feedback/<date>.jsonl      feedback events for the night to collect
    home/tuf/                       the pinned TUF root and trusted metadata, once enrolled
    home/last_refusal.json          why the last refused sync was refused (``status`` shows it)
    home/personal/                  the device's own examples and patch (edge/personal.py)
    home/patch_uploads/             what the upload policy lets leave about the patch

A bundle is verified (signature, then every file) after download and again whenever a process
first loads it, so neither a tampered server nor a corrupted disk ever reaches ONNX Runtime.
A device enrolled with a TUF root (:meth:`Device.enroll`) follows channels only through the TUF
repository at ``bundles`` (:mod:`edge.updater`): older, expired or mixed metadata and any file the
signed targets do not name are refused before anything is installed.

Predictions go through the device's patch when one passed its gate (edge/device_patch.py) and are
routed by the bundle's collab policy: device, cloud or rejected (edge/route.py); sync and TUF live
in edge/sync.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from edge.channels import CANARY, STABLE
from edge.cloud import DEFAULT_TIMEOUT_S
from edge.device_patch import DevicePatch
from edge.feedback import append_event, is_device_id, looks_like_message_id, make_event, message_id
from edge.fetch import PlainFeed, Source, open_source
from edge.personal import PersonalConfig, Personalizer
from edge.predictor import LABELS_FILE, OnnxPredictor
from edge.redact import redact
from edge.route import MAX_TEXT_CHARS, DeviceRouting, Prediction, check_text  # noqa: F401 - part of this API
from edge.sync import LAST_REFUSAL, TUF_DIR, DeviceSync, SyncResult  # noqa: F401 - part of this API
from edge.verify import BundleVerificationError, verify_bundle

log = logging.getLogger(__name__)


class NoModelError(RuntimeError):
    """The device has no usable model yet (run ``sync``) or nothing to roll back to."""


def canary_bucket(device_id: str) -> float:
    """A stable number in [0, 1) from the device id: the same device always lands the same way."""
    return int(hashlib.sha256(device_id.encode("utf-8")).hexdigest()[:15], 16) / 16 ** 15


def assign_channel(device_id: str, canary_share: float) -> str:
    """``canary`` for the ``canary_share`` of ids whose bucket falls below it, else ``stable``."""
    return CANARY if canary_bucket(device_id) < canary_share else STABLE


class Device(DeviceSync, DevicePatch, DeviceRouting):
    """An edge device rooted at ``home`` that follows channels published under ``bundles``.

    ``bundles`` is the bundles root as a path, ``file://`` URL or ``http(s)://`` URL (None for a
    device that only serves what it has); for a device enrolled with a TUF root it is the TUF
    repository (the night's ``<home>/tuf``). ``public_key`` is the PEM file of the key that signs bundles.
    ``personal`` sets personalization and what may be uploaded (default :class:`PersonalConfig`).
    ``cloud_url`` is the endpoint a bundle's collab policy defers to (None: the device never
    defers and flags its unsure answers ``low_confidence``); ``cloud_timeout_s`` how long a
    deferred message waits before the device answers it itself (flagged ``cloud_unreachable``).
    """

    def __init__(self, device_id: str, home: str | Path, bundles: str | Path | None, public_key: str | Path,
                 canary_share: float = 0.1, *, max_bundle_bytes: int = 1 << 30,
                 timeout: float = 30.0, threads: int = 1, personal: PersonalConfig | None = None,
                 cloud_url: str | None = None, cloud_timeout_s: float = DEFAULT_TIMEOUT_S,
                 cloud_token: str | None = None):
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
        self._patch = None  # the patch served with _predictor (edge.patch.Patch or None)
        self.personal = Personalizer(self.home, personal)
        self._recent: OrderedDict[str, tuple[str, dict]] = OrderedDict()  # id -> (redacted text, route)
        self._init_routing(cloud_url, cloud_timeout_s, cloud_token)

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
        """Id, channel, installed versions, TUF enrolment, the last refused sync (or None),
        personalization (:meth:`patch_status`), the cloud endpoint and the running policy."""
        return {"device_id": self.device_id, "channel": self.channel(),
                "model_version": self.current_version(), "previous_version": self.previous_version(),
                "tuf": self.tuf_status(), "last_refusal": self.last_refusal(),
                "personalization": self.patch_status(), **self.routing_status()}

    def _load(self, folder: Path) -> OnnxPredictor:
        """Open the bundle and answer one smoke query, so a model that cannot run is refused (and
        read its collab policy, so a malformed one is refused too)."""
        self._policy_of(folder)
        predictor = OnnxPredictor(folder, threads=self.threads)
        probs = predictor.predict_proba(["hello"])
        if probs.shape != (1, len(predictor.labels)):
            raise BundleVerificationError(
                f"model answers {probs.shape[1]} classes but labels.json lists {len(predictor.labels)}")
        return predictor

    def _install(self, version: str, predictor: OnnxPredictor, patch) -> None:
        with self._lock:
            current = self.current_version()
            if current and current != version:
                self._point("previous", current)
            self._point("current", version)
            self._predictor, self._predictor_version, self._patch = predictor, version, patch

    def _point(self, name: str, version: str) -> None:
        # rename() over an existing symlink is atomic: a reader sees the old or the new model.
        tmp = self.home / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"models/{version}", tmp)
        os.replace(tmp, self.home / name)

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
            patch = self._refresh_patch(predictor, previous)
            if current:
                self._point("previous", current)
            self._point("current", previous)
            self._predictor, self._predictor_version, self._patch = predictor, previous, patch
            log.warning("device %s rolled back from %s to %s", self.device_id, current, previous)
            return previous

    # ---- serving -----------------------------------------------------------------------------
    def _active(self, with_patch: bool = False):
        """(predictor, version) of the running model, plus its patch when ``with_patch``."""
        with self._lock:
            version = self.current_version()
            if version is None:
                raise NoModelError("no model installed yet; run sync first")
            if self._predictor is None or self._predictor_version != version:
                self._open_current(version)
                self._patch = self._refresh_patch(self._predictor, self._predictor_version)
            running = self._predictor, self._predictor_version
            return (*running, self._patch) if with_patch else running

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

    def feedback(self, message: str, predicted: str, accepted: bool, corrected_label: str | None = None, *,
                 model_version: str | None = None, route: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record whether the user accepted ``predicted`` for ``message`` and return the event.

        ``message`` is the message text (redacted here before it is stored) or the
        ``message_id`` a :meth:`predict` returned; for an id this device no longer remembers,
        the event carries the id and no text. ``model_version`` defaults to the running model.
        A labelled message is also kept on the device as a personal example (edge/personal.py);
        every ``refit_every`` new ones refit the patch, and the event then carries ``personalization``
        (the decision; that key is not part of the stored event). The event records how the
        prediction was answered (``route``, ``deferred``, ``latency_ms``, ``cloud_ms``): as given in
        ``route``, else as this device remembers it, else null.
        """
        if not isinstance(message, str) or not message.strip():
            raise ValueError("feedback field 'message' must be a non-empty string (text or message_id)")
        if looks_like_message_id(message):
            mid, (text, recalled) = message, self._recalled(message)
        else:
            check_text(message)
            text, _ = redact(message)
            mid = message_id(text)
            recalled = self._recalled(mid)[1]
        version = model_version or self.current_version()
        self._check_labels(version, predicted=predicted, corrected_label=corrected_label)
        event = make_event(device_id=self.device_id, model_version=version, message_id=mid, text=text,
                           predicted=predicted, accepted=accepted, corrected_label=corrected_label,
                           route={**(recalled or {}), **{k: v for k, v in (route or {}).items() if v is not None}})
        append_event(self.home, event)
        decision = self._learn(event)
        return event if decision is None else {**event, "personalization": decision}

    def _check_labels(self, version: str | None, **fields: str | None) -> None:
        path = self.models_dir / str(version) / LABELS_FILE
        if version is None or not path.is_file():
            return  # an old model's labels are gone; the night validates against its own set
        labels = json.loads(path.read_text(encoding="utf-8"))
        for field, value in fields.items():
            if value is not None and value not in labels:
                raise ValueError(f"feedback field '{field}' is {value!r}, not a label of model "
                                 f"{version} ({', '.join(labels)})")

