"""MLflow logging for a night: a parent run, nested step runs, evaluation artifacts."""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from models import registry
from models.evaluate import EvalResult, confusion_png, per_intent_table


@dataclass(frozen=True)
class Experiment:
    """Where a flow's runs go: the tracking server, the experiment, its artifact root."""

    tracking_uri: str
    name: str
    artifact_root: str

    @classmethod
    def from_settings(cls, settings) -> "Experiment":
        """From :class:`edgeloop.config.Settings` (its ``mlflow`` section and derived locations)."""
        return cls(settings.tracking_uri(), settings.mlflow.experiment, settings.artifact_root())

    def experiment_id(self) -> str:
        return registry.ensure_experiment(self.tracking_uri, self.name, self.artifact_root)


def activate(tracking_uri: str) -> None:
    """Make ``tracking_uri`` the process's MLflow default for the fluent API (``mlflow.start_run``).

    Called once at the start of a flow run (its first task); :func:`registry.client` never
    changes it.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def _check_active(tracking_uri: str) -> None:
    import mlflow

    if mlflow.get_tracking_uri() != tracking_uri:
        raise RuntimeError(f"MLflow's fluent API points at {mlflow.get_tracking_uri()}, not {tracking_uri}: "
                           "call models.tracking.activate() at the start of the flow run")


def start_parent_run(exp: Experiment, run_name: str, tags: dict[str, str], params: dict[str, object]) -> str:
    """Create (not enter) the parent run of a flow, with ``params`` logged; returns its id."""
    c = registry.client(exp.tracking_uri)
    run = c.create_run(exp.experiment_id(), run_name=run_name, tags=tags)
    for k, v in params.items():
        c.log_param(run.info.run_id, k, str(v)[:500])
    return run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    registry.client(tracking_uri).set_terminated(run_id, status=status)


@contextmanager
def step_run(exp: Experiment, parent_run_id: str, name: str):
    """Enter a run nested under ``parent_run_id`` (works from any thread or process).

    Needs :func:`activate` first: the step's metrics are logged with mlflow's fluent API.
    """
    import mlflow

    _check_active(exp.tracking_uri)
    with mlflow.start_run(experiment_id=exp.experiment_id(), run_name=name, parent_run_id=parent_run_id,
                          nested=True) as run:
        yield run


def log_eval(prefix: str, result: EvalResult) -> None:
    """Metrics for one model, within the active run."""
    import mlflow

    # Only the metric's own "f1." becomes "f1_": the label key after it is kept as models.keys wrote it.
    mlflow.log_metrics({(f"{prefix}f1_{k[len(prefix) + 3:]}" if k.startswith(f"{prefix}f1.") else k): v
                        for k, v in result.metrics(prefix).items()})


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
