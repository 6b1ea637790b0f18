"""MLflow tracking and registry helpers: runs, model versions, aliases, promotion history.

Models are logged as plain artifact folders (safetensors, ONNX, JSON: never pickle) and
registered with ``create_model_version(source=<artifact uri>)``; the loaders in ``models/``
rebuild them from what was saved.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

CHAMPION = "champion"
CANDIDATE = "candidate"
PREVIOUS_CHAMPION = "previous_champion"


@lru_cache(maxsize=8)
def client(tracking_uri: str):
    """The MlflowClient of ``tracking_uri`` (its registry too), one per URI and process.

    It leaves the process-wide MLflow URI alone: code that uses mlflow's fluent API
    (``mlflow.start_run``) sets that once, explicitly, with :func:`models.tracking.activate`.
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str) -> str:
    """Id of experiment ``name``, created with ``artifact_root`` if missing."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=f"{artifact_root.rstrip('/')}/{name}")
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def register_version(tracking_uri: str, name: str, run_id: str, artifact_path: str,
                     tags: dict[str, str] | None = None, description: str = "") -> str:
    """Register ``runs:/run_id/artifact_path`` as a new version of ``name``; returns the version."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = c.create_model_version(name, source=source, run_id=run_id,
                                tags={k: str(v) for k, v in (tags or {}).items()}, description=description)
    return str(mv.version)


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version that ``alias`` points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def download_version(tracking_uri: str, name: str, version: str, dst: str | Path) -> Path:
    """Download a model version's artifact folder to ``dst`` (returns the local folder)."""
    import mlflow

    c = client(tracking_uri)
    source = c.get_model_version(name, version).source
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                    tracking_uri=tracking_uri, registry_uri=tracking_uri))


def set_version_tags(tracking_uri: str, name: str, version: str, tags: dict[str, object]) -> None:
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def history_path(home: Path, name: str) -> Path:
    return home / "registry" / f"{name}-promotions.jsonl"


def read_history(home: Path, name: str) -> list[dict]:
    p = history_path(home, name)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def move_champion(tracking_uri: str, home: Path, name: str, version: str, *, why: str, by: str,
                  action: str = "promote", **extra: object) -> dict:
    """Point ``champion`` at ``version`` (the old one becomes ``previous_champion``) and record it.

    ``champion`` moves in one registry call, last: a crash before it leaves the old champion
    serving. The entry is appended to the durable history only once the alias has moved;
    ``extra`` fields (e.g. an override of a failed gate) are recorded in it.
    """
    c = client(tracking_uri)
    old = alias_version(tracking_uri, name, CHAMPION)
    if old and old != str(version):
        c.set_registered_model_alias(name, PREVIOUS_CHAMPION, old)
    c.set_registered_model_alias(name, CHAMPION, str(version))
    return append_history(home, name, action=action, from_version=old, to_version=str(version), why=why, by=by,
                          **extra)


def append_history(home: Path, name: str, *, action: str, from_version: str | None, to_version: str,
                   why: str, by: str, **extra: object) -> dict:
    """Append one durable (fsynced) entry to the promotion history and return it."""
    entry = {"model": name, "action": action, "from": from_version, "to": str(to_version), "why": why,
             "by": by, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    path = history_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """Tags of one model version (raises MlflowException when the version does not exist)."""
    return dict(client(tracking_uri).get_model_version(name, str(version)).tags)


def list_versions(tracking_uri: str, name: str) -> list[str]:
    """Every registered version of ``name`` (empty when the model is not registered yet)."""
    found = client(tracking_uri).search_model_versions(f"name='{name}'")
    return sorted((str(mv.version) for mv in found), key=int)
