"""Choose the device's thresholds at the gate: when to defer to the cloud, when to reject.

- :func:`choose_threshold`: the lowest calibrated confidence at which the accuracy on the
  messages the device answers reaches a target, and the coverage it leaves;
- :func:`choose_oos_threshold`: the out-of-scope score threshold with the highest OOS recall
  that costs at most ``max_accuracy_loss`` of in-scope accuracy;
- :class:`Mahalanobis`: a feature-space out-of-scope score, measured against the logit scores;
- :func:`collab_metrics`: accuracy, coverage, OOS recall and cloud share of routed answers.

The scores and the route themselves are the device's (:mod:`edge.collab`); this module only
picks the numbers the bundle ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata

from edge.collab import CollabPolicy


def _vec(name: str, values, dtype=np.float64) -> np.ndarray:
    v = np.asarray(values, dtype=dtype)
    if v.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {v.shape}")
    if dtype is np.float64 and not np.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    return v


def _fraction(name: str, value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class DeferralChoice:
    """The confidence threshold for a target accuracy. ``threshold`` None: no threshold reaches
    the target, the device defers every in-scope message (coverage 0)."""

    threshold: float | None
    coverage: float
    answered_accuracy: float | None
    target_accuracy: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(confidence, correct, target_accuracy: float) -> DeferralChoice:
    """The lowest threshold ``t`` such that the rows with ``confidence >= t`` are at least
    ``target_accuracy`` correct. Rows with equal confidence are answered or deferred together."""
    conf = _vec("confidence", confidence)
    ok = _vec("correct", correct, bool)
    if len(conf) != len(ok) or len(conf) == 0:
        raise ValueError(f"confidence ({len(conf)}) and correct ({len(ok)}) must be non-empty and the same length")
    target = _fraction("target_accuracy", target_accuracy)
    order = np.argsort(-conf, kind="stable")
    c, k_ok = conf[order], np.cumsum(ok[order])
    k = np.arange(1, len(c) + 1)
    # A cut after row k-1 is only possible where the next row's confidence is lower (ties travel together).
    cut = np.append(c[:-1] > c[1:], True)
    good = np.flatnonzero(cut & (k_ok >= target * k - 1e-12))
    if not len(good):
        return DeferralChoice(None, 0.0, None, target, len(c))
    last = good[-1]
    return DeferralChoice(float(c[last]), float(k[last] / len(c)), float(k_ok[last] / k[last]), target, len(c))


def auroc(in_scores, oos_scores) -> float:
    """Probability that an in-scope message scores higher than an out-of-scope one (ties half)."""
    a, b = _vec("in_scores", in_scores), _vec("oos_scores", oos_scores)
    if not len(a) or not len(b):
        raise ValueError("auroc needs in-scope and out-of-scope scores")
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[:len(a)].sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


@dataclass(frozen=True)
class OosChoice:
    """An out-of-scope threshold: reject when the score is below ``threshold``."""

    threshold: float
    oos_recall: float
    in_scope_accuracy: float       # correct and not rejected, over all in-scope rows
    base_accuracy: float           # correct, nothing rejected
    in_scope_rejected: float
    max_accuracy_loss: float
    auroc: float

    def to_dict(self) -> dict:
        return asdict(self)


def choose_oos_threshold(in_scores, in_correct, oos_scores, max_accuracy_loss: float = 0.01) -> OosChoice:
    """The highest threshold (most OOS recall) that rejects at most ``max_accuracy_loss`` × n of
    the correctly answered in-scope rows. ``in_correct`` is whatever "correct" means for the
    system being tuned: the device's answer, or the device-or-cloud answer of the collaboration."""
    s_in, s_oos = _vec("in_scores", in_scores), _vec("oos_scores", oos_scores)
    ok = _vec("in_correct", in_correct, bool)
    if len(s_in) != len(ok) or not len(s_in) or not len(s_oos):
        raise ValueError("in_scores and in_correct must be non-empty and the same length; oos_scores non-empty")
    loss = _fraction("max_accuracy_loss", max_accuracy_loss)
    allowed = int(np.floor(loss * len(s_in) + 1e-9))
    kept = np.sort(s_in[ok])
    if allowed >= len(kept):  # everything may go: reject all
        t = float(np.nextafter(max(s_in.max(), s_oos.max()), np.inf))
    else:
        t = float(kept[allowed])  # strictly below it: at most `allowed` correct rows
    rejected_in = s_in < t
    return OosChoice(t, float(np.mean(s_oos < t)), float(np.mean(ok & ~rejected_in)), float(ok.mean()),
                     float(rejected_in.mean()), loss, auroc(s_in, s_oos))


def make_policy(temperature: float, deferral: DeferralChoice, oos: OosChoice | None, oos_score: str) -> CollabPolicy:
    """The ``collab`` block a bundle ships, from the night's choices."""
    return CollabPolicy(temperature=temperature, threshold=deferral.threshold, oos_score=oos_score,
                        oos_threshold=None if oos is None else oos.threshold,
                        target_accuracy=deferral.target_accuracy,
                        oos_max_accuracy_loss=None if oos is None else oos.max_accuracy_loss)


class Mahalanobis:
    """Class-conditional Gaussians with one shared covariance (Lee et al. 2018) on sentence
    features; score = −(smallest squared distance to a class mean), higher = more in scope.
    With ``relative`` the distance to one background Gaussian of all features is subtracted
    (Ren et al. 2021), which helps with near-domain outliers."""

    def __init__(self, relative: bool = False, shrinkage: float = 1e-3):
        self.relative, self.shrinkage = relative, shrinkage

    def _precision(self, centred: np.ndarray) -> np.ndarray:
        cov = centred.T @ centred / len(centred)
        cov += self.shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
        return np.linalg.pinv(cov)

    def fit(self, features, labels) -> "Mahalanobis":
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        if x.ndim != 2 or y.shape != (len(x),) or len(x) < 2:
            raise ValueError(f"features must be (rows, dims) with one label per row; got {x.shape}, {y.shape}")
        self.classes = np.unique(y)
        self.means = np.stack([x[y == c].mean(axis=0) for c in self.classes])
        self.precision = self._precision(x - self.means[np.searchsorted(self.classes, y)])
        self.bg_mean = x.mean(axis=0)
        self.bg_precision = self._precision(x - self.bg_mean)
        return self

    def score(self, features) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        d = x[:, None, :] - self.means[None]                        # rows × classes × dims
        dist = np.einsum("ncd,de,nce->nc", d, self.precision, d).min(axis=1)
        if self.relative:
            b = x - self.bg_mean
            dist = dist - np.einsum("nd,de,ne->n", b, self.bg_precision, b)
        return -dist


def collab_metrics(routes: Sequence[str], answers: Sequence[str | None], gold: Sequence[str | None]) -> dict:
    """Figures of routed answers. ``gold`` None marks an out-of-scope message, whose right
    answer is a rejection; ``answers`` None means rejected.

    accuracy: right answers (rejection counts as the answer ``out of scope``) over all rows;
    in_scope_accuracy: right intents over in-scope rows; oos_recall: rejected over out-of-scope
    rows; coverage / cloud_share / rejected_share: where messages went.
    """
    if not len(routes) == len(answers) == len(gold) or not len(gold):
        raise ValueError("routes, answers and gold must be non-empty and the same length")
    r = np.asarray(routes)
    bad = sorted(set(r.tolist()) - {"device", "cloud", "rejected"})
    if bad:
        raise ValueError(f"unknown route(s) {bad}")
    is_oos = np.array([g is None for g in gold])
    right = np.array([a == g for a, g in zip(answers, gold)])
    out = {"n": len(r), "n_in_scope": int((~is_oos).sum()), "n_oos": int(is_oos.sum()),
           "accuracy": float(right.mean()), "coverage": float(np.mean(r == "device")),
           "cloud_share": float(np.mean(r == "cloud")), "rejected_share": float(np.mean(r == "rejected"))}
    if (~is_oos).any():
        out["in_scope_accuracy"] = float(right[~is_oos].mean())
        out["in_scope_coverage"] = float(np.mean(r[~is_oos] == "device"))
        out["in_scope_cloud_share"] = float(np.mean(r[~is_oos] == "cloud"))
        out["in_scope_rejected"] = float(np.mean(r[~is_oos] == "rejected"))
    if is_oos.any():
        out["oos_recall"] = float(right[is_oos].mean())
    return out
