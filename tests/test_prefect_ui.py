"""Every run in the Prefect UI: `edgeloop` without a server and `make up`'s Prefect server share one
database per EDGELOOP_HOME, and while that server runs the CLI runs through it.

The nights here find the night lock held (by this test) and are skipped: real `nightly` flow runs
through the CLI that finish in seconds, which is all the Prefect bookkeeping needs."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeloop.config import ConfigError, load_settings
from edgeloop.runtime import attach_mlflow, prefect_database_url, stack_url

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stack_url_needs_a_live_process_and_a_healthy_answer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert stack_url(tmp_path, "prefect-server", "/health") is None  # no files
    (run / "prefect-server.url").write_text(f"http://127.0.0.1:{_free_port()}/api\n")
    (run / "prefect-server.pid").write_text(str(os.getpid()))
    assert stack_url(tmp_path, "prefect-server", "/health") is None  # alive, but nothing answers
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "prefect-server.pid").write_text(str(dead.pid))
    assert stack_url(tmp_path, "prefect-server", "/health") is None


def test_a_home_on_postgres_refuses_to_track_to_sqlite_without_the_stack(tmp_path):
    settings = load_settings(overrides={"home": str(tmp_path)}, environ={})
    assert attach_mlflow(settings) is settings  # no stack, sqlite home: unchanged
    (tmp_path / "mlflow-backend").write_text("postgres\n")
    with pytest.raises(ConfigError, match=r"make up.*EDGELOOP__MLFLOW__TRACKING_URI"):
        attach_mlflow(settings)
    explicit = load_settings(overrides={"home": str(tmp_path), "mlflow": {"tracking_uri": "http://mlflow.internal"}},
                             environ={})
    assert attach_mlflow(explicit).tracking_uri() == "http://mlflow.internal"


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP", "PREFECT_", "MLFLOW_"))}
    return {**env, "EDGELOOP_HOME": str(home), "PREFECT_PORT": str(_free_port()), "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _night(env: dict, night: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "night", "--night", night], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=150, start_new_session=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "night skipped" in out, out[-3000:]
    return out


def _nightly_runs(api: str) -> dict[str, str]:
    import httpx

    r = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["nightly"]}}}, timeout=30)
    r.raise_for_status()
    return {run["parameters"]["night"]: run["state_type"] for run in r.json()}


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_cli_nights_show_in_the_prefect_ui(tmp_path):
    home = tmp_path / "home"
    env = _env(home)
    api = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
    (home / "run").mkdir(parents=True)
    lock = (home / "run" / "night.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # every night here is skipped at once

    t0 = time.monotonic()
    alone = _night(env, "2026-11-01")  # no server: Prefect's ephemeral API, on this home's database
    assert "Starting temporary server" in alone
    assert (home / "prefect" / "prefect.db").exists()
    t1 = time.monotonic()
    up = subprocess.run(["scripts/up.sh", "prefect"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    t2 = time.monotonic()
    pid = int((home / "run" / "prefect-server.pid").read_text())
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert prefect_database_url(home) in up.stdout
        assert _nightly_runs(api) == {"2026-11-01": "COMPLETED"}  # `make nightly`, then `make up`: it is there

        attached = _night(env, "2026-11-02")  # the server is up: the CLI runs through it
        assert "Starting temporary server" not in attached
        assert _nightly_runs(api) == {"2026-11-01": "COMPLETED", "2026-11-02": "COMPLETED"}
        t3 = time.monotonic()
        print(f"ephemeral night {t1 - t0:.1f}s, up prefect {t2 - t1:.1f}s, attached night {t3 - t2:.1f}s")
    finally:
        down = subprocess.run(["scripts/down.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        try:
            os.killpg(pid, signal.SIGKILL)  # never leave the server behind, even when down.sh failed
        except ProcessLookupError:
            pass
        lock.close()
    assert "stopped prefect-server" in down.stdout, down.stdout + down.stderr
    assert not (home / "run" / "prefect-server.url").exists()
