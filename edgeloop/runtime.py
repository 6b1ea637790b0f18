"""Process setup that must happen before Prefect, MLflow or transformers are imported.

Called explicitly by the entry points (CLI, tests, deployments); importing it does nothing.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from edgeloop.config import Settings

OFFLINE_ENV = {
    # No hub downloads: models and data come from the repo and installed packages.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # No telemetry: the box is offline, and failed calls would litter every log with errors.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def prepare_process(settings: Settings) -> None:
    """Set offline/telemetry env defaults, a project-local ``PREFECT_HOME`` and the MLflow URI."""
    home = settings.home_path()
    home.mkdir(parents=True, exist_ok=True)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri())
    os.environ["EDGELOOP_HOME"] = str(home)
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep library chatter (load reports, deprecation notes) out of the night's log."""
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    for name in ("root",):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TracerWarning.*")
    warnings.filterwarnings("ignore", module="torch.onnx")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # the edge runtime has no transformers
        pass


def work_dir(settings: Settings, *parts: str) -> Path:
    """A folder under the home, created on demand."""
    p = settings.home_path().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
