"""Relabel fan-out: the shards of a night's new messages, on Prefect's threads or on Dask."""

from __future__ import annotations

from prefect import flow, unmapped

from data_contracts.lake import Lake
from edgeloop.config import Settings
from edgeloop.runtime import task_runner
from models.teacher_store import TeacherRef
from tasks import night as t


@flow(name="relabel", log_prints=True)
def relabel(settings: Settings, ref: TeacherRef, expected: int) -> list[dict]:
    """Label every message this teacher has not labeled, one task per shard; returns each shard's
    contract accounting. It plans its own shards (the night's plan, recomputed: the night holds the
    lake alone) because flow parameters are stored by the Prefect API, which refuses ones over
    512 KB: 100k message ids are 3.5 MB. ``expected`` is the number of ids the night planned."""
    lake = Lake(settings.lake_root())  # this flow's own: its parameters travel as JSON
    shards = t.plan_relabel(settings.teacher, lake, ref)
    if sum(map(len, shards)) != expected:
        raise RuntimeError(f"relabel subflow planned {sum(map(len, shards))} messages, the night planned "
                           f"{expected}: did another process write to the lake during the night?")
    return t.relabel_shard.map(cfg=unmapped(settings.teacher), lake=unmapped(lake), ref=unmapped(ref),
                               ids=shards).result()


def relabel_all(settings: Settings, lake: Lake, ref: TeacherRef, shards: list[list[str]]) -> list[dict]:
    """Run the shards on the night's own runner (``runner: thread``) or in a Dask subflow (``runner: dask``)."""
    # transformers resolves its names lazily and that is not thread-safe: two shards importing it
    # at once can fail with "cannot import name AutoModelForSequenceClassification" (seen on the worker).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401

    if settings.runner == "thread" or not shards:
        return t.relabel_shard.map(cfg=unmapped(settings.teacher), lake=unmapped(lake), ref=unmapped(ref),
                                   ids=shards).result()
    return relabel.with_options(task_runner=task_runner(settings))(settings=settings, ref=ref,
                                                                   expected=sum(map(len, shards)))
