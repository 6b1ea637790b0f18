"""End-cloud collaboration on the device: calibrated confidence, out-of-scope score, route.

A bundle may carry a :class:`CollabPolicy` (the ``collab`` block of its signed manifest): the
temperature fitted at night, the calibrated-confidence threshold the gate chose for a target
accuracy, and an out-of-scope score with its rejection threshold. Per message the device then
decides one route (:data:`ROUTES`):

- ``rejected``: the out-of-scope score is below ``oos_threshold`` ("out of scope, hand off");
- ``device``: calibrated confidence ≥ ``threshold`` (the device answers itself);
- ``cloud``: otherwise; the redacted message is deferred to the cloud (:mod:`edge.cloud`).

This module is the one definition of those numbers: the night (``models.calibration``,
``models.deferral``) imports it, so the gate measures exactly what devices compute. numpy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ROUTES = ("device", "cloud", "rejected")
#: Out-of-scope scores a device can compute from the logits a bundle outputs; higher = more in scope.
OOS_SCORES = ("msp", "energy")


def _finite_in(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"collab.{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"collab.{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class CollabPolicy:
    """How a device turns logits into a route; written by the night, shipped in the manifest.

    ``threshold`` None means no confidence reached the target accuracy on golden: every
    in-scope message is deferred. ``oos_threshold`` None means nothing is rejected (no
    out-of-scope data was configured). ``target_accuracy`` and ``oos_max_accuracy_loss`` record
    what the thresholds were chosen for.
    """

    temperature: float = 1.0
    threshold: float | None = None
    oos_score: str = "msp"
    oos_threshold: float | None = None
    target_accuracy: float | None = None
    oos_max_accuracy_loss: float | None = None

    def __post_init__(self) -> None:
        _finite_in("temperature", self.temperature, 1e-3, 1e3)
        if self.threshold is not None:
            _finite_in("threshold", self.threshold, 0.0, 1.0)
        if self.oos_score not in OOS_SCORES:
            raise ValueError(f"collab.oos_score must be one of {OOS_SCORES}, got {self.oos_score!r}")
        if self.oos_threshold is not None:
            _finite_in("oos_threshold", self.oos_threshold, -1e9, 1e9)
        for name in ("target_accuracy", "oos_max_accuracy_loss"):
            if getattr(self, name) is not None:
                _finite_in(name, getattr(self, name), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, block: Any) -> "CollabPolicy":
        """Read a manifest's ``collab`` block; ValueError names the offending field."""
        if not isinstance(block, dict):
            raise ValueError(f"collab must be a JSON object, got {type(block).__name__}")
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"collab has unknown field(s) {unknown}")
        return cls(**block)


def _logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be a 2-D array (rows, classes >= 2), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z


def logsumexp(z: np.ndarray) -> np.ndarray:
    """Row-wise log-sum-exp, stable for large logits."""
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def calibrated_probs(logits: Any, temperature: float) -> np.ndarray:
    """``softmax(logits / T)``. Log-probabilities work as logits (softmax drops a row constant)."""
    z = _logits(logits) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def oos_score(logits: Any, method: str, temperature: float = 1.0) -> np.ndarray:
    """In-scope score per row, higher = more in scope.

    ``msp``: the calibrated max softmax probability. ``energy``: the negative free energy
    ``T·logsumexp(z/T)`` at T=1 (Liu et al. 2020); it needs raw logits, not log-probabilities.
    """
    if method == "msp":
        return calibrated_probs(logits, temperature).max(axis=1)
    if method == "energy":
        return logsumexp(_logits(logits))
    raise ValueError(f"unknown out-of-scope score {method!r}; expected one of {OOS_SCORES}")


def route(confidence: float, score: float, policy: CollabPolicy) -> str:
    """``rejected`` / ``device`` / ``cloud`` for one message (see the module docstring)."""
    if policy.oos_threshold is not None and score < policy.oos_threshold:
        return "rejected"
    if policy.threshold is not None and confidence >= policy.threshold:
        return "device"
    return "cloud"


@dataclass(frozen=True)
class Decision:
    """What the device's own model says about one message, and where it goes."""

    index: int          # argmax class
    confidence: float   # calibrated
    score: float        # out-of-scope score (policy.oos_score)
    route: str


def decide(logits: Any, policy: CollabPolicy) -> list[Decision]:
    """One :class:`Decision` per row of ``logits``."""
    probs = calibrated_probs(logits, policy.temperature)
    scores = oos_score(logits, policy.oos_score, policy.temperature)
    idx = probs.argmax(axis=1)
    conf = probs[np.arange(len(probs)), idx]
    return [Decision(int(i), float(c), float(s), route(float(c), float(s), policy))
            for i, c, s in zip(idx, conf, scores)]
