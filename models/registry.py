"""MLflow tracking and registry helpers: runs, model versions, aliases, promotion history.

A version's source is an MLflow model folder (:mod:`models.mlflow_models`: a models-from-code
pyfunc whose files, safetensors, ONNX and JSON, are its artifacts; never pickle), registered with
``create_model_version(source=<artifact uri>)``. Versions logged before as a plain folder of files
still download. The promotion history is a local JSON-lines file and, when the tracking URI is
given, ``promotion.<n>`` tags on the versions it moved to, so another machine reads it too.
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
FILES_KEY = "edgeloop.files"  # MLmodel metadata: the model folder's subfolder that holds its files
HISTORY_TAG = "promotion."  # version tag prefix: promotion.<seq> = one history entry (JSON)
HISTORY_DESCRIPTION_ENTRIES = 10  # the registered model's description lists the last entries


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
    """Download a model version into ``dst``; returns the folder holding its files (:func:`model_files`)."""
    import mlflow

    c = client(tracking_uri)
    source = c.get_model_version(name, version).source
    Path(dst).mkdir(parents=True, exist_ok=True)
    return model_files(Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                               tracking_uri=tracking_uri, registry_uri=tracking_uri)))


def model_files(folder: Path) -> Path:
    """The folder of a downloaded version that holds its files (``edge/`` and ``student/``, or the
    teacher's safetensors): the one its MLmodel names, or ``folder`` itself for a plain folder."""
    mlmodel = Path(folder) / "MLmodel"
    if not mlmodel.is_file():
        return Path(folder)
    from mlflow.models import Model

    rel = (Model.load(str(mlmodel)).metadata or {}).get(FILES_KEY)
    if not rel:
        raise ValueError(f"{mlmodel} has no metadata '{FILES_KEY}': not a model edgeloop registered")
    return Path(folder) / rel


def downloaded_files(dst: Path, artifact_path: str = "model") -> Path | None:
    """:func:`model_files` of a version :func:`download_version` left in ``dst`` (None when absent);
    ``artifact_path``: what the version was registered from (its folder's name once downloaded)."""
    folder = Path(dst) / artifact_path
    return model_files(folder) if folder.is_dir() else None


def set_version_tags(tracking_uri: str, name: str, version: str, tags: dict[str, object]) -> None:
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))


def history_path(home: Path, name: str) -> Path:
    return home / "registry" / f"{name}-promotions.jsonl"


def read_history(home: Path, name: str, tracking_uri: str | None = None) -> list[dict]:
    """The promotion history of ``name``, oldest first.

    With ``tracking_uri``, the registry's entries (``promotion.<n>`` version tags), plus any entry
    of the local file the registry lacks (one written without the URI), in time order; a machine
    with an empty ``home`` reads the whole history from the registry. Without it, the local file.
    """
    p = history_path(home, name)
    local = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
    if tracking_uri is None:
        return local
    remote = [entry for _, entry in sorted(_registry_history(tracking_uri, name), key=lambda x: x[0])]
    seen = {_entry_key(e) for e in remote}
    merged = remote + [e for e in local if _entry_key(e) not in seen]
    return sorted(merged, key=lambda e: str(e.get("at", "")))  # stable: the registry's order within a second


def _entry_key(entry: dict) -> str:
    return json.dumps(entry, sort_keys=True)


def _registry_history(tracking_uri: str, name: str) -> list[tuple[int, dict]]:
    """(sequence number, entry) of every ``promotion.<n>`` tag on the versions of ``name``."""
    out = []
    for mv in client(tracking_uri).search_model_versions(f"name='{name}'"):
        for key, value in mv.tags.items():
            if key.startswith(HISTORY_TAG) and key[len(HISTORY_TAG):].isdigit():
                out.append((int(key[len(HISTORY_TAG):]), json.loads(value)))
    return out


def move_champion(tracking_uri: str, home: Path, name: str, version: str, *, why: str, by: str,
                  action: str = "promote", **extra: object) -> dict:
    """Point ``champion`` at ``version`` (the old one becomes ``previous_champion``) and record it.

    ``champion`` moves in one registry call, last: a crash before it leaves the old champion
    serving. The entry is appended to the durable history (file and registry) only once the
    alias has moved; ``extra`` fields (e.g. an override of a failed gate) are recorded in it.
    """
    c = client(tracking_uri)
    old = alias_version(tracking_uri, name, CHAMPION)
    if old and old != str(version):
        c.set_registered_model_alias(name, PREVIOUS_CHAMPION, old)
    c.set_registered_model_alias(name, CHAMPION, str(version))
    return append_history(home, name, action=action, from_version=old, to_version=str(version), why=why, by=by,
                          tracking_uri=tracking_uri, **extra)


def append_history(home: Path, name: str, *, action: str, from_version: str | None, to_version: str,
                   why: str, by: str, tracking_uri: str | None = None, **extra: object) -> dict:
    """Append one entry to the promotion history and return it.

    The local file is written first (fsynced); with ``tracking_uri`` the entry is then tagged
    ``promotion.<n>`` on ``to_version`` (n: one more than any entry in the registry) and the
    registered model's description lists the last entries, for the MLflow UI.
    """
    entry = {"model": name, "action": action, "from": from_version, "to": str(to_version), "why": why,
             "by": by, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    path = history_path(home, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if tracking_uri is not None:
        _record_in_registry(tracking_uri, name, entry)
    return entry


def _record_in_registry(tracking_uri: str, name: str, entry: dict) -> None:
    # Two machines appending at the same moment may pick the same n; on different versions both
    # entries survive (read_history orders them by time), so only a same-version race loses one.
    known = _registry_history(tracking_uri, name)
    seq = max((n for n, _ in known), default=0) + 1
    c = client(tracking_uri)
    c.set_model_version_tag(name, entry["to"], f"{HISTORY_TAG}{seq:04d}", json.dumps(entry))
    from models.card import history_lines

    last = [e for _, e in sorted(known, key=lambda x: x[0])][-(HISTORY_DESCRIPTION_ENTRIES - 1):] + [entry]
    c.update_registered_model(name, description="\n".join(
        [f"Promotion history of `{name}`, last {len(last)} of {seq} (every entry: the `{HISTORY_TAG}<n>` tags "
         "of the versions; `edgeloop history`):", ""] + history_lines(last))[:5000])


def version_tags(tracking_uri: str, name: str, version: str) -> dict[str, str]:
    """Tags of one model version (raises MlflowException when the version does not exist)."""
    return dict(client(tracking_uri).get_model_version(name, str(version)).tags)


def list_versions(tracking_uri: str, name: str) -> list[str]:
    """Every registered version of ``name`` (empty when the model is not registered yet)."""
    found = client(tracking_uri).search_model_versions(f"name='{name}'")
    return sorted((str(mv.version) for mv in found), key=int)
