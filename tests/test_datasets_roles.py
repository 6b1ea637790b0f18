"""A shop's own seed and golden files: no split, overlap refused or reported with the count."""

from __future__ import annotations

import pytest

from data_contracts.datasets import DatasetError, load_split
from edgeloop.config import ConfigError, DatasetConfig, load_settings


def _write(path, rows):
    path.write_text("message,topic\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    return str(path)


def _cfg(tmp_path, seed_rows, golden_rows, **kw) -> DatasetConfig:
    return DatasetConfig(name="shop", text_column="message", label_column="topic",
                         seed_path=[_write(tmp_path / "seed.csv", seed_rows)],
                         golden_path=_write(tmp_path / "golden.csv", golden_rows), **kw)


SEED = [("where is my parcel", "where is it?"), ("refund me", "Refund/Return"), ("cancel it", "cancel"),
        ("send it to my new flat", "where is it?")]
GOLDEN = [("parcel not here yet", "where is it?"), ("money back please", "Refund/Return")]


def test_roles_give_seed_and_golden_without_a_stream(tmp_path):
    split = load_split(_cfg(tmp_path, SEED, GOLDEN))
    assert len(split.seed) == 4 and len(split.golden) == 2 and split.stream.empty
    assert split.labels == ["Refund/Return", "cancel", "where is it?"]  # labels kept exactly


def test_overlap_is_refused_with_the_count(tmp_path):
    # Same message after redaction: only the order number differs.
    golden = GOLDEN + [("where is my order #ORD-1234567", "where is it?")]
    seed = SEED + [("where is my order #ORD-7654321", "where is it?"), ("refund me", "Refund/Return")]
    with pytest.raises(DatasetError, match=r"1 seed message\(s\) are also in golden"):
        load_split(_cfg(tmp_path, seed, golden))


def test_overlap_reported_drops_it_from_the_seed(tmp_path, caplog):
    golden = GOLDEN + [("cancel it", "cancel")]
    split = load_split(_cfg(tmp_path, SEED, golden, overlap="report"))
    assert "cancel it" not in split.seed["text"].tolist() and "cancel it" in split.golden["text"].tolist()
    assert "1 seed message(s) are also in golden" in caplog.text


def test_golden_label_without_seed_example_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"golden labels \['payment'\]"):
        load_split(_cfg(tmp_path, SEED, GOLDEN + [("card declined", "payment")]))


def test_globs_and_missing_files(tmp_path):
    (tmp_path / "s").mkdir()
    _write(tmp_path / "s" / "a.csv", SEED[:2])
    _write(tmp_path / "s" / "b.csv", SEED[2:])
    cfg = DatasetConfig(text_column="message", label_column="topic", seed_path=[str(tmp_path / "s" / "*.csv")],
                        golden_path=[_write(tmp_path / "golden.csv", GOLDEN)])
    assert len(load_split(cfg).seed) == 4
    with pytest.raises(DatasetError, match="matches no file"):
        load_split(cfg.model_copy(update={"seed_path": [str(tmp_path / "nope" / "*.csv")]}))


def test_roles_come_together_and_from_the_environment(tmp_path):
    with pytest.raises(ConfigError, match="seed_path and dataset.golden_path go together"):
        load_settings(overrides={"dataset": {"seed_path": "x.csv"}}, environ={})
    s = load_settings(environ={"EDGELOOP__DATASET__SEED_PATH": '["a.csv", "b.csv"]',
                               "EDGELOOP__DATASET__GOLDEN_PATH": '["t.csv"]'})
    assert s.dataset.seed_path == ["a.csv", "b.csv"] and s.dataset.golden_path == ["t.csv"]
