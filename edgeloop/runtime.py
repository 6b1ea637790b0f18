"""Process setup that must happen before Prefect, MLflow or transformers are imported.

Called explicitly by the entry points (CLI, tests, deployments); importing it does nothing.
"""

from __future__ import annotations

import logging
import os
import urllib.request
import warnings
from pathlib import Path

from edgeloop.config import ConfigError, Settings

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
    # Library loggers (logging.getLogger(__name__)) also reach the Prefect run logs and the UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "models,data_contracts,edgeloop,flows,tasks",
}


# Either name sets Prefect's database; one set by the user wins over ours.
PREFECT_DB_KEYS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def prefect_database_url(home: Path) -> str:
    """The one Prefect database of ``home``: the ephemeral API and ``make up``'s server share it
    (scripts/env.sh sets the same URL), so runs from the CLI show in the UI."""
    return f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}"


def prepare_process(settings: Settings) -> Settings:
    """Set offline/telemetry env defaults, this home's Prefect database, and attach to ``make up``'s
    stack when it runs; returns the settings to use from here on.

    When scripts/up.sh's Prefect server answers (``<home>/run/prefect-server.url``), runs go through
    it (``PREFECT_API_URL``) instead of an ephemeral API; when its MLflow server answers and
    ``mlflow.tracking_uri`` is not set, they track to it. Without the stack, a home whose MLflow
    lives on PostgreSQL or elsewhere (``make up DB=postgres``) raises :class:`ConfigError` rather
    than start a second registry in sqlite. Call before Prefect is imported.
    """
    home = settings.home_path()
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    if not any(os.environ.get(k) for k in PREFECT_DB_KEYS):
        os.environ[PREFECT_DB_KEYS[0]] = prefect_database_url(home)
    if not os.environ.get("PREFECT_API_URL") and (url := stack_url(home, "prefect-server", "/health")):
        os.environ["PREFECT_API_URL"] = url
    settings = attach_mlflow(settings)
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri())
    os.environ["EDGELOOP_HOME"] = str(home)
    quiet_libraries()
    library_log_levels()
    return settings


def stack_url(home: Path, name: str, health: str) -> str | None:
    """The URL of the stack part ``name`` (prefect-server, mlflow) when scripts/up.sh started it,
    its process lives and ``<url><health>`` answers 200 within 2 s; otherwise None."""
    run = home / "run"
    try:
        url = (run / f"{name}.url").read_text().strip()
        pid = int((run / f"{name}.pid").read_text().strip())
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        pass
    except (OSError, ValueError):
        return None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(url.rstrip("/") + health, timeout=2) as response:
            return url if response.status == 200 else None
    except (OSError, ValueError):
        return None


def attach_mlflow(settings: Settings) -> Settings:
    """Track to the stack's MLflow server while it runs, unless ``mlflow.tracking_uri`` is set."""
    if settings.mlflow.tracking_uri:
        return settings
    home = settings.home_path()
    url = stack_url(home, "mlflow", "/health")
    if url:
        return settings.model_copy(update={"mlflow": settings.mlflow.model_copy(update={"tracking_uri": url})})
    backend_file = home / "mlflow-backend"  # written by scripts/up.sh
    backend = backend_file.read_text().strip() if backend_file.exists() else "sqlite"
    if backend != "sqlite":
        raise ConfigError(f"MLflow of {home} is on {backend} (see {backend_file}), and make up's MLflow server "
                          "is not running: start it with `make up`, or set mlflow.tracking_uri "
                          "(EDGELOOP__MLFLOW__TRACKING_URI)")
    return settings


def quiet_libraries() -> None:
    """Keep library chatter (load reports, deprecation notes) out of the night's log."""
    # ONNX export and quantization silence their own tracer/quantizer notes (models/quantize.py).
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # the edge runtime has no transformers
        pass


def task_runner(settings: Settings):
    """The task runner that fans out relabeling: Prefect's thread pool, or Dask when configured.

    ``runner: dask`` with ``dask_address`` connects to that scheduler; without one, a temporary
    ``LocalCluster`` of ``dask_workers`` single-threaded worker processes lives as long as the run.
    """
    if settings.runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1,
                                         "processes": True, "dashboard_address": None})


def library_log_levels() -> None:
    """Our library loggers log at INFO (Prefect's root config is WARNING), so they show in run logs."""
    for name in OFFLINE_ENV["PREFECT_LOGGING_EXTRA_LOGGERS"].split(","):
        logging.getLogger(name).setLevel(logging.INFO)

