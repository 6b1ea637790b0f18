"""Out-of-scope negatives for training: outlier exposure (Hendrycks et al. 2019).

The bundled Bitext data has no out-of-scope messages. Its principled source is CLINC150's
out-of-scope queries (``oos_train`` in ``data/clinc150/data_full.json``, CC BY 3.0): questions
people asked a task assistant that fit none of its 150 intents, written by crowd workers, not by
us. ``oos_val`` picks thresholds and ``oos_test`` measures; training sees only ``oos_train``.

The student learns to spread its output evenly over the intents on them: the outlier-exposure
term is the cross-entropy from its softmax to the uniform distribution. With the distillation
loss of :mod:`models.distill` that term needs no new code: an outlier row whose teacher target
is uniform and whose gold label is missing (-1) adds ``α·T²·KL(u ‖ softmax(z/T))``, which is
the outlier-exposure loss on ``z/T`` up to a constant (:func:`with_outliers`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_contracts.datasets import read_table
from edge.redact import redact
from edgeloop.config import REPO_ROOT, DatasetConfig

DEFAULT_PATH = "data/clinc150/data_full.json"


def load_outlier_texts(path: str | Path = DEFAULT_PATH, keys: tuple[str, ...] = ("oos_train",),
                       exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Out-of-scope texts from a CLINC150-layout JSON file (lists of [text, label] pairs under
    ``keys``), redacted like every training text, without duplicates or texts in ``exclude``.

    Relative paths are read from the repository root.
    """
    p = Path(path)
    p = p if p.is_absolute() else REPO_ROOT / p
    cfg = DatasetConfig(path=str(p), format="json_splits", json_keys=list(keys),
                        text_column="text", label_column="label")
    frame = read_table(p, cfg)
    seen, out = set(exclude), []
    for raw in frame["text"]:
        if not isinstance(raw, str) or not raw.strip():
            continue
        text = redact(raw)[0]
        if text not in seen:
            seen.add(text)
            out.append(text)
    if not out:
        raise ValueError(f"{p}: lists {list(keys)} hold no out-of-scope texts")
    return out


def outlier_exposure_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy from ``softmax(logits)`` to the uniform distribution:
    ``logsumexp(z) − mean(z)`` per row. Its minimum, ``log K``, is reached by equal logits."""
    return (torch.logsumexp(logits, dim=-1) - logits.mean(dim=-1)).mean()


def with_outliers(texts: list[str], probs: np.ndarray, gold: np.ndarray, hidden: np.ndarray | None,
                  outlier_texts: list[str], outlier_hidden: np.ndarray | None = None, repeat: int = 1
                  ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """The transfer set plus ``repeat`` copies of the outliers with uniform targets and no gold.

    Takes and returns what :func:`models.distill.prepare_transfer` returns (texts, teacher
    probabilities, gold ids or -1, teacher sentence vectors or None). When ``hidden`` is given the
    teacher's vectors for the outliers are needed too (``outlier_hidden``): the sentence-vector
    term then keeps the student's features of an outlier near the teacher's.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if hidden is not None and (outlier_hidden is None or len(outlier_hidden) != len(outlier_texts)):
        raise ValueError("outlier_hidden must give one teacher vector per outlier text when hidden is given")
    n, k = len(outlier_texts) * repeat, probs.shape[1]
    texts_out = list(texts) + list(outlier_texts) * repeat
    probs_out = np.concatenate([probs, np.full((n, k), 1.0 / k, dtype=np.float32)]).astype(np.float32)
    gold_out = np.concatenate([gold, np.full(n, -1, dtype=np.int64)])
    hidden_out = None if hidden is None else np.concatenate(
        [hidden, np.tile(np.asarray(outlier_hidden, dtype=hidden.dtype), (repeat, 1))])
    return texts_out, probs_out, gold_out, hidden_out
