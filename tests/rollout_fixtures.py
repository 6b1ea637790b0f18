"""A real MLflow registry (SQLite in tmp_path) holding tiny real edge models, for rollout tests.

The SQLite schema is created once per session and copied: MLflow's migrations cost seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeloop.config import Settings, load_settings
from edge_fixtures import LABELS, edge_model_dirs, signing_keys  # noqa: F401

_TEMPLATE: dict[str, Path] = {}
NAME = "edge-student"


def _template_db(root: Path) -> Path:
    if "db" not in _TEMPLATE:
        from models import registry

        db = root / "template.db"
        registry.client(f"sqlite:///{db}").search_experiments()  # runs the migrations
        _TEMPLATE["db"] = db
    return _TEMPLATE["db"]


@pytest.fixture()
def settings(tmp_path, tmp_path_factory, signing_keys) -> Settings:  # noqa: F811
    """Settings rooted in ``tmp_path/home`` with a fresh registry and the session's signing keys."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(_template_db(tmp_path_factory.mktemp("mlflow-template")), home / "mlflow.db")
    return load_settings(overrides={
        "home": str(home), "bundle": {"signing_key": str(signing_keys["private"]),
                                      "public_key": str(signing_keys["public"]),
                                      "canary_min_events": 10, "canary_min_acceptance_margin": 0.05}},
        environ={})


def register(settings: Settings, model_dir: Path, gate: str = "pass") -> str:
    """Log ``model_dir`` as a run's ``model/edge`` and register it with a gate decision tag."""
    from models import registry

    uri = settings.tracking_uri()
    exp = registry.ensure_experiment(uri, "edgeloop", settings.artifact_root())
    c = registry.client(uri)
    run = c.create_run(exp)
    c.log_artifacts(run.info.run_id, str(model_dir), "model/edge")
    c.set_terminated(run.info.run_id)
    tags = {"gate.decision": gate, "gate.reason": "all checks passed" if gate == "pass" else "accuracy_floor 0.5 < 0.85",
            "meta.metrics": str({"accuracy": 0.9}), "meta.teacher_version": "1", "meta.split_hash": "abc",
            "meta.backend": "onnx-fp32"}
    return registry.register_version(uri, NAME, run.info.run_id, "model", tags=tags)


def aliases(settings: Settings) -> tuple[str | None, str | None]:
    from models import registry

    uri = settings.tracking_uri()
    return (registry.alias_version(uri, NAME, registry.CHAMPION),
            registry.alias_version(uri, NAME, registry.PREVIOUS_CHAMPION))


def channels(settings: Settings) -> dict[str, str | None]:
    from models.bundle import read_channel

    return {ch: (read_channel(settings.bundles_root(), ch) or {}).get("model_version") for ch in ("canary", "stable")}


@pytest.fixture()
def store(settings):  # noqa: F811
    """The student store of ``settings``: what rollout functions take."""
    from models.stores import StudentStore

    return StudentStore.from_settings(settings)
