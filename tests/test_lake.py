import uuid
from datetime import datetime, timezone

import fsspec
import pytest

import numpy as np
import pandas as pd

from data_contracts.datasets import message_id
from data_contracts.lake import Lake


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    """The lake on a local folder and on an fsspec URL (in-memory object store)."""
    if request.param == "local":
        yield str(tmp_path)
        return
    url = f"memory://lake-{uuid.uuid4().hex}"
    yield url
    fsspec.filesystem("memory").rm(url, recursive=True)


def rows(*texts, gold=None):
    return pd.DataFrame({"message_id": [message_id(t) for t in texts], "text": list(texts),
                         "gold_label": gold or [None] * len(texts)})


def test_append_is_idempotent_by_content_hash(root):
    lake = Lake(root)
    assert lake.append_messages(rows("a", "b"), source="stream") == 2
    assert lake.append_messages(rows("a", "b"), source="stream") == 0
    assert lake.append_messages(rows("b", "c"), source="stream") == 1
    msgs = lake.messages()
    assert sorted(msgs["text"]) == ["a", "b", "c"] and set(msgs["source"]) == {"stream"}


def test_messages_are_partitioned_by_arrival_date(root):
    lake = Lake(root)
    lake.append_messages(rows("a"), "seed", received_at=datetime(2026, 1, 2, tzinfo=timezone.utc))
    lake.append_messages(rows("b"), "stream", received_at=datetime(2026, 1, 3, tzinfo=timezone.utc))
    dirs = sorted(p.rsplit("/", 1)[-1] for p in lake.fs.ls(lake.messages_dir, detail=False))
    assert dirs == ["received_date=2026-01-02", "received_date=2026-01-03"]
    assert lake.has_source("seed") and not lake.has_source("feedback")


def test_labels_are_cached_per_teacher_version(root):
    lake = Lake(root)
    lake.append_messages(rows("a", "b", "c"), "stream")
    ids = lake.messages()["message_id"].tolist()
    soft = pd.DataFrame({"message_id": ids[:2], "probs": [np.array([0.9, 0.1], np.float32)] * 2,
                         "label": ["x", "x"], "confidence": [0.9, 0.9]})
    lake.append_labels("v1", soft)
    assert lake.unlabeled("v1")["message_id"].tolist() == ids[2:]
    assert len(lake.unlabeled("v2")) == 3  # a new teacher version relabels everything
    np.testing.assert_allclose(lake.labels("v1")["probs"].iloc[0], [0.9, 0.1], rtol=1e-6)


def test_corrections_override_gold_labels(root):
    lake = Lake(root)
    lake.append_messages(rows("a", "b", gold=["x", None]), "seed")
    ida, idb = message_id("a"), message_id("b")
    t0, t1 = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-02", tz="UTC")
    lake.append_corrections(pd.DataFrame({"message_id": [idb, ida, ida], "gold_label": ["y", "z", "w"],
                                          "at": [t0, t0, t1]}))
    gold = lake.training_messages().set_index("message_id")["gold_label"]
    assert gold[ida] == "w" and gold[idb] == "y"


def test_quarantine_keeps_every_row_with_its_reason(root):
    lake = Lake(root)
    bad = pd.DataFrame({"message_id": ["1", "2"], "text": [None, "x" * 10], "reason": ["text: empty", "too long"],
                        "contract": ["raw_messages@1"] * 2})
    assert lake.quarantine(bad) == 2
    q = lake.quarantined()
    assert len(q) == 2 and set(q["reason"]) == {"text: empty", "too long"} and "quarantined_at" in q


def test_night_ledger_round_trips(root):
    lake = Lake(root)
    lake.record_night("2026-01-01", {"night": "2026-01-01", "batch_index": 0, "source": "stream"})
    assert lake.night_record("2026-01-01")["batch_index"] == 0 and lake.night_record("2026-01-02") is None
    assert len(lake.nights()) == 1


def test_completing_a_night_keeps_what_ingest_recorded(root):
    lake = Lake(root)
    lake.record_night("2026-01-01", {"night": "2026-01-01", "batch_index": 4, "source": "stream"})
    assert lake.completed_night("2026-01-01") is None  # ingested, not finished
    lake.complete_night("2026-01-01", {"mlflow_run_id": "r1", "model_version": "3", "gate_decision": "pass",
                                       "accuracy": 0.9})
    done = lake.completed_night("2026-01-01")
    assert done["batch_index"] == 4 and done["model_version"] == "3" and done["completed_at"]
    assert "accuracy" not in done  # only the outcome, not the whole summary
    assert lake.complete_night("2026-01-02", {})["night"] == "2026-01-02"  # no ingest record: one is started
