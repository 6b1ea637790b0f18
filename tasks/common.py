"""What every flow's tasks share: the task decorator, the flow's data set split, its MLflow experiment."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import prefect
from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from data_contracts.datasets import Split, load_split
from edgeloop.config import DatasetConfig, Settings
from models import tracking

# Inputs here are settings, paths, references and results, not cache keys: nothing is cached by input.
task = partial(prefect.task, cache_policy=NO_CACHE)


@dataclass(frozen=True)
class SplitRef:
    """A flow's data set split, by reference: small enough to pass to every task.

    :meth:`load` gives the frames (read once per process and data set configuration).
    """

    dataset: DatasetConfig
    split_hash: str
    labels: tuple[str, ...]

    def load(self) -> Split:
        split = load_split(self.dataset)
        if split.split_hash != self.split_hash:
            raise RuntimeError(f"data set {self.dataset.name} changed during the flow run: split "
                               f"{split.split_hash}, expected {self.split_hash}")
        return split


@task(name="load-split", retries=2, retry_delay_seconds=[2, 10])
def load_data(settings: Settings) -> SplitRef:
    """Read and split the configured data set, once per flow run; returns the reference to it."""
    split = load_split(settings.dataset)
    get_run_logger().info("data set %s: split %s, %d seed / %d stream / %d golden rows, %d labels",
                          settings.dataset.name, split.split_hash, len(split.seed), len(split.stream),
                          len(split.golden), len(split.labels))
    return SplitRef(settings.dataset, split.split_hash, tuple(split.labels))


def work_dir(settings: Settings, night: str) -> Path:
    """The night's work folder under the home (candidate, reports, contracts)."""
    return settings.home_path() / "work" / night


def experiment(settings: Settings) -> tracking.Experiment:
    """The MLflow experiment of a flow's runs."""
    return tracking.Experiment.from_settings(settings)
