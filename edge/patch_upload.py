"""What a device may upload about its patch, and the one definition of that payload.

Policies (``PersonalConfig.upload``):

- ``none`` (default): nothing about the patch leaves the device.
- ``dp_delta``: the patch as one dense delta on the classifier's input features (a (d + 1, C)
  matrix, edge/patch.py ``Patch.dense``), clipped to L2 norm ``dp_clip_norm`` and noised with the
  Gaussian mechanism so that one upload is (``dp_epsilon``, ``dp_delta``)-differentially private
  with respect to *everything* the device learned from (its whole example set may change: the L2
  sensitivity of the clipped delta is 2 x clip). sigma is the smallest that satisfies the exact
  (analytic) Gaussian condition of Balle & Wang (2018), valid for any epsilon > 0. Uploads compose:
  the device adds each upload's epsilon and delta to a ledger and uploads nothing once the total
  would pass ``dp_epsilon_total``.

Text never leaves the device: the payload holds numbers, hashes and fixed words only, and
:func:`assert_no_text` checks that before anything is written for upload.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edge.patch import FEATURES, Patch

UPLOAD_FORMAT = "edgeloop-patch-delta/1"
MECHANISM = "gaussian-analytic"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: The payload's fields and what each string field may hold; anything else is refused.
_STRING_FIELDS = {"format": {UPLOAD_FORMAT}, "mechanism": {MECHANISM}, "features": set(FEATURES)}
_HASH_FIELDS = ("base_fingerprint", "labels_sha256")
_NUMBER_FIELDS = ("clip_norm", "epsilon", "delta", "sigma")
FIELDS = tuple(_STRING_FIELDS) + _HASH_FIELDS + _NUMBER_FIELDS + ("shape", "values")


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest sigma for which N(0, sigma^2) noise on an L2-``sensitivity`` query is (epsilon, delta)-DP.

    Analytic Gaussian mechanism (Balle & Wang 2018, Thm. 8): holds iff
    Phi(S/(2s) - e*s/S) - exp(e) * Phi(-S/(2s) - e*s/S) <= delta. Found by bisection.
    """
    if not 0 < epsilon <= 100 or not 0 < delta < 1 or not sensitivity > 0:
        raise ValueError(f"need 0 < epsilon <= 100, 0 < delta < 1, sensitivity > 0; "
                         f"got {epsilon}, {delta}, {sensitivity}")

    def leak(s: float) -> float:
        a, b = sensitivity / (2 * s), epsilon * s / sensitivity
        return _phi(a - b) - math.exp(epsilon) * _phi(-a - b)

    lo, hi = 1e-6 * sensitivity, sensitivity
    while leak(hi) > delta:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if leak(mid) <= delta else (mid, hi)
    return hi


def clip(vec: np.ndarray, norm: float) -> np.ndarray:
    """``vec`` scaled down to L2 norm ``norm`` when longer."""
    length = float(np.linalg.norm(vec))
    return vec if length <= norm else vec * (norm / length)


class PrivacyLedger:
    """The device's spent privacy budget, in ``home/personal/privacy_ledger.json`` (basic composition)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / "privacy_ledger.json"

    def spent(self) -> tuple[float, float]:
        if not self.path.is_file():
            return 0.0, 0.0
        data = json.loads(self.path.read_text())
        return float(data["epsilon"]), float(data["delta"])

    def charge(self, epsilon: float, delta: float) -> None:
        eps, dl = self.spent()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"epsilon": eps + epsilon, "delta": dl + delta, "uploads":
                                         self._uploads() + 1}))

    def _uploads(self) -> int:
        return json.loads(self.path.read_text()).get("uploads", 0) if self.path.is_file() else 0


def build_upload(patch: Patch, cfg, *, ledger: PrivacyLedger | None = None,
                 rng: np.random.Generator | None = None,
                 texts: Iterable[str] = ()) -> tuple[dict[str, Any] | None, str]:
    """(payload, reason): the upload ``cfg.upload`` allows for ``patch``, or (None, why not).

    ``texts`` are the device's example texts: the payload is checked not to carry any of them.
    Charges ``ledger`` (when given) for each payload built.
    """
    if cfg.upload == "none":
        return None, "upload policy is 'none'"
    if cfg.upload != "dp_delta":
        raise ValueError(f"personalization field 'upload' is {cfg.upload!r}, expected none or dp_delta")
    if ledger is not None:
        eps, _ = ledger.spent()
        if eps + cfg.dp_epsilon > cfg.dp_epsilon_total + 1e-12:
            return None, (f"privacy budget spent: {eps:g} of dp_epsilon_total={cfg.dp_epsilon_total:g}, "
                          f"an upload costs {cfg.dp_epsilon:g}")
    dense = patch.dense().astype(np.float64)
    sigma = gaussian_sigma(cfg.dp_epsilon, cfg.dp_delta, 2.0 * cfg.dp_clip_norm)
    rng = rng or np.random.default_rng()
    noisy = clip(dense.ravel(), cfg.dp_clip_norm) + rng.normal(0.0, sigma, dense.size)
    payload = {"format": UPLOAD_FORMAT, "mechanism": MECHANISM, "features": patch.meta["features"],
               "base_fingerprint": patch.meta["base_fingerprint"], "labels_sha256": patch.meta["labels_sha256"],
               "clip_norm": float(cfg.dp_clip_norm), "epsilon": float(cfg.dp_epsilon),
               "delta": float(cfg.dp_delta), "sigma": float(sigma), "shape": list(dense.shape),
               "values": [round(float(x), 6) for x in noisy]}
    assert_no_text(payload, texts)
    if ledger is not None:
        ledger.charge(cfg.dp_epsilon, cfg.dp_delta)
    return payload, f"clipped to {cfg.dp_clip_norm:g}, sigma {sigma:.4g} for (epsilon {cfg.dp_epsilon:g}, delta {cfg.dp_delta:g})"


def assert_no_text(payload: dict[str, Any], texts: Iterable[str] = ()) -> None:
    """Raise ValueError unless every field is a known one holding numbers, a hash or a fixed word,
    and no device text appears in the serialized payload."""
    validate_upload(payload)
    blob = json.dumps(payload, ensure_ascii=False)
    for text in texts:
        if len(text.strip()) >= 4 and text.strip() in blob:
            raise ValueError("upload payload contains a device text")


def validate_upload(payload: Any) -> dict[str, Any]:
    """Check an upload payload's shape (device before sending, server on receipt); ValueError names the field."""
    if not isinstance(payload, dict):
        raise ValueError("upload payload must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    missing = [f for f in FIELDS if f not in payload]
    if unknown or missing:
        raise ValueError(f"upload payload has unknown field(s) {unknown} or lacks {missing}")
    for f, allowed in _STRING_FIELDS.items():
        if payload[f] not in allowed:
            raise ValueError(f"upload field '{f}' is {payload[f]!r}, expected one of {sorted(allowed)}")
    for f in _HASH_FIELDS:
        if not isinstance(payload[f], str) or not _HEX64.match(payload[f]):
            raise ValueError(f"upload field '{f}' must be 64 lowercase hex characters")
    for f in _NUMBER_FIELDS:
        if isinstance(payload[f], bool) or not isinstance(payload[f], (int, float)) or not math.isfinite(payload[f]):
            raise ValueError(f"upload field '{f}' must be a finite number")
    shape = payload["shape"]
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError("upload field 'shape' must be [rows, labels], two positive integers")
    values = payload["values"]
    if not isinstance(values, list) or len(values) != shape[0] * shape[1]:
        raise ValueError(f"upload field 'values' must be a list of {shape[0]}x{shape[1]} numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError("upload field 'values' must hold finite numbers only")
    return payload


def upload_matrix(payload: dict[str, Any]) -> np.ndarray:
    """The (d + 1, C) delta of a validated payload."""
    validate_upload(payload)
    return np.asarray(payload["values"], dtype=np.float64).reshape(payload["shape"])


#: Where a device leaves upload payloads for shipping, beside ``home/feedback/`` (edge/feedback.py).
UPLOAD_DIR = "patch_uploads"


def write_upload(home: str | Path, payload: dict[str, Any]) -> Path:
    """Write a validated payload as ``home/patch_uploads/<UTC time>.json`` (atomically); its path."""
    from datetime import datetime, timezone

    validate_upload(payload)
    folder = Path(home) / UPLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)
    return path
