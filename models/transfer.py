"""The teacher's targets for a night's training rows, computed once per (message, teacher version).

Soft labels come from the relabel step (``labels/<tv>/``). The teacher's sentence vectors (the
hidden-distillation term) and its labelled augmented copies are read from the lake
(``vectors/<tv>/``, ``augmented/<tv>/``); only rows that have none yet go through the teacher, and
what it computes is stored before it is used, so every later night reads the same values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_contracts.lake import Lake
from edgeloop.config import StudentConfig


def _local(teacher, cfg: StudentConfig) -> bool:
    """A transformers teacher whose sentence vectors the student learns (hidden term on)."""
    return hasattr(teacher, "model") and hasattr(teacher, "tokenizer") and cfg.hidden_weight > 0


def _teacher_pass(teacher, texts: list[str], local: bool, n_labels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, sentence vectors or None) of the teacher for ``texts``."""
    from models.distill import teacher_outputs

    if not texts:
        return np.zeros((0, n_labels), np.float32), None
    if local:
        return teacher_outputs(teacher.model, teacher.tokenizer, texts, getattr(teacher, "max_length", 48))
    return np.asarray(teacher.predict_proba(texts), dtype=np.float32), None


def _vectors(lake: Lake, key: str, teacher, rows: pd.DataFrame, stats: dict) -> np.ndarray:
    """The stored sentence vector of every row; the teacher computes (and the lake stores) the missing."""
    ids, dates = rows["message_id"].tolist(), rows["received_date"].tolist()
    found, stored = lake.vectors(key, ids, dates=set(dates))
    at = {m: i for i, m in enumerate(found)}
    missing = [i for i, m in enumerate(ids) if m not in at]
    if missing:
        _, fresh = _teacher_pass(teacher, [rows["text"].iat[i] for i in missing], True, 0)
        lake.append_vectors(key, [ids[i] for i in missing], fresh, [dates[i] for i in missing])
        fresh = fresh.astype(np.float16).astype(np.float32)  # what is stored trains, tonight and later
        width = fresh.shape[1]
    else:
        width = stored.shape[1]
    out = np.zeros((len(ids), width), np.float32)
    for i, m in enumerate(ids):
        if m in at:
            out[i] = stored[at[m]]
    if missing:
        out[missing] = fresh
    stats["vectors_computed"] = len(missing)
    return out


def _augmented(lake: Lake, key: str, teacher, rows: pd.DataFrame, cfg: StudentConfig, local: bool,
               n_labels: int, stats: dict) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Up to ``cfg.augment_max_rows`` labelled copies of the rows: fresh ones for rows that have none
    stored (new rows first), then stored ones; (texts, probs, vectors or None)."""
    from models.augment import augment_pairs

    ids, dates = rows["message_id"].tolist(), set(rows["received_date"])
    has = lake.augmented_parents(key, ids, dates=dates)
    need = [i for i in range(len(rows)) if ids[i] not in has]
    pairs = augment_pairs([rows["text"].iat[i] for i in need], cfg.augment_copies, seed=cfg.seed,
                          max_rows=cfg.augment_max_rows)
    day = rows["received_date"].tolist()
    pairs.sort(key=lambda pair: day[need[pair[0]]])  # the order the lake gives them back (by day)
    texts = [t for _, t in pairs]
    probs, vecs = _teacher_pass(teacher, texts, local, n_labels)
    if probs.shape != (len(texts), n_labels):
        raise ValueError(f"teacher gave probabilities of shape {probs.shape} for {len(texts)} augmented "
                         f"texts; expected ({len(texts)}, {n_labels})")
    if texts:
        parents = [need[j] for j, _ in pairs]
        lake.append_augmented(key, pd.DataFrame({"parent_id": [ids[i] for i in parents], "text": texts,
                                                 "received_date": rows["received_date"].iloc[parents].tolist()}),
                              probs, vecs)
        if vecs is not None:
            vecs = vecs.astype(np.float16).astype(np.float32)
    room = max(0, cfg.augment_max_rows - len(texts))
    old, old_p, old_v = (lake.augmented(key, [m for m in ids if m in has], dates=dates) if room and has
                         else (pd.DataFrame(columns=["parent_id", "text"]), np.zeros((0, 0), np.float32), None))
    if local and old_v is None and len(old):  # copies stored without vectors cannot train the hidden term
        old, old_p = old.iloc[:0], old_p[:0]
    keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(old))[:room])  # in stored order
    stats.update(augmented_computed=len(texts), augmented_reused=len(keep))
    texts = texts + old["text"].iloc[keep].tolist()
    probs = np.concatenate([probs, old_p[keep].reshape(len(keep), -1)]) if len(keep) else probs
    parts = [v for v in (vecs, old_v[keep] if len(keep) else None) if v is not None] if local else []
    return texts, probs.astype(np.float32), np.concatenate(parts) if parts else None


def teacher_targets(lake: Lake, key: str, teacher, rows: pd.DataFrame, label_names: list[str],
                    cfg: StudentConfig) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """(texts, teacher probs, gold ids or -1, teacher vectors or None, counts) for ``rows`` (from
    :func:`models.replay.select_rows`) and their augmented copies, by the teacher version ``key``.

    Vectors are used when the teacher is a local transformers model and ``cfg.hidden_weight > 0``.
    The counts say what the teacher computed tonight and what was read back from the lake.
    """
    index = {n: i for i, n in enumerate(label_names)}
    texts = rows["text"].tolist()
    probs = np.stack(rows["probs"].to_numpy()).astype(np.float32)
    gold = np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in rows["gold_label"]], np.int64)
    local = _local(teacher, cfg)
    stats = {"vectors_computed": 0, "augmented_computed": 0, "augmented_reused": 0}
    hidden = _vectors(lake, key, teacher, rows, stats) if local else None
    if cfg.augment_copies > 0 and cfg.augment_max_rows > 0:
        a_texts, a_probs, a_vecs = _augmented(lake, key, teacher, rows, cfg, local, probs.shape[1], stats)
        texts += a_texts
        probs = np.concatenate([probs, a_probs])
        gold = np.concatenate([gold, np.full(len(a_texts), -1, np.int64)])
        if local:
            hidden = np.concatenate([hidden, a_vecs]) if len(a_texts) else hidden
    return texts, probs, gold, hidden, stats
