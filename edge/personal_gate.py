"""The device gate: does a patch lower the device's accuracy on its own held-out feedback?

A deterministic k-fold split of the examples by message id; a patch fitted without each fold
predicts that fold; kept only when, over all folds, it gets at least as many held-out examples
right as the base model does and the answers it fixes outnumber those it breaks beyond chance
(exact one-sided McNemar/sign test, p <= ``gate_max_p``). See edge/personal.py and
docs/personalization.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.patch import fit_patch


def fold_of(message_id: str, folds: int) -> int:
    """The gate fold of an example: fixed by its message id, so the split never moves."""
    return int(message_id[:8], 16) % folds


def sign_test_p(fixed: int, broken: int) -> float:
    """One-sided exact McNemar p-value: P(at least ``fixed`` of the ``fixed + broken`` discordant
    answers go the patch's way) when the patch is no better than the base (each way 1/2)."""
    n = fixed + broken
    return sum(math.comb(n, k) for k in range(fixed, n + 1)) / 2 ** n if n else 1.0


@dataclass(frozen=True)
class GateResult:
    kept: bool
    reason: str
    heldout: int
    base_correct: int
    patched_correct: int
    fixed: int = 0
    broken: int = 0
    p_value: float | None = None

    @property
    def base_accuracy(self) -> float | None:
        return round(self.base_correct / self.heldout, 4) if self.heldout else None

    @property
    def patched_accuracy(self) -> float | None:
        return round(self.patched_correct / self.heldout, 4) if self.heldout else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "base_accuracy": self.base_accuracy, "patched_accuracy": self.patched_accuracy}


def gate_patch(logits: np.ndarray, feats: np.ndarray, y: np.ndarray, mids: list[str],
               cfg) -> GateResult:
    """Cross-validated check on the device's own examples: does a patch lower its accuracy?
    ``cfg`` is a :class:`edge.personal.PersonalConfig`."""
    n = len(y)
    corrections = int((np.asarray(logits).argmax(axis=1) != y).sum())
    if n < cfg.min_examples:
        return GateResult(False, f"{n} examples, fewer than min_examples={cfg.min_examples}", 0, 0, 0)
    if corrections < cfg.min_corrections:
        return GateResult(False, f"the base model gets all but {corrections} examples right "
                                 f"(min_corrections={cfg.min_corrections})", 0, 0, 0)
    fold = np.array([fold_of(m, cfg.gate_folds) for m in mids])
    base_ok = patched_ok = held = fixed = broken = 0
    for f in range(cfg.gate_folds):
        test, train = fold == f, fold != f
        if not test.any() or train.sum() < 2:
            continue
        patch = fit_patch(logits[train], feats[train], y[train], rank=cfg.rank, l2=cfg.l2,
                          steps=cfg.steps, lr=cfg.lr)
        base_right = logits[test].argmax(axis=1) == y[test]
        patched_right = patch.apply(logits[test], feats[test]).argmax(axis=1) == y[test]
        held += int(test.sum())
        base_ok += int(base_right.sum())
        patched_ok += int(patched_right.sum())
        fixed += int((patched_right & ~base_right).sum())
        broken += int((base_right & ~patched_right).sum())
    p = round(sign_test_p(fixed, broken), 6)
    figures = (held, base_ok, patched_ok, fixed, broken, p)
    summary = (f"held-out accuracy {patched_ok}/{held} with the patch, {base_ok}/{held} without; "
               f"fixes {fixed}, breaks {broken}, p={p:.3g}")
    if patched_ok < base_ok:
        return GateResult(False, f"patch lowers {summary}", *figures)
    if p > cfg.gate_max_p:
        return GateResult(False, f"gain not shown: {summary} > gate_max_p={cfg.gate_max_p}", *figures)
    return GateResult(True, summary, *figures)
