"""MLflow logging for a night: a parent run, nested step runs, evaluation artifacts."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgeloop.config import Settings
from models import registry
from models.evaluate import EvalResult, confusion_png, per_intent_table


def start_parent_run(settings: Settings, run_name: str, tags: dict[str, str]) -> str:
    """Create (not enter) the parent run of a flow; returns its id."""
    c = registry.client(settings.tracking_uri())
    exp = registry.ensure_experiment(settings.tracking_uri(), settings.mlflow.experiment, settings.artifact_root())
    run = c.create_run(exp, run_name=run_name, tags=tags)
    params = {k: str(v)[:500] for k, v in settings.to_flat_params().items()}
    for k, v in params.items():
        c.log_param(run.info.run_id, k, v)
    return run.info.run_id


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    registry.client(settings.tracking_uri()).set_terminated(run_id, status=status)


@contextmanager
def step_run(settings: Settings, parent_run_id: str, name: str):
    """Enter a run nested under ``parent_run_id`` (works from any thread or process)."""
    import mlflow

    registry.client(settings.tracking_uri())
    exp = registry.ensure_experiment(settings.tracking_uri(), settings.mlflow.experiment, settings.artifact_root())
    with mlflow.start_run(experiment_id=exp, run_name=name, parent_run_id=parent_run_id, nested=True) as run:
        yield run


def log_eval(prefix: str, result: EvalResult) -> None:
    """Metrics for one model, within the active run."""
    import mlflow

    mlflow.log_metrics({k.replace("f1.", "f1_"): v for k, v in result.metrics(prefix).items()})


def log_eval_artifacts(results: dict[str, EvalResult]) -> None:
    """Confusion-matrix PNGs, the per-intent table and full results, within the active run."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        for name, res in results.items():
            confusion_png(res, Path(tmp) / f"confusion_{name}.png", name)
            (Path(tmp) / f"eval_{name}.json").write_text(json.dumps(res.to_dict(), indent=2))
        mlflow.log_artifacts(tmp, artifact_path="evaluation")
    rows = per_intent_table(results)
    mlflow.log_table(data={k: [row[k] for row in rows] for k in rows[0]}, artifact_file="evaluation/per_intent.json")
