"""Prefect tasks of the teacher bootstrap."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from edgeloop.config import Settings
from models import tracking
from models.teacher import base_model_path
from tasks.common import SplitRef, experiment, task


@task(name="fine-tune-teacher")
def fine_tune(settings: Settings, data: SplitRef) -> dict:
    """Fine-tune on the seed and evaluate on golden, in an MLflow run; returns the run and metrics.

    The flow's first MLflow step: it points MLflow's fluent API at the configured server.
    """
    import mlflow

    from models.mlflow_models import save_teacher
    from models.teacher_store import bootstrap_teacher

    out = settings.home_path() / "work" / "teacher"
    logger = get_run_logger()
    tracking.activate(settings.tracking_uri())
    with mlflow.start_run(experiment_id=experiment(settings).experiment_id(), run_name="teacher-bootstrap",
                          tags={"edgeloop.flow": "teacher-bootstrap", "split_hash": data.split_hash}) as run:
        mlflow.log_params({f"teacher.{k}": v for k, v in settings.teacher.model_dump().items()})
        mlflow.log_params({"dataset": settings.dataset.name, "split_hash": data.split_hash,
                           "base_model": str(base_model_path(settings.teacher))})

        def on_epoch(e):
            logger.info("teacher %s", e.line(settings.teacher.epochs))
            mlflow.log_metric("loss", e.loss, step=e.epoch)

        info, result = bootstrap_teacher(settings.teacher, data.load(), out, seed=settings.dataset.split_seed,
                                         latency_runs=settings.evaluation.teacher_latency_runs,
                                         threads=settings.torch_threads, on_epoch=on_epoch)
        tracking.log_eval("golden.", result)
        tracking.log_eval_artifacts({"teacher": result})
        with tempfile.TemporaryDirectory() as tmp:  # the MLflow model a reviewer loads with mlflow.pyfunc
            mlflow.log_artifacts(str(save_teacher(out / "model", Path(tmp) / "model", settings.teacher.max_length)),
                                 "model")
    logger.info("teacher golden accuracy %.4f, macro-F1 %.4f on %d rows", result.accuracy, result.macro_f1, result.n)
    return {"run_id": run.info.run_id, "accuracy": result.accuracy, "macro_f1": result.macro_f1,
            "n_train": info["n_train"], "split_hash": data.split_hash,
            "base_model": str(base_model_path(settings.teacher))}


@task(name="register-teacher", retries=2, retry_delay_seconds=5)
def register_teacher(settings: Settings, trained: dict, promote: bool) -> dict:
    """Register the run's model as a new teacher version, its card as the description; alias it
    ``production`` if asked."""
    from models.registration import register_teacher as register

    name = settings.teacher.registered_name
    version = register(settings.tracking_uri(), name, trained["run_id"], trained,
                       settings.teacher.alias if promote else None)
    create_table_artifact(key="teacher", table=[{**trained, "version": version, "promoted": promote}])
    get_run_logger().info("registered %s v%s%s", name, version, f" as @{settings.teacher.alias}" if promote else "")
    return {**trained, "version": version, "name": name}
