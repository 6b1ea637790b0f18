"""Process setup that must happen before Prefect, MLflow or transformers are imported.

Called explicitly by the entry points (CLI, tests, deployments); importing it does nothing.
"""

from __future__ import annotations

import logging
import os
import warnings

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
    # Library loggers (logging.getLogger(__name__)) also reach the Prefect run logs and the UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "models,data_contracts,edgeloop,flows,tasks",
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
    library_log_levels()


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

