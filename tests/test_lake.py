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


# ---- reads that touch only what they need ------------------------------------------------------------

def _days(lake, n_days=3, per_day=4):
    """``n_days`` ingests of ``per_day`` messages each, one a day; returns every row as written."""
    out = []
    for d in range(n_days):
        texts = [f"day {d} message {i}" for i in range(per_day)]
        at = datetime(2026, 1, 1 + d, 3, tzinfo=timezone.utc)
        lake.append_messages(rows(*texts, gold=["x" if i == 0 else None for i in range(per_day)]), "stream",
                             received_at=at)
        out += [(message_id(t), t, f"2026-01-0{1 + d}") for t in texts]
    return out


def test_pruned_reads_return_the_same_rows_as_full_reads(root):
    lake = Lake(root)
    written = _days(lake)
    full = lake.messages().set_index("message_id")
    assert sorted(full.index) == sorted(m for m, _, _ in written)
    some = [written[1][0], written[6][0], "not-in-the-lake"]
    by_id = lake.messages(ids=some).set_index("message_id")
    assert sorted(by_id.index) == sorted(some[:2])
    pd.testing.assert_frame_equal(by_id.loc[some[:2]], full.loc[some[:2]])
    day = lake.messages(dates=["2026-01-02"], columns=["message_id", "text", "received_date"])
    assert sorted(day["message_id"]) == sorted(m for m, _, d in written if d == "2026-01-02")
    assert set(day["received_date"]) == {"2026-01-02"} and list(day.columns) == ["message_id", "text", "received_date"]
    assert lake.messages(dates=["2030-01-01"]).empty and lake.messages(ids=[]).empty
    assert lake.partitions() == {"2026-01-01": 4, "2026-01-02": 4, "2026-01-03": 4}
    assert sorted(lake.gold_messages(["message_id"])["message_id"]) == sorted(written[i][0] for i in (0, 4, 8))
    assert sorted(lake.arrival()) == sorted(m for m, _, d in written if d == "2026-01-03")
    assert sorted(lake.arrival(datetime(2026, 1, 1, 3, tzinfo=timezone.utc))) == sorted(m for m, _, _ in written[:4])


def test_append_dedups_against_every_part_by_id(root):
    lake = Lake(root)
    _days(lake)
    again = rows("day 0 message 1", "day 2 message 3", "brand new", "brand new")
    assert lake.append_messages(again, "stream", received_at=datetime(2026, 2, 1, tzinfo=timezone.utc)) == 1
    assert len(lake.messages()) == 13 and lake.messages()["message_id"].is_unique


def test_unlabeled_reads_texts_of_unlabeled_rows_only(root):
    lake = Lake(root)
    written = _days(lake)
    done = [m for m, _, _ in written[:7]]
    lake.append_labels("v1", pd.DataFrame({"message_id": done, "probs": [np.array([1.0, 0.0], np.float32)] * 7,
                                           "label": ["x"] * 7, "confidence": [1.0] * 7}))
    assert lake.unlabeled_ids("v1") == [m for m, _, _ in written[7:]]
    left = lake.unlabeled("v1")
    assert left["message_id"].tolist() == [m for m, _, _ in written[7:]]
    assert left["text"].tolist() == [t for _, t, _ in written[7:]]
    assert lake.labels("v1", ["message_id", "label"], ids=done[:2]).columns.tolist() == ["message_id", "label"]
    assert len(lake.labels("v1", ids=done[:2])) == 2 and "probs" in lake.labels("v1").columns


def test_teacher_vectors_and_augmented_copies_are_stored_by_day(root):
    lake = Lake(root)
    written = _days(lake)
    ids, dates = [m for m, _, _ in written], [d for _, _, d in written]
    vecs = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    lake.append_vectors("v1", ids, vecs, dates)
    found, got = lake.vectors("v1", ids[4:6], dates={"2026-01-02"})
    assert found == ids[4:6]
    np.testing.assert_allclose(got, vecs[4:6], atol=1e-2)  # stored as float16
    assert lake.vectors("v1", ids[4:6], dates={"2026-01-01"})[0] == []  # another day's partition is not read
    assert lake.vectors("v2", ids)[0] == []
    copies = pd.DataFrame({"parent_id": [ids[0], ids[0], ids[5]], "text": ["a1", "a2", "b1"],
                           "received_date": [dates[0], dates[0], dates[5]]})
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], np.float32)
    lake.append_augmented("v1", copies, probs, vecs[:3])
    df, p, v = lake.augmented("v1", [ids[0]])
    assert df["text"].tolist() == ["a1", "a2"] and df["parent_id"].tolist() == [ids[0]] * 2
    np.testing.assert_allclose(p, probs[:2], rtol=1e-6)
    assert v.shape == (2, 8)
    assert lake.augmented("v1", [ids[5]], dates={"2026-01-01"})[0].empty


def test_training_ledger_names_the_last_full_retrain(root):
    lake = Lake(root)
    assert lake.last_full_training() is None
    lake.record_night("2026-01-01", {"night": "2026-01-01", "batch_index": 0})
    lake.record_training("2026-01-01", {"kind": "cold", "n_train": 10})
    lake.record_training("2026-01-05", {"kind": "full", "n_train": 50})
    lake.record_training("2026-01-06", {"kind": "bounded", "n_train": 20})
    assert lake.last_full_training() == "2026-01-05"
    assert lake.night_record("2026-01-01")["batch_index"] == 0  # ingest's record is kept
