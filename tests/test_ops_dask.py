"""Scale-out: the relabel fan-out on a Dask LocalCluster gives the labels the default runner gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LABELS = ["cancel_order", "track_order", "get_refund"]
TEXTS = [f"{verb} my order {n}" for n in range(12) for verb in ("cancel", "where is", "refund")]


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect API for these flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A MiniLM classifier with a fixed random head, saved so every worker loads the same weights."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.teacher import base_model_path
    from edgeloop.config import TeacherConfig

    base = base_model_path(TeacherConfig())
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    folder = tmp_path_factory.mktemp("teacher") / "model"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def _labels_with(runner: str, home, teacher_folder) -> pd.DataFrame:
    from data_contracts.datasets import message_id
    from data_contracts.lake import Lake
    from edgeloop.config import load_settings
    from flows.relabel import relabel_all
    from models.relabel import pending_shards
    from models.teacher_store import TeacherRef
    from prefect import flow

    settings = load_settings(overrides={"home": str(home), "runner": runner, "dask_workers": 2,
                                        "teacher": {"relabel_shards": 3, "relabel_batch_size": 8}}, environ={})
    lake = Lake(settings.home_path() / "lake")
    lake.append_messages(pd.DataFrame({"message_id": [message_id(t) for t in TEXTS], "text": TEXTS}), "stream")
    ref = TeacherRef("1", str(teacher_folder))

    @flow(name="relabel-test")
    def relabel_test() -> list[dict]:
        return relabel_all(settings, lake, ref, pending_shards(lake, ref, settings.teacher.relabel_shards))

    accounting = relabel_test()
    assert sum(a["rows_accepted"] for a in accounting) == len(TEXTS)
    assert pending_shards(lake, ref, 3) == []  # everything labeled
    return lake.labels(ref.cache_key).sort_values("message_id").reset_index(drop=True)


def test_dask_relabel_matches_default_runner(tmp_path, tiny_teacher, prefect_api):
    threads = _labels_with("thread", tmp_path / "threads", tiny_teacher)
    dask = _labels_with("dask", tmp_path / "dask", tiny_teacher)
    assert threads["message_id"].tolist() == dask["message_id"].tolist()
    assert threads["label"].tolist() == dask["label"].tolist()
    np.testing.assert_allclose(np.stack(threads["probs"]), np.stack(dask["probs"]), atol=1e-5)


def test_task_runner_choice():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from edgeloop.config import load_settings
    from edgeloop.runtime import task_runner

    assert isinstance(task_runner(load_settings(environ={})), ThreadPoolTaskRunner)
    remote = task_runner(load_settings(overrides={"runner": "dask", "dask_address": "tcp://10.0.0.5:8786"}, environ={}))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    env = load_settings(environ={"EDGELOOP__RUNNER": "dask", "EDGELOOP__DASK_WORKERS": "3"})
    assert (env.runner, env.dask_workers) == ("dask", 3)
