"""The personalization half of :class:`edge.device.Device`: its per-device patch (edge/personal.py).

A mixin: it uses the device's ``home``, ``personal`` (a :class:`edge.personal.Personalizer`),
``_lock`` and ``_active``. The patch served beside a predictor is kept with it (``_patch``), so a
model swap never serves one model with another model's patch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edge.patch import PatchError, base_fingerprint
from edge.patch_upload import PrivacyLedger, build_upload, write_upload

log = logging.getLogger("edge.device")
_fit_lock = threading.Lock()  # one fit at a time per process: fits are CPU-bound and short


class DevicePatch:
    """Fit, serve, show, reset and upload the device's patch."""

    def _refresh_patch(self, predictor, version: str | None):
        """The patch for ``predictor`` (loaded, or refitted from the stored examples), or None.

        Never raises: a device that cannot personalize still serves its base model.
        """
        try:
            with _fit_lock:
                self.personal.refresh(predictor, model_version=version,
                                      fingerprint=base_fingerprint(predictor.folder))
                return self.personal.patch
        except (PatchError, OSError, ValueError) as exc:
            log.error("device %s serves %s without a patch: %s", self.device_id, version, exc)
            return None

    def personalize(self) -> dict[str, Any]:
        """Fit a patch on every stored example now and keep it if the device gate passes."""
        predictor, version = self._active()
        with _fit_lock:  # never held while waiting for self._lock: _active takes them the other way
            decision = self.personal.fit(predictor, model_version=version,
                                         fingerprint=base_fingerprint(predictor.folder))
            patch = self.personal.patch
        with self._lock:
            if self._predictor is predictor:
                self._patch = patch
        return decision

    def reset_patch(self) -> dict[str, Any]:
        """Drop the active patch (stored examples stay); the base model answers alone."""
        with _fit_lock:
            self.personal.reset()
        with self._lock:
            self._patch = None
        return self.patch_status()

    def patch_status(self) -> dict[str, Any]:
        """Whether a patch is active, on which base version, its size, gate figures, what it
        changed, the upload policy and how many new examples wait for the next refit."""
        if self.current_version() is not None and self.personal.cfg.enabled:
            try:
                self._active()  # a fresh process: load the running model and its patch first
            except Exception as exc:  # noqa: BLE001 - status must answer even for a damaged model
                log.error("device %s: cannot open its model for status: %s", self.device_id, exc)
        status = self.personal.status()
        return {**status, "base_version": status.get("model_version"), "pending_examples": self.personal.pending(),
                "refit_every": self.personal.cfg.refit_every}

    def patch_upload(self) -> dict[str, Any]:
        """Write what the upload policy allows about the patch beside the feedback files.

        Policy ``none`` writes nothing and says so; ``dp_delta`` writes a clipped, noised delta
        (no text) to ``home/patch_uploads/`` and charges the privacy ledger.
        """
        policy = self.personal.cfg.upload
        if policy == "none":
            return {"policy": policy, "written": None, "reason": "upload policy is 'none': nothing leaves the device"}
        predictor, _, patch = self._active(with_patch=True)
        if patch is None:
            return {"policy": policy, "written": None, "reason": "no active patch"}
        _, texts, _ = self.personal.examples(predictor.labels)
        ledger = PrivacyLedger(self.personal.folder)
        payload, reason = build_upload(patch, self.personal.cfg, ledger=ledger, texts=texts)
        if payload is None:
            return {"policy": policy, "written": None, "reason": reason}
        path = write_upload(self.home, payload)
        eps, delta = ledger.spent()
        return {"policy": policy, "written": str(path), "bytes": path.stat().st_size, "reason": reason,
                "privacy_spent": {"epsilon": round(eps, 6), "delta": delta,
                                  "epsilon_total": self.personal.cfg.dp_epsilon_total}}

    def _learn(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Store what a feedback event teaches; refit once ``refit_every`` new examples wait."""
        if not self.personal.cfg.enabled or not self.personal.record(event):
            return None
        every = self.personal.cfg.refit_every
        if every and self.personal.pending() >= every and self.current_version() is not None:
            return self.personalize()
        return None
