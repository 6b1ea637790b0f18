"""Alerts against a real Prefect server: the automations `make up` creates call the webhook for a
failed `nightly` run and for a failed gate, and for nothing else.

A `prefect server` and the local receiver (scripts/alert_sink.py) run on free loopback ports;
flows run in their own processes against the server, as the worker's would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
FLOW = '''
import sys
from prefect import flow
from prefect.events.worker import EventsWorker
from tasks.alerts import emit_gate_failed

name, outcome = sys.argv[1], sys.argv[2]

@flow(name=name)
def night():
    if outcome == "gate-failed":
        assert emit_gate_failed("2026-11-26", "7", ['min_accuracy fail: 0.81 < 0.9 "golden"'], "run-1")
    if outcome == "fail":
        raise RuntimeError("boom")

try:
    night()
except RuntimeError:
    pass
EventsWorker.drain_all()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args[0]} exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A Prefect server and the alert receiver; the environment that talks to them."""
    tmp = tmp_path_factory.mktemp("alerts")
    api = f"http://127.0.0.1:{_free_port()}/api"
    sink = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=api, PYTHONPATH=str(ROOT))
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", api.rsplit(":", 1)[1].split("/")[0]], env=server_env, cwd=tmp,
                         stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([sys.executable, str(ROOT / "scripts" / "alert_sink.py"), "--port",
                          sink.rsplit(":", 1)[1], "--out", str(tmp / "alerts.jsonl")], env=env, cwd=tmp,
                         stdout=open(tmp / "sink.log", "w"), stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        _wait_http(f"{sink}/health", procs[1], 30)
        _wait_http(f"{api}/health", procs[0], 90)
        yield {"env": env, "tmp": tmp, "webhook": f"{sink}/alert", "alerts": tmp / "alerts.jsonl"}
    finally:
        for proc in procs:
            _stop(proc)


def _python(stack, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env=stack["env"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _alerts(stack) -> list[dict]:
    path = stack["alerts"]
    return [json.loads(line)["alert"] for line in path.read_text().splitlines()] if path.exists() else []


def test_failed_night_and_failed_gate_alert_and_nothing_else_does(stack):
    from tasks.alerts import GATE_FAILED, GATE_FAILED_EVENT, NIGHT_FAILED

    first = json.loads(_python(stack, "-m", "tasks.alerts", "setup", "--webhook-url", stack["webhook"]).stdout)
    again = json.loads(_python(stack, "-m", "tasks.alerts", "setup", "--webhook-url", stack["webhook"]).stdout)
    assert set(first) == set(again) == {"edgeloop-alerts", NIGHT_FAILED, GATE_FAILED}
    listed = _python(stack, "-c", "from prefect.client.orchestration import get_client\n"
                     "with get_client(sync_client=True) as c: print(sorted(a.name for a in c.read_automations()))")
    assert listed.stdout.strip() == repr(sorted([GATE_FAILED, NIGHT_FAILED]))  # replaced, not duplicated

    script = stack["tmp"] / "night.py"
    script.write_text(FLOW)
    _python(stack, str(script), "relabel", "fail")       # another flow failing: no alert
    _python(stack, str(script), "nightly", "ok")         # a good night: no alert
    _python(stack, str(script), "nightly", "gate-failed")
    _python(stack, str(script), "nightly", "fail")
    deadline = time.monotonic() + 30
    while len(_alerts(stack)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # room for an alert that should not come
    alerts = {a["automation"]: a for a in _alerts(stack)}
    assert len(_alerts(stack)) == 2 and set(alerts) == {NIGHT_FAILED, GATE_FAILED}, _alerts(stack)

    gate = alerts[GATE_FAILED]
    assert gate["event"] == GATE_FAILED_EVENT and gate["resource"] == "edgeloop.night.2026-11-26"
    assert gate["payload"] == {"night": "2026-11-26", "model_version": "7", "mlflow_run_id": "run-1",
                               "failed_checks": ['min_accuracy fail: 0.81 < 0.9 "golden"']}
    assert "nightly" in gate["related"]  # emitted inside the night's flow run
    night = alerts[NIGHT_FAILED]
    assert night["event"] == "prefect.flow-run.Failed" and night["related"] == ["nightly"]
    assert "RuntimeError: boom" in night["payload"]["validated_state"]["message"]
    assert night["text"].startswith(f"{NIGHT_FAILED} (prefect.flow-run.Failed, ")


def test_setup_refuses_a_webhook_that_is_not_http():
    from tasks.alerts import ensure_alerts

    with pytest.raises(ValueError, match="webhook_url must be an http"):
        ensure_alerts("file:///tmp/alerts")
