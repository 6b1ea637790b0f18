"""Following a channel: read it (plainly or through TUF), fetch and verify the bundle, install it.

:class:`DeviceSync` is the sync half of :class:`edge.device.Device` (a mixin: it uses the device's
``home``, ``source``, locks and ``_load``/``_install``); split out so each module stays small.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edge.fetch import FetchError, check_record
from edge.manifest import MANIFEST_FILE
from edge.verify import BundleVerificationError

log = logging.getLogger("edge.device")

TUF_DIR = "tuf"
LAST_REFUSAL = "last_refusal.json"


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


class DeviceSync:
    """Enrolment, channel sync and pruning for a :class:`edge.device.Device`."""

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
        A new model gets the device's patch refitted for it before it serves (edge/personal.py).
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
            patch = self._refresh_patch(predictor, target)
            self._install(target, predictor, patch)
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

    def last_refusal(self) -> dict[str, Any] | None:
        refusal = self.home / LAST_REFUSAL
        return json.loads(refusal.read_text(encoding="utf-8")) if refusal.is_file() else None

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

    def _prune(self) -> None:
        keep = {self.current_version(), self.previous_version()}
        for entry in self.models_dir.iterdir():
            if entry.is_dir() and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
