"""Shared test setup: an offline, project-local environment before Prefect or MLflow load."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="edgeloop-tests-"))
for key, value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
}.items():
    os.environ.setdefault(key, value)
# Tests never read a user's settings or an outer EDGELOOP_HOME.
for key in [k for k in os.environ if k.startswith("EDGELOOP__")] + ["EDGELOOP_CONFIG", "EDGELOOP_HOME"]:
    os.environ.pop(key, None)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test API for the session (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
