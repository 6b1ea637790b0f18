"""Paired comparison of two classifiers on the same golden texts: noise or regression?

A candidate trained like the champion with another seed flips a few texts either way; that is
noise, and it passes. A candidate that lost an intent flips almost all of that intent's texts one
way; that is a regression, and the gate names the intent. Two rules:

- **Overall**: block only when the data show a drop *larger than the minimum effect*: the
  one-sided (1 - alpha) upper confidence bound of the paired accuracy difference (bootstrap over
  golden texts) lies below ``-min_effect``, a test of H0 "the drop is at most min_effect"
  (:func:`material_drop`). An observed drop near the minimum effect is not enough: with a
  thousand golden texts two equally good models differ by about a point either way.
- **Per intent**: the drop is significant (exact one-sided McNemar on the discordant pairs,
  corrected across intents) and at least ``min_intent_effect`` observed (:func:`regressions`).
  The correction is Tarone's for discrete tests (:func:`tarone`): an intent with *n* discordant
  pairs can never reach a p-value below 0.5**n, so intents that could not be significant at any
  count do not dilute the family. With 150 intents and 12-30 golden texts each this is what lets
  a lost intent be named at all; it controls the family-wise error like Bonferroni does.
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
    p_adjusted: float  # after Tarone's correction across intents (equals p_value for the overall slice)
    ci_low: float  # paired bootstrap CI of candidate_acc - champion_acc
    ci_high: float
    bound_high: float = 0.0  # one-sided (1 - alpha) upper confidence bound of that difference

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


def tarone(p_values: Sequence[float], min_p_values: Sequence[float], alpha: float) -> tuple[list[float], int]:
    """Tarone's (1990) Bonferroni correction for discrete tests: (adjusted p-values, K).

    K is the smallest k >= 1 such that at most k tests can reach a p-value <= alpha / k (their
    smallest attainable p-value, ``min_p_values``, is that small). Only those tests form the
    family: each is multiplied by K; the others can never be significant and get 1.0.
    Family-wise error stays <= alpha, as with Bonferroni over all tests.
    """
    if len(p_values) != len(min_p_values):
        raise ValueError("tarone needs one smallest attainable p-value per test")
    mins = np.asarray(min_p_values, dtype=np.float64)
    k = 1
    while k < len(mins) and int((mins <= alpha / k).sum()) > k:
        k += 1
    eligible = mins <= alpha / k
    return [min(1.0, k * p) if ok else 1.0 for p, ok in zip(p_values, eligible)], k


def bootstrap_ci(cand_ok: np.ndarray, champ_ok: np.ndarray, resamples: int, confidence: float,
                 rng: np.random.Generator, alpha: float = 0.05) -> tuple[float, float, float]:
    """Percentile CI of the paired accuracy difference (texts resampled with replacement), and
    its one-sided (1 - alpha) upper bound: (low, high, bound_high)."""
    n = len(cand_ok)
    if n == 0:
        return 0.0, 0.0, 0.0
    diff = cand_ok.astype(np.float64) - champ_ok.astype(np.float64)
    idx = rng.integers(0, n, size=(resamples, n))
    means = diff[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)),
            float(np.quantile(means, 1 - alpha)))


def _slice(name: str, cand_ok: np.ndarray, champ_ok: np.ndarray, resamples: int, confidence: float,
           rng: np.random.Generator, alpha: float) -> PairedResult:
    worse = int((champ_ok & ~cand_ok).sum())
    better = int((cand_ok & ~champ_ok).sum())
    p = mcnemar_worse(worse, better)
    lo, hi, bound = bootstrap_ci(cand_ok, champ_ok, resamples, confidence, rng, alpha)
    n = len(cand_ok)
    return PairedResult(name, n, float(champ_ok.mean()) if n else 0.0, float(cand_ok.mean()) if n else 0.0,
                        worse, better, p, p, lo, hi, bound)


def compare_paired(y_true: Sequence[str], champion_pred: Sequence[str], candidate_pred: Sequence[str],
                   resamples: int = 1000, confidence: float = 0.95, seed: int = 0, alpha: float = 0.05
                   ) -> tuple[PairedResult, list[PairedResult]]:
    """Overall and per-intent (by gold label) paired results; per-intent p-values Tarone-adjusted
    at ``alpha`` (:func:`tarone`), which also sets each slice's one-sided bound."""
    if not len(y_true) == len(champion_pred) == len(candidate_pred):
        raise ValueError(f"paired comparison needs equal lengths: {len(y_true)} gold labels, "
                         f"{len(champion_pred)} champion and {len(candidate_pred)} candidate predictions")
    y = np.asarray(y_true, dtype=object)
    cand_ok = np.asarray(candidate_pred, dtype=object) == y
    champ_ok = np.asarray(champion_pred, dtype=object) == y
    rng = np.random.default_rng(seed)
    overall = _slice("overall", cand_ok, champ_ok, resamples, confidence, rng, alpha)
    intents = [_slice(str(lbl), cand_ok[y == lbl], champ_ok[y == lbl], resamples, confidence, rng, alpha)
               for lbl in sorted(set(y.tolist()))]
    # smallest attainable one-sided McNemar p-value given the discordant pairs: all of them worse
    adjusted, _ = tarone([r.p_value for r in intents], [0.5 ** (r.worse + r.better) for r in intents], alpha)
    intents = [PairedResult(**{**asdict(r), "p_adjusted": a}) for r, a in zip(intents, adjusted)]
    return overall, intents


def material_drop(result: PairedResult, min_effect: float) -> bool:
    """The data show a drop larger than ``min_effect``: the one-sided upper bound is below it."""
    return result.bound_high < -min_effect


def regressions(results: Sequence[PairedResult], alpha: float, min_effect: float) -> list[PairedResult]:
    """Slices whose drop is significant (adjusted p < alpha) and at least ``min_effect`` large."""
    return [r for r in results if r.p_adjusted < alpha and -r.effect >= min_effect]
