"""Any label string works end to end: bootstrap and one night on labels MLflow cannot take as keys."""

from __future__ import annotations

import csv
import json

import pytest

from data_contracts.datasets import load_dataset
from edgeloop.config import DatasetConfig

pytestmark = pytest.mark.e2e

#: Spaces, ?, /, &, non-ASCII, labels that differ only in case, a colon that looks like an escape.
HOSTILE = ["reverted_card_payment?", "billing / invoices", "R&D questions", "réclamation", "Refund", "refund",
           "a:3F", "where's my 📦", "cancel order"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_harness):
    from flows.nightly import nightly
    from flows.teacher_bootstrap import teacher_bootstrap

    folder = tmp_path_factory.mktemp("labels")
    df = load_dataset(DatasetConfig())  # the bundled data; its intents renamed
    keep = sorted(df["label"].unique())[:len(HOSTILE)]
    rename = dict(zip(keep, HOSTILE))
    df = df[df["label"].isin(keep)].groupby("label").head(60)
    path = folder / "shop.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["message", "topic"])
        w.writerows((t, rename[y]) for t, y in zip(df["text"], df["label"]))
    config = {"home": str(folder / "home"),
              "dataset": {"name": "hostile-labels", "path": str(path), "text_column": "message",
                          "label_column": "topic", "stream_batch_size": 100},
              "teacher": {"epochs": 4, "lr_encoder": 2e-4, "lr_head": 5e-3, "max_length": 32},
              "student": {"epochs": 3, "warm_start_epochs": 2, "max_length": 32, "augment_copies": 0},
              "evaluation": {"latency_runs": 30},
              "gate": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "min_teacher_retention": 0.0,
                       "max_p95_ms": 1000.0, "min_invariance": 0.0, "min_functionality": 0.0,
                       "min_directional": 0.0},
              "collab": {"min_oos_recall": 0.0}}  # measured, not gated: a 9-intent toy student
    teacher = teacher_bootstrap(config=config)
    night = nightly(night="2026-11-01", config=config)
    return {"config": config, "teacher": teacher, "night": night}


def test_bootstrap_and_a_night_run_with_any_labels(run):
    assert run["night"]["gate_decision"] == "pass"
    assert run["night"]["model_version"]


def test_bundle_keeps_the_exact_labels_and_mlflow_keys_decode_to_them(run):
    from pathlib import Path

    from edgeloop.config import load_settings
    from models.keys import label_from_key
    from models.registry import client

    bundle = Path(run["night"]["bundle"])
    labels = json.loads((bundle / "labels.json").read_text())
    assert sorted(labels if isinstance(labels, list) else labels.get("labels", labels)) == sorted(HOSTILE)
    settings = load_settings(overrides=run["config"], environ={})
    c = client(settings.tracking_uri())
    runs = c.search_runs([c.get_experiment_by_name(settings.mlflow.experiment).experiment_id],
                         "tags.mlflow.runName = 'evaluate'")
    keys = [k for k in runs[0].data.metrics if k.startswith("candidate.f1")]
    decoded = {label_from_key(k.split("f1", 1)[1][1:]) for k in keys}
    assert decoded == set(HOSTILE)
