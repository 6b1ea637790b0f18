import pandas as pd
import pytest

from data_contracts.datasets import DatasetError, load_dataset, message_id, split_dataset
from edgeloop.config import REPO_ROOT, DatasetConfig

CLINC = DatasetConfig(name="clinc150", path="data/clinc150/data_full.json", format="json_splits",
                      json_keys=["train", "val", "test"], text_column="text", label_column="intent")


def test_bitext_loads_through_configuration():
    df = load_dataset(DatasetConfig())
    assert list(df.columns) == ["message_id", "text", "label"]
    assert df["label"].nunique() == 27 and len(df) > 4000 and df["message_id"].is_unique


def test_clinc150_loads_and_splits_through_configuration_alone():
    df = load_dataset(CLINC)
    assert df["label"].nunique() == 150 and len(df) > 20000
    split = split_dataset(df, CLINC)
    assert len(split.labels) == 150
    for part in (split.seed, split.stream, split.golden):
        assert part["label"].nunique() == 150  # stratified: every intent in every part


def test_split_is_disjoint_stratified_and_reproducible():
    cfg = DatasetConfig()
    df = load_dataset(cfg)
    a, b = split_dataset(df, cfg), split_dataset(df.sample(frac=1, random_state=1), cfg)
    ids = [set(p["message_id"]) for p in (a.seed, a.stream, a.golden)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == len(df)
    assert a.split_hash == b.split_hash  # row order of the file does not matter
    assert abs(len(a.golden) / len(df) - cfg.golden_fraction) < 0.01
    other = split_dataset(df, cfg.model_copy(update={"split_seed": 99}))
    assert other.split_hash != a.split_hash


def test_stream_batches_walk_the_stream_then_run_dry():
    cfg = DatasetConfig(stream_batch_size=1000)
    split = split_dataset(load_dataset(cfg), cfg)
    batches = [split.stream_batch(i, 1000) for i in range(5)]
    assert sum(map(len, batches)) == len(split.stream) and batches[-1].empty
    assert pd.concat(batches)["message_id"].is_unique


def test_message_id_is_a_content_hash():
    assert message_id("where is my order") == message_id("  where is my order ")
    assert message_id("a") != message_id("b")


def test_wrong_columns_are_named(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("question,answer\nhi,there\n")
    with pytest.raises(DatasetError, match=r"column\(s\) \['instruction', 'intent'\] not found"):
        load_dataset(DatasetConfig(path=str(p)))


def test_json_splits_names_missing_keys(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('{"train": [["hi", "greet"]]}')
    with pytest.raises(DatasetError, match=r"keys \['test'\] not found"):
        load_dataset(DatasetConfig(path=str(p), format="json_splits", json_keys=["train", "test"]))


def test_bundled_data_carries_its_license():
    assert (REPO_ROOT / "data/bitext/LICENSE.txt").exists() and (REPO_ROOT / "data/clinc150/LICENSE").exists()
