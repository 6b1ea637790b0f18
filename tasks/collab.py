"""The night's end-cloud collaboration task: a thin wrapper over :mod:`models.collab_night`."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from data_contracts.lake import Lake
from edgeloop.config import Settings
from models import tracking
from models.stores import StudentStore, champion_folder
from models.teacher_store import TeacherRef
from tasks.common import SplitRef, experiment, task


@task(name="collab-policy")
def choose_policy(settings: Settings, lake: Lake, store: StudentStore, data: SplitRef, ref: TeacherRef,
                  candidate: dict, parent_run_id: str):
    """Calibrate the candidate on the calibration slice, choose its deferral threshold and
    out-of-scope cut, measure the champion's coverage; logged to MLflow (a nested ``collab`` run,
    and the policy as ``policy.*`` tags of the night's run). Returns the
    :class:`models.collab_night.CollabNight`."""
    from edge.collab import CollabPolicy
    from models import registry
    from models.collab_night import collab_step
    from models.evaluate import golden_texts
    from models.registration import collab_block

    version, folder = champion_folder(store)
    champion = None
    if folder is not None:  # its own shipped policy (temperature); none on versions made before this step
        block = collab_block(registry.version_tags(store.tracking_uri, store.name, version))
        champion = (version, folder / "edge", CollabPolicy.from_dict(block) if block else None)
    result = collab_step(settings.collab, lake, ref.cache_key, golden_texts(data.load()),
                         Path(candidate["folder"]) / "edge", champion)
    policy = result.policy.to_dict()
    with tracking.step_run(experiment(settings), parent_run_id, "collab"):
        import mlflow

        mlflow.log_metrics(result.metrics())
        mlflow.log_params({f"policy.{k}": v for k, v in policy.items()})
        mlflow.log_dict(result.to_dict(), "collab/collab.json")
    # Tags, not params, on the night's run: a retried task may log them again.
    registry.client(settings.tracking_uri()).log_batch(parent_run_id, tags=[
        _tag("collab.policy", json.dumps(policy, sort_keys=True)),
        *(_tag(f"policy.{k}", str(v)) for k, v in policy.items())])
    logger = get_run_logger()
    for line in result.card_lines()[3:]:
        logger.info("collab %s", line[2:])
    create_table_artifact(key="collab", table=[{"figure": k, "value": round(v, 4)} for k, v in result.metrics().items()],
                          description="End-cloud collaboration: calibration, deferral, out of scope")
    return result


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)
