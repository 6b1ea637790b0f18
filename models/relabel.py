"""Relabel: the teacher labels the lake's new messages; the night checks and gathers those labels.

Labels are cached in the lake per (message, teacher version), so a night labels only what that
teacher version has not seen; the night reads only the ids and texts it labels. Messages devices
deferred (``source="deferred"``: the device was unsure of them) are labelled first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_contracts.datasets import Split
from data_contracts.feedback_ingest import DEFERRED_SOURCE
from data_contracts.lake import Lake
from edgeloop.config import ContractsConfig, TeacherConfig
from models.teacher_store import TeacherRef, relabel_teacher


def pending_ids(lake: Lake, ref: TeacherRef) -> list[str]:
    """Ids of messages this teacher version has not labeled: deferred ones first, then lake order."""
    ids = lake.unlabeled_ids(ref.cache_key)
    if not ids:
        return ids
    src = lake.messages(ids=ids, columns=["message_id", "source"])
    deferred = set(src.loc[src["source"] == DEFERRED_SOURCE, "message_id"])
    return [i for i in ids if i in deferred] + [i for i in ids if i not in deferred]


def pending_shards(lake: Lake, ref: TeacherRef, n_shards: int) -> list[list[str]]:
    """:func:`pending_ids` dealt round-robin into ``n_shards`` lists: every shard starts with its
    share of the deferred messages."""
    ids = pending_ids(lake, ref)
    return [s for s in (ids[i::n_shards] for i in range(n_shards)) if s]


def label_shard(cfg: TeacherConfig, lake: Lake, ref: TeacherRef, ids: list[str]) -> dict:
    """Have the teacher label the messages ``ids``; store the rows the label contract accepts.

    Rows the row-level contract rejects (probabilities not summing to 1, ...) go to the quarantine,
    never to training. Returns the contract's accounting.
    """
    from data_contracts.contracts import validate_teacher_labels

    msgs = lake.messages(ids=ids, columns=["message_id", "text"]).set_index("message_id").loc[ids]
    teacher = relabel_teacher(cfg, ref)
    probs = teacher.predict_proba(msgs["text"].tolist())
    labels = np.array(teacher.labels)[probs.argmax(1)]
    out = pd.DataFrame({"message_id": ids, "probs": list(probs.astype(np.float32)),
                        "label": labels, "confidence": probs.max(1).astype(np.float32)})
    # Row checks only here; the batch checks (drift, mean confidence) run once on the whole night.
    result = validate_teacher_labels(out, teacher.labels, None, min_mean_confidence=0.0)
    lake.append_labels(ref.cache_key, result.accepted)
    lake.quarantine(result.quarantined)
    return result.summary()


def check_batch_labels(lake: Lake, ref: TeacherRef, split: Split, cfg: ContractsConfig, report_dir: Path,
                       night: str | None = None):
    """The batch-level label contract (drift from the seed's label mix, mean confidence) on the
    labels ``ref`` gave tonight's arrivals: the messages stored by ``night``'s ingest (its ledger's
    ``ingested_at``; the latest arrival when it stored none). Without ``night``: on every label
    of ``ref``. Writes its report to ``report_dir``.

    Returns (the contract result, report files, mean confidence); the caller decides to stop the
    night with ``result.raise_for_failures()``.
    """
    from data_contracts.contracts import validate_teacher_labels, write_report

    if night is None:
        labels = lake.labels(ref.cache_key)
    else:
        record = lake.night_record(night) or {}
        ids = lake.arrival(record["ingested_at"]) if record.get("ingested_at") else []
        labels = lake.labels(ref.cache_key, ids=ids or lake.arrival())
    seed_mix = split.seed["label"].value_counts(normalize=True).to_dict()
    result = validate_teacher_labels(labels, split.labels, seed_mix, max_drift=cfg.max_label_drift,
                                     min_mean_confidence=cfg.min_mean_confidence)
    files = write_report([result], report_dir)
    mean_confidence = float(labels["confidence"].mean()) if len(labels) else 0.0
    return result, files, mean_confidence
