"""Paired comparison of two classifiers on the same golden texts: noise or regression?

The gate blocks a candidate only for a drop that is both *significant* (an exact one-sided
McNemar test on the discordant pairs, Holm-corrected across intents) and *large enough to matter*
(at least a minimum effect size). A candidate trained like the champion with another seed flips a
few texts either way; that is noise, and it passes. A candidate that lost an intent flips almost
all of that intent's texts one way; that is a regression, and the gate names the intent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binom


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison: candidate vs champion on the texts of one slice."""

    slice: str
    n: int
    champion_acc: float
    candidate_acc: float
    worse: int  # texts the champion got right and the candidate got wrong
    better: int  # the reverse
    p_value: float  # one-sided exact McNemar: P(worse >= observed | no difference)
    p_adjusted: float  # after Holm's correction (equals p_value for the overall slice)
    ci_low: float  # paired bootstrap CI of candidate_acc - champion_acc
    ci_high: float

    @property
    def effect(self) -> float:
        """candidate accuracy - champion accuracy on this slice (negative = a drop)."""
        return self.candidate_acc - self.champion_acc

    def to_dict(self) -> dict:
        return {**asdict(self), "effect": self.effect}


def mcnemar_worse(worse: int, better: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse (binomial on discordant pairs)."""
    n = worse + better
    if n == 0 or worse == 0:
        return 1.0
    return float(binom.sf(worse - 1, n, 0.5))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone), in the input's order."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def bootstrap_ci(cand_ok: np.ndarray, champ_ok: np.ndarray, resamples: int, confidence: float,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Percentile CI of the paired accuracy difference, resampling texts with replacement."""
    n = len(cand_ok)
    if n == 0:
        return 0.0, 0.0
    diff = cand_ok.astype(np.float64) - champ_ok.astype(np.float64)
    idx = rng.integers(0, n, size=(resamples, n))
    means = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _slice(name: str, cand_ok: np.ndarray, champ_ok: np.ndarray, resamples: int, confidence: float,
           rng: np.random.Generator) -> PairedResult:
    worse = int((champ_ok & ~cand_ok).sum())
    better = int((cand_ok & ~champ_ok).sum())
    p = mcnemar_worse(worse, better)
    lo, hi = bootstrap_ci(cand_ok, champ_ok, resamples, confidence, rng)
    n = len(cand_ok)
    return PairedResult(name, n, float(champ_ok.mean()) if n else 0.0, float(cand_ok.mean()) if n else 0.0,
                        worse, better, p, p, lo, hi)


def compare_paired(y_true: Sequence[str], champion_pred: Sequence[str], candidate_pred: Sequence[str],
                   resamples: int = 1000, confidence: float = 0.95, seed: int = 0
                   ) -> tuple[PairedResult, list[PairedResult]]:
    """Overall and per-intent (by gold label) paired results; per-intent p-values Holm-adjusted."""
    if not len(y_true) == len(champion_pred) == len(candidate_pred):
        raise ValueError(f"paired comparison needs equal lengths: {len(y_true)} gold labels, "
                         f"{len(champion_pred)} champion and {len(candidate_pred)} candidate predictions")
    y = np.asarray(y_true, dtype=object)
    cand_ok = np.asarray(candidate_pred, dtype=object) == y
    champ_ok = np.asarray(champion_pred, dtype=object) == y
    rng = np.random.default_rng(seed)
    overall = _slice("overall", cand_ok, champ_ok, resamples, confidence, rng)
    intents = [_slice(str(lbl), cand_ok[y == lbl], champ_ok[y == lbl], resamples, confidence, rng)
               for lbl in sorted(set(y.tolist()))]
    adjusted = holm([r.p_value for r in intents])
    intents = [PairedResult(**{**asdict(r), "p_adjusted": a}) for r, a in zip(intents, adjusted)]
    return overall, intents


def regressions(results: Sequence[PairedResult], alpha: float, min_effect: float) -> list[PairedResult]:
    """Slices whose drop is significant (adjusted p < alpha) and at least ``min_effect`` large."""
    return [r for r in results if r.p_adjusted < alpha and -r.effect >= min_effect]
