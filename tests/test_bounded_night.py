"""Bounded nights: teacher outputs computed once, a bounded replay stratified by intent, full retrains.

The teacher is the tiny BERT of tests/test_student.py (fast); the lake is on a local folder.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from data_contracts.datasets import message_id
from data_contracts.lake import Lake
from tests.test_student import CORPUS, LABELS, TINY, teacher_dir  # noqa: F401 (a fixture)

DAY0 = datetime(2026, 3, 1, 3, tzinfo=timezone.utc)


def _append_day(lake: Lake, day: int, texts: list[str], gold: list[str | None]) -> pd.Timestamp:
    at = DAY0 + timedelta(days=day)
    lake.append_messages(pd.DataFrame({"message_id": [message_id(t) for t in texts], "text": texts,
                                       "gold_label": gold}), "seed" if day == 0 else "stream", received_at=at)
    return pd.Timestamp(at)


def _label(lake: Lake, key: str, labels: list[str], probs: np.ndarray, ids: list[str]) -> None:
    lake.append_labels(key, pd.DataFrame({"message_id": ids, "probs": list(probs.astype(np.float32)),
                                          "label": [labels[i] for i in probs.argmax(1)],
                                          "confidence": probs.max(1).astype(np.float32)}))


# ---- which rows: bounded and stratified ----------------------------------------------------------

MIX = {"a": 30, "b": 15, "c": 5}  # one day's teacher labels: 60% / 30% / 10%


def _synthetic_lake(root, n_days: int) -> Lake:
    """Day 0: 30 gold seed rows; days 1..n_days-1: 50 rows each, teacher-labelled a/b/c as MIX."""
    lake = Lake(root)
    seed = [f"seed {i}" for i in range(30)]
    _append_day(lake, 0, seed, [["a", "b", "c"][i % 3] for i in range(30)])
    eye = np.eye(3, dtype=np.float32)
    _label(lake, "v1", ["a", "b", "c"], eye[[i % 3 for i in range(30)]], [message_id(t) for t in seed])
    for d in range(1, n_days):
        texts = [f"day {d} row {i}" for i in range(50)]
        _append_day(lake, d, texts, [None] * 50)
        kinds = [k for k, n in MIX.items() for _ in range(n)]
        _label(lake, "v1", ["a", "b", "c"], eye[[["a", "b", "c"].index(k) for k in kinds]],
               [message_id(t) for t in texts])
    return lake


@pytest.mark.parametrize("n_days", [12, 40])
def test_replay_is_bounded_stratified_and_does_not_grow_with_the_lake(tmp_path, n_days):
    from models.replay import select_rows

    lake = _synthetic_lake(tmp_path, n_days)
    cut = DAY0 + timedelta(days=n_days - 3)  # the champion saw everything up to 2 days ago
    cfg = TINY.model_copy(update={"replay_size": 40, "replay_gold_share": 0.25})
    rows = select_rows(lake, "v1", cfg, "bounded", {"trained_through": cut.isoformat()}, seed=3)
    new, gold, replay = (rows[rows["role"] == r] for r in ("new", "gold", "replay"))
    assert len(new) == 100 and (new["received_at"] > pd.Timestamp(cut)).all()
    assert len(gold) == 10 and gold["gold_label"].notna().all()
    assert sorted(gold["gold_label"].value_counts().tolist()) == [3, 3, 4]  # 10 over three equal intents
    assert len(replay) == 30 and (replay["received_at"] <= pd.Timestamp(cut)).all()
    counts = replay["label"].value_counts()
    assert abs(counts["a"] - 18) <= 1 and abs(counts["b"] - 9) <= 1 and abs(counts.get("c", 0) - 3) <= 1
    assert replay["received_date"].nunique() <= 3  # a few past days hold the 4 x 30 candidates
    assert rows["message_id"].is_unique and len(rows) == 140  # the same size on a 12- and a 40-day lake


def test_full_and_cold_train_on_every_labelled_row(tmp_path):
    from models.replay import select_rows

    lake = _synthetic_lake(tmp_path, 5)
    for kind in ("full", "cold"):
        rows = select_rows(lake, "v1", TINY, kind, None, seed=0)
        assert len(rows) == 30 + 4 * 50 and set(rows["role"]) == {"new"}


def test_corrected_rows_count_as_new_with_their_corrected_label(tmp_path):
    from models.replay import select_rows

    lake = _synthetic_lake(tmp_path, 6)
    cut = pd.Timestamp(DAY0 + timedelta(days=5))
    old = message_id("day 2 row 0")
    lake.append_corrections(pd.DataFrame({"message_id": [old], "gold_label": ["c"], "at": [cut + timedelta(hours=1)]}))
    cfg = TINY.model_copy(update={"replay_size": 0})
    rows = select_rows(lake, "v1", cfg, "bounded", {"trained_through": cut.isoformat(),
                                                    "corrections_through": cut.isoformat()}, seed=0)
    assert rows["message_id"].tolist() == [old] and rows["gold_label"].tolist() == ["c"]


def test_corrections_stored_without_a_zone_on_the_first_night_after_them(tmp_path):
    """Corrections written with naive UTC times (as older lakes hold them) and a champion whose
    mark has no corrections_through yet: the bounded night compares them in UTC, no TypeError."""
    from models.replay import select_rows

    lake = _synthetic_lake(tmp_path, 6)
    cut = pd.Timestamp(DAY0 + timedelta(days=5))
    old = message_id("day 2 row 0")
    naive = (cut + timedelta(hours=1)).tz_convert("UTC").tz_localize(None).to_datetime64()
    lake._write_part(lake._path("corrections"), pd.DataFrame({"message_id": [old], "gold_label": ["c"], "at": [naive]}))
    assert str(lake.corrections()["at"].dt.tz) == "UTC"
    cfg = TINY.model_copy(update={"replay_size": 0})
    rows = select_rows(lake, "v1", cfg, "bounded", {"trained_through": cut.isoformat()}, seed=0)
    assert rows["message_id"].tolist() == [old] and rows["gold_label"].tolist() == ["c"]


def test_training_kind_rules():
    from models.replay import training_kind

    mark = {"trained_through": "2026-03-05T03:00:00+00:00", "teacher_version": "v1"}
    weekly = TINY.model_copy(update={"full_retrain_every_days": 7})
    assert training_kind(TINY, False, mark, "v1", False, None, "2026-03-06")[0] == "cold"
    assert training_kind(TINY, True, mark, "v1", False, None, "2026-03-06")[0] == "bounded"
    assert training_kind(TINY, True, mark, "v1", True, None, "2026-03-06") == ("full", "full retrain requested")
    assert "teacher changed" in training_kind(TINY, True, mark, "v2", False, None, "2026-03-06")[1]
    assert training_kind(TINY, True, None, "v1", False, None, "2026-03-06")[0] == "full"
    assert training_kind(weekly, True, mark, "v1", False, "2026-03-01", "2026-03-06")[0] == "bounded"
    assert training_kind(weekly, True, mark, "v1", False, "2026-03-01", "2026-03-08")[0] == "full"
    assert training_kind(weekly, True, mark, "v1", False, None, "2026-03-06")[0] == "full"


def test_stratified_takes_each_value_in_proportion():
    from models.replay import stratified

    df = pd.DataFrame({"k": ["a"] * 70 + ["b"] * 20 + ["c"] * 10})
    pick = stratified(df, df["k"], 10, np.random.default_rng(0))
    assert pick["k"].value_counts().to_dict() == {"a": 7, "b": 2, "c": 1}
    assert len(stratified(df, df["k"], 500, np.random.default_rng(0))) == 100


# ---- teacher outputs computed once ------------------------------------------------------------

@pytest.fixture()
def counted(monkeypatch):
    """Counts the texts the teacher encodes for vectors and augmented copies."""
    import models.distill

    seen: list[str] = []
    real = models.distill.teacher_outputs

    def spy(model, tokenizer, texts, *a, **kw):
        seen.extend(texts)
        return real(model, tokenizer, texts, *a, **kw)

    monkeypatch.setattr(models.distill, "teacher_outputs", spy)
    return seen


def _teacher_lake(root, teacher, days: int) -> Lake:
    lake = Lake(root)
    for d in range(days):
        texts = [f"{t} {d}" for t in CORPUS]
        _append_day(lake, d, texts, [LABELS[i // 3] if d == 0 else None for i in range(len(texts))])
        _label(lake, "v1", LABELS, teacher.predict_proba(texts), [message_id(t) for t in texts])
    return lake


def test_a_second_night_computes_teacher_outputs_only_for_new_rows(tmp_path, teacher_dir, counted):  # noqa: F811
    from models.replay import select_rows
    from models.teacher import LocalTeacher
    from models.transfer import teacher_targets

    teacher = LocalTeacher(teacher_dir, max_length=24)
    lake = _teacher_lake(tmp_path, teacher, 2)
    rows = select_rows(lake, "v1", TINY, "full", None, seed=0)
    first = teacher_targets(lake, "v1", teacher, rows, LABELS, TINY)
    stats = first[4]
    assert stats["vectors_computed"] == 18 and stats["augmented_computed"] > 0
    assert len(counted) == 18 + stats["augmented_computed"]

    counted.clear()
    again = teacher_targets(lake, "v1", teacher, rows, LABELS, TINY)
    assert counted == [] and again[4] == {"vectors_computed": 0, "augmented_computed": 0,
                                          "augmented_reused": stats["augmented_computed"]}
    assert again[0] == first[0]  # the same texts, labels and vectors, read back from the lake
    np.testing.assert_array_equal(again[1], first[1])
    np.testing.assert_array_equal(again[3], first[3])

    day2 = [f"{t} 2" for t in CORPUS]
    _append_day(lake, 2, day2, [None] * 9)
    _label(lake, "v1", LABELS, teacher.predict_proba(day2), [message_id(t) for t in day2])
    counted.clear()
    rows = select_rows(lake, "v1", TINY, "full", None, seed=0)
    third = teacher_targets(lake, "v1", teacher, rows, LABELS, TINY)[4]
    assert third["vectors_computed"] == 9 and set(counted[:9]) == set(day2)
    assert 0 < third["augmented_computed"] <= TINY.augment_copies * 9
    assert len(counted) == 9 + third["augmented_computed"]


def test_bounded_night_trains_on_new_rows_plus_replay_and_full_retrain_on_everything(tmp_path, teacher_dir, counted):  # noqa: F811
    from models.candidate import train_candidate
    from models.replay import read_mark
    from models.teacher import LocalTeacher
    from models.teacher_store import TeacherRef

    teacher = LocalTeacher(teacher_dir, max_length=24)
    ref = TeacherRef("1", str(teacher_dir))
    cfg = TINY.model_copy(update={"replay_size": 6, "replay_gold_share": 0.5, "epochs": 1, "warm_start_epochs": 1})
    lake = _teacher_lake(tmp_path / "lake", teacher, 3)
    cold = train_candidate(cfg, lake, ref, teacher, LABELS, tmp_path / "c1", night="2026-03-03")
    assert cold["training_kind"] == "cold" and cold["n_train"] == 27 and cold["vectors_computed"] == 27
    assert read_mark(tmp_path / "c1" / "student")["trained_through"] == (DAY0 + timedelta(days=2)).isoformat()

    day3 = [f"{t} 3" for t in CORPUS]
    _append_day(lake, 3, day3, [None] * 9)
    _label(lake, "v1", LABELS, teacher.predict_proba(day3), [message_id(t) for t in day3])
    bounded = train_candidate(cfg, lake, ref, teacher, LABELS, tmp_path / "c2", ("1", tmp_path / "c1"),
                              night="2026-03-04")
    assert bounded["training_kind"] == "bounded" and bounded["warm_start_from"] == "1"
    assert (bounded["n_new"], bounded["n_replay_gold"], bounded["n_replay"]) == (9, 3, 3)
    assert bounded["n_train"] == 15 and bounded["vectors_computed"] == 9  # replay rows' vectors are read back

    full = train_candidate(cfg, lake, ref, teacher, LABELS, tmp_path / "c3", ("2", tmp_path / "c2"),
                           full_retrain=True, night="2026-03-04")
    assert full["training_kind"] == "full" and full["n_train"] == 36 and full["vectors_computed"] == 0


def test_full_retrain_is_a_cli_flag_a_flow_parameter_and_a_deployment_parameter():
    import inspect
    from pathlib import Path

    import yaml

    from flows.cli import build_parser
    from flows.nightly import nightly

    assert build_parser().parse_args(["night", "--full-retrain"]).full_retrain is True
    assert build_parser().parse_args(["night"]).full_retrain is False
    assert inspect.signature(nightly.fn).parameters["full_retrain"].default is False
    deployments = yaml.safe_load((Path(__file__).parent.parent / "prefect.yaml").read_text())["deployments"]
    adhoc = next(d for d in deployments if d["name"] == "nightly-adhoc")
    assert adhoc["parameters"]["full_retrain"] is False
