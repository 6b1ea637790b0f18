"""Temperature scaling (Guo et al. 2017) and expected calibration error.

The night fits one temperature on a calibration slice that is neither training data nor golden,
by minimising the negative log-likelihood of the gold labels under ``softmax(logits / T)``, and
reports ECE (15 equal-width confidence bins) before and after. The temperature ships in the
bundle's ``collab`` block; devices apply it with :func:`edge.collab.calibrated_probs`.
The slice itself is :func:`in_calibration_slice`: a fixed share of message ids, by hash.
numpy and scipy only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from edge.collab import calibrated_probs, logsumexp

#: Bounds of the search on log T (natural log): 0.05 … 20 covers over- and under-confident models.
_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))
#: Salt of the slice hash: the slice is independent of any other use of the message id's digits.
_SLICE_SALT = b"edgeloop.calibration-slice/1:"


def slice_position(message_ids: Iterable[str]) -> np.ndarray:
    """Each message id's fixed place in [0, 1): the first 8 bytes of a salted sha256, as a fraction."""
    return np.array([int.from_bytes(hashlib.sha256(_SLICE_SALT + str(m).encode("utf-8")).digest()[:8], "big")
                     / 2.0 ** 64 for m in message_ids], dtype=np.float64)


def in_calibration_slice(message_ids: Iterable[str], share: float) -> np.ndarray:
    """Whether each message id belongs to the calibration slice: the first ``share`` of the ids
    by :func:`slice_position`. A message's membership never changes from night to night, so a
    slice message is never trained on, on any night. ``share`` 0 = an empty slice."""
    if not 0 <= share < 1:
        raise ValueError(f"collab.calibration_share must be in [0, 1), got {share!r}")
    ids = list(message_ids)
    if share == 0:
        return np.zeros(len(ids), dtype=bool)
    return slice_position(ids) < share


def _check(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be a 2-D array (rows, classes >= 2), got shape {z.shape}")
    if len(z) == 0:
        raise ValueError("the calibration slice is empty")
    if y.shape != (len(z),):
        raise ValueError(f"labels must be one class index per row ({len(z)}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {z.shape[1] - 1}]")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z, y.astype(np.int64)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _check(logits, labels)
    zt = z / temperature
    return float(np.mean(logsumexp(zt) - zt[np.arange(len(zt)), y]))


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """ECE: the gap |accuracy − mean confidence| of each equal-width confidence bin, weighted by
    its share of rows. Bins are (k/n, (k+1)/n]; confidence 0 falls in the first."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or len(p) == 0 or y.shape != (len(p),):
        raise ValueError(f"probs must be (rows, classes) with one label per row; got {p.shape} and {y.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits, labels) -> float:
    """The temperature in [0.05, 20] that minimises :func:`nll` (searched on log T)."""
    z, y = _check(logits, labels)
    res = minimize_scalar(lambda log_t: nll(z, y, float(np.exp(log_t))), bounds=_LOG_T_BOUNDS,
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


@dataclass(frozen=True)
class CalibrationReport:
    """A fitted temperature and what it did on the calibration slice."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n: int
    n_bins: int

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(logits, labels, n_bins: int = 15) -> CalibrationReport:
    """Fit the temperature on (``logits``, ``labels``) and report ECE and NLL before and after.

    ``logits`` may be log-probabilities (``log predict_proba``): temperature scaling of either
    gives the same probabilities.
    """
    z, y = _check(logits, labels)
    t = fit_temperature(z, y)
    return CalibrationReport(
        temperature=round(t, 6),
        ece_before=expected_calibration_error(calibrated_probs(z, 1.0), y, n_bins),
        ece_after=expected_calibration_error(calibrated_probs(z, t), y, n_bins),
        nll_before=nll(z, y, 1.0), nll_after=nll(z, y, t), n=len(z), n_bins=n_bins)
