"""Operate it like production: `scripts/up.sh` (make up) starts real Prefect and MLflow servers on
free loopback ports, a process worker and the deployments; the teacher is bootstrapped through
its deployment; two nightly-adhoc runs triggered at once become one night and one skip; the run
is read back through Prefect's API and the registered model through MLflow's REST API; then
`scripts/down.sh` (make down) stops everything it started. The same stack with MLflow on a local
PostgreSQL (`make up DB=postgres`) runs one night too."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
QUICK = {"dataset": {"max_rows": 600, "seed_fraction": 0.5}, "student": {"epochs": 2},
         "teacher": {"epochs": 4, "lr_encoder": 2e-4, "lr_head": 5e-3, "warmup_ratio": 0}}
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@contextmanager
def _up(home: Path, **extra: str):
    """scripts/up.sh on free ports; scripts/down.sh afterwards, and nothing it started left alive."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP", "PREFECT_", "MLFLOW_", "PG"))}
    env.update(EDGELOOP_HOME=str(home), PREFECT_PORT=str(_free_port()), MLFLOW_PORT=str(_free_port()),
               ALERTS_PORT=str(_free_port()), PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
               EDGELOOP__COLLAB__CLOUD_URL=f"http://127.0.0.1:{_free_port()}",  # the cloud teacher, off 8090
               **extra)
    t0 = time.monotonic()
    up = subprocess.run(["scripts/up.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    info = {"home": home, "env": env, "up_s": time.monotonic() - t0, "up_out": up.stdout,
            "prefect": f"http://127.0.0.1:{env['PREFECT_PORT']}/api", "mlflow": f"http://127.0.0.1:{env['MLFLOW_PORT']}"}
    pids = {p.stem: int(p.read_text()) for p in (home / "run").glob("*.pid")}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield info
    finally:
        down = subprocess.run(["scripts/down.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        print(up.stdout, down.stdout, sep="\n")
        for name, pid in pids.items():  # never leave a server behind, even when down.sh failed
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:  # not a group leader
                    os.kill(pid, signal.SIGKILL)
        assert not [n for n, pid in pids.items() if _alive(pid)], down.stdout + down.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with _up(tmp_path_factory.mktemp("ops") / "home") as info:
        yield info


def _api(stack, method: str, path: str, **kw):
    import httpx

    r = httpx.request(method, stack["prefect"] + path, timeout=30, **kw)
    r.raise_for_status()
    return r.json()


def _deployment(stack, flow: str, name: str) -> dict:
    return _api(stack, "GET", f"/deployments/name/{flow}/{name}")


def _run(stack, flow: str, name: str, parameters: dict) -> str:
    dep = _deployment(stack, flow, name)
    return _api(stack, "POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters})["id"]


def _wait(stack, run_ids: list[str], timeout: float) -> dict[str, dict]:
    deadline, runs = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        runs = {i: _api(stack, "GET", f"/flow_runs/{i}") for i in run_ids}
        if all(r["state_type"] in TERMINAL for r in runs.values()):
            return runs
        time.sleep(2)
    pytest.fail(f"flow runs not finished in {timeout}s: {[(r['name'], r['state_type']) for r in runs.values()]}")


def _logs(stack, run_id: str) -> str:
    logs = _api(stack, "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return "\n".join(entry["message"] for entry in logs)


def _mlflow_model(stack, name: str) -> dict:
    import httpx

    r = httpx.get(stack["mlflow"] + "/api/2.0/mlflow/registered-models/get", params={"name": name}, timeout=30)
    r.raise_for_status()
    return r.json()["registered_model"]


def test_redeploy_keeps_one_schedule(stack):
    env = {**stack["env"], "PREFECT_API_URL": stack["prefect"], "EDGELOOP_REPO": str(ROOT), "EDGELOOP_TZ": "UTC"}
    t0 = time.monotonic()
    again = subprocess.run([str(ROOT / ".venv/bin/prefect"), "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=180)
    print(f"re-deploy took {time.monotonic() - t0:.1f}s")
    assert again.returncode == 0, again.stdout[-3000:]
    nightly = _deployment(stack, "nightly", "nightly")
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in nightly["schedules"]] == [("0 2 * * *", "UTC")]
    assert _deployment(stack, "nightly", "nightly-adhoc")["schedules"] == []
    scheduled = _api(stack, "POST", "/flow_runs/filter", json={
        "flow_runs": {"deployment_id": {"any_": [nightly["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}})
    starts = [r["expected_start_time"] for r in scheduled]
    assert len(starts) == len(set(starts)), "duplicate scheduled nights after re-deploy"
    assert nightly["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)


def test_deployed_night_through_the_worker(stack):
    t0 = time.monotonic()
    boot = _run(stack, "teacher-bootstrap", "teacher-bootstrap", {"config": QUICK})
    assert _wait(stack, [boot], 300)[boot]["state_type"] == "COMPLETED", _logs(stack, boot)[-3000:]
    t_boot = time.monotonic() - t0

    # Two triggers at once: one night runs, the other finds the lock held and is skipped.
    first = _run(stack, "nightly", "nightly-adhoc", {"night": "2026-11-01", "config": QUICK})
    second = _run(stack, "nightly", "nightly-adhoc", {"night": "2026-11-02", "config": QUICK})
    runs = _wait(stack, [first, second], 300)
    t_night = time.monotonic() - t0 - t_boot
    print(f"bootstrap via deployment {t_boot:.0f}s, nights {t_night:.0f}s, up {stack['up_s']:.0f}s")
    logs = {i: _logs(stack, i) for i in runs}
    assert all(r["state_type"] == "COMPLETED" for r in runs.values()), {i: logs[i][-2000:] for i in runs}
    skipped = [i for i in runs if "skipped: another night is running" in logs[i]]
    assert len(skipped) == 1, logs
    ran = next(i for i in runs if i not in skipped)
    assert "messages to label" in logs[ran]  # library/task logs reach the Prefect run logs
    assert "ingest stream" in logs[ran]      # data_contracts' logger (PREFECT_LOGGING_EXTRA_LOGGERS)

    model = _mlflow_model(stack, "edge-student")
    assert model["latest_versions"], model
    assert _mlflow_model(stack, "teacher")["aliases"][0]["alias"] == "production"
    assert any(a["alias"] == "candidate" for a in model.get("aliases", []))


def _edgeloop_settings(stack) -> subprocess.CompletedProcess:
    """What the CLI's prepare_process makes of this home right now (no Prefect, no flow)."""
    code = ("import json, os\nfrom edgeloop.config import load_settings\nfrom edgeloop.runtime import prepare_process\n"
            "s = prepare_process(load_settings())\n"
            "print(json.dumps({'mlflow': s.tracking_uri(), 'prefect': os.environ.get('PREFECT_API_URL')}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=stack["env"], capture_output=True, text=True,
                          timeout=120)


def _has_postgres() -> bool:
    return bool(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl") or shutil.which("pg_ctl"))


def test_night_with_mlflow_on_postgres():
    """`make up DB=postgres`: MLflow's backend store is a PostgreSQL under EDGELOOP_HOME; a deployed
    night registers its model there (read back with SQL), and the CLI attaches to that MLflow."""
    if not _has_postgres():
        msg = "PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    import psycopg2

    base = Path(tempfile.mkdtemp(prefix="edgeloop-ops-pg-"))  # the postgres user must reach it (not pytest's 0700 tmp)
    base.chmod(0o755)
    home, t0 = base / "home", time.monotonic()
    try:
        with _up(home, EDGELOOP_DB="postgres", PG_PORT=str(_free_port())) as stack:
            assert "started postgres" in stack["up_out"] and "mlflow backend store: postgres" in stack["up_out"]
            boot = _run(stack, "teacher-bootstrap", "teacher-bootstrap", {"config": QUICK})
            assert _wait(stack, [boot], 300)[boot]["state_type"] == "COMPLETED", _logs(stack, boot)[-3000:]
            night = _run(stack, "nightly", "nightly-adhoc", {"night": "2026-11-01", "config": QUICK})
            assert _wait(stack, [night], 300)[night]["state_type"] == "COMPLETED", _logs(stack, night)[-3000:]
            print(f"postgres stack: up {stack['up_s']:.0f}s, bootstrap + night {time.monotonic() - t0 - stack['up_s']:.0f}s")

            assert _mlflow_model(stack, "edge-student")["latest_versions"]
            port = stack["env"]["PG_PORT"]
            os.environ["PGPASSFILE"] = str(home / "postgres" / "pgpass")  # the password lives only there
            try:
                with psycopg2.connect(host="127.0.0.1", port=port, user="edgeloop", dbname="mlflow") as conn, \
                        conn.cursor() as cur:
                    cur.execute("SELECT name FROM registered_models ORDER BY name")
                    assert [r[0] for r in cur.fetchall()] == ["edge-student", "teacher"]
                    cur.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
                    assert cur.fetchone()[0] >= 2
            finally:
                del os.environ["PGPASSFILE"]
            with pytest.raises(psycopg2.OperationalError, match="password"):  # no password, no access
                psycopg2.connect(host="127.0.0.1", port=port, user="edgeloop", dbname="mlflow", passfile="/dev/null")
            assert not (home / "mlflow.db").exists()
            attached = _edgeloop_settings(stack)
            assert json.loads(attached.stdout) == {"mlflow": stack["mlflow"], "prefect": stack["prefect"]}, attached.stderr
        assert not (home / "postgres" / "data" / "postmaster.pid").exists()  # down.sh stopped it cleanly
        # Stack down: the CLI refuses to start a second registry in sqlite, and says what to do.
        refused = _edgeloop_settings(stack)
        assert refused.returncode != 0 and "make up" in refused.stderr and "postgres" in refused.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
