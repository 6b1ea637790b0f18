"""The device's HTTP API on a free loopback port; the server is always shut down."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from edge.device import Device
from edge.server import make_server
from models.bundle import publish_channel
from edge_fixtures import edge_model_dirs, make_bundle, signing_keys  # noqa: F401


@pytest.fixture()
def api(edge_model_dirs, signing_keys, tmp_path):
    """Base URL of a serving device (v1 installed), and the device."""
    root = tmp_path / "bundles"
    make_bundle(edge_model_dirs["v1"], root, "v1", signing_keys["private"])
    publish_channel(root, "stable", "v1", "first")
    device = Device("dev-0100", tmp_path / "home", root, signing_keys["public"], canary_share=0.0)
    server = make_server(device, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", device
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def call(url: str, body: object | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_before_and_after_sync(api):
    base, device = api
    status, body = call(f"{base}/health")
    assert status == 503 and body["status"] == "no_model"
    assert device.sync().ok
    status, body = call(f"{base}/health")
    assert status == 200 and body["model_version"] == "v1" and body["device_id"] == "dev-0100"


def test_predict_then_feedback(api):
    base, device = api
    assert call(f"{base}/predict", {"text": "hi"})[0] == 503
    device.sync()
    status, prediction = call(f"{base}/predict", {"text": "where is my order, mail me at a@b.co"})
    assert status == 200 and set(prediction) == {"label", "confidence", "model_version", "message_id"}
    assert prediction["model_version"] == "v1" and prediction["label"] in device.labels()
    status, body = call(f"{base}/feedback", {"message_id": prediction["message_id"],
                                             "predicted": prediction["label"], "accepted": True})
    assert status == 201 and body["message_id"] == prediction["message_id"]
    line = next((device.home / "feedback").glob("*.jsonl")).read_text()
    assert "a@b.co" not in line and json.loads(line)["event_id"] == body["event_id"]


@pytest.mark.parametrize("path, body, raw, field", [
    ("/predict", {}, None, "text"),
    ("/predict", {"text": 5}, None, "text"),
    ("/predict", {"text": "   "}, None, "text"),
    ("/predict", None, b"{not json", None),
    ("/predict", None, b"[1, 2]", None),
    ("/feedback", {"predicted": "get_refund", "accepted": True}, None, "text"),
    ("/feedback", {"text": "refund", "accepted": True}, None, "predicted"),
    ("/feedback", {"text": "refund", "predicted": "get_refund", "accepted": "yes"}, None, "accepted"),
    ("/feedback", {"text": "refund", "predicted": "nope", "accepted": True}, None, "predicted"),
])
def test_bad_input_answers_400_naming_the_field(api, path, body, raw, field):
    base, device = api
    device.sync()
    status, answer = call(base + path, body, raw)
    assert status == 400 and answer["field"] == field and answer["error"]


def test_unknown_route_and_oversized_body(api):
    base, _ = api
    assert call(f"{base}/nope")[0] == 404
    assert call(f"{base}/predict", raw=b" " * (65 * 1024))[0] == 413


def test_background_sync_swaps_models_while_requests_keep_succeeding(api, edge_model_dirs, signing_keys):
    import time

    from edge.server import start_sync_loop

    base, device = api
    device.sync()
    root = device.source.root
    make_bundle(edge_model_dirs["v2"], root, "v2", signing_keys["private"])
    answers: list[tuple[int, str]] = []

    def hammer() -> None:
        for _ in range(40):
            status, body = call(f"{base}/predict", {"text": "where is my order"})
            answers.append((status, body.get("model_version")))

    stop = start_sync_loop(device, 0.05)
    try:
        client = threading.Thread(target=hammer)
        client.start()
        publish_channel(root, "stable", "v2", "gate passed")
        deadline = time.monotonic() + 20
        while call(f"{base}/health")[1]["model_version"] != "v2" and time.monotonic() < deadline:
            time.sleep(0.05)
        client.join(timeout=30)
    finally:
        stop.set()
    assert call(f"{base}/health")[1]["model_version"] == "v2"
    assert answers and all(status == 200 and v in ("v1", "v2") for status, v in answers)


def test_cli_serve_process_answers_and_stops(edge_model_dirs, signing_keys, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = tmp_path / "bundles"
    make_bundle(edge_model_dirs["v1"], root, "v1", signing_keys["private"])
    publish_channel(root, "stable", "v1", "first")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "EDGELOOP_EDGE_HOME": str(tmp_path / "home"), "EDGELOOP_EDGE_BUNDLES": str(root),
           "EDGELOOP_EDGE_PUBLIC_KEY": str(signing_keys["public"]), "EDGELOOP_EDGE_DEVICE_ID": "dev-0200"}
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve", "--port", str(port)],
                            cwd=Path(__file__).resolve().parent.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, health = time.monotonic() + 30, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = call(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                time.sleep(0.1)
        assert health is not None, proc.stderr.read().decode() if proc.poll() is not None else "no answer"
        assert health == (200, {"status": "ok", "device_id": "dev-0200", "channel": "stable",
                                "model_version": "v1", "previous_version": None})
        assert call(f"http://127.0.0.1:{port}/predict", {"text": "refund please"})[0] == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
