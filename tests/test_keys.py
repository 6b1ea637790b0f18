"""Any label string survives the trip through MLflow keys."""

from __future__ import annotations

import re

import pytest

from models.keys import label_from_key, label_key

HOSTILE = ["reverted_card_payment?", "billing / invoices", "R&D", "réclamation", "Refund", "refund",
           "a:3F", "a?", "emoji 📦", "tab\there", "..", "100%", "clé/valeur:x", "暗号"]
MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_\-. :/]+$")


@pytest.mark.parametrize("label", HOSTILE)
def test_round_trip_and_mlflow_safe(label):
    key = label_key(label)
    assert MLFLOW_KEY.match(key) and "/" not in key
    assert label_from_key(key) == label


def test_distinct_labels_get_distinct_keys():
    assert len({label_key(x) for x in HOSTILE}) == len(HOSTILE)
    assert label_key("track_order") == "track_order"  # plain labels read as themselves


def test_keys_are_accepted_by_mlflow(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    exp = client.create_experiment("keys", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(exp)
    for i, label in enumerate(HOSTILE):
        client.log_metric(run.info.run_id, f"f1.{label_key(label)}", i / 100)
        client.set_tag(run.info.run_id, f"intent.{label_key(label)}", label)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert {label_from_key(k[3:]) for k in metrics} == set(HOSTILE)
