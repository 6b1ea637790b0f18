"""The device's HTTP API on a free loopback port; the server is always shut down.

The limits are tested with raw sockets: a client that trickles headers or a body is cut off at
the request deadline while others are served, an oversized body is refused before it is read,
and connections beyond the cap get 503 until a slot frees.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from edge.device import Device
from edge.server import Limits, make_server
from models.bundle import publish_channel
from edge_fixtures import edge_model_dirs, make_bundle, signing_keys  # noqa: F401


@contextlib.contextmanager
def serving(device: Device, limits: Limits | None = None):
    """Base URL of ``device`` served on a free loopback port; shut down on exit."""
    server = make_server(device, "127.0.0.1", 0, limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        assert not thread.is_alive()


@pytest.fixture()
def device(edge_model_dirs, signing_keys, tmp_path) -> Device:
    """A device whose stable channel points at v1 (not yet synced)."""
    root = tmp_path / "bundles"
    make_bundle(edge_model_dirs["v1"], root, "v1", signing_keys["private"])
    publish_channel(root, "stable", "v1", "first")
    return Device("dev-0100", tmp_path / "home", root, signing_keys["public"], canary_share=0.0)


@pytest.fixture()
def api(device):
    """Base URL of a serving device (default limits), and the device."""
    with serving(device) as base:
        yield base, device


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
    assert status == 200 and set(prediction) == {"label", "confidence", "model_version", "message_id",
                                                 "patched", "base_label", "route", "deferred", "latency_ms",
                                                 "cloud_ms", "teacher_version", "local_label", "local_confidence",
                                                 "flag"}
    assert prediction["model_version"] == "v1" and prediction["label"] in device.labels()
    assert prediction["patched"] is False and prediction["base_label"] == prediction["label"]  # no patch yet
    # A bundle without a collab policy: the device answers everything itself, as before.
    assert (prediction["route"], prediction["deferred"], prediction["flag"]) == ("device", False, None)
    assert prediction["latency_ms"] > 0 and prediction["local_label"] == prediction["label"]
    status, body = call(f"{base}/feedback", {"message_id": prediction["message_id"],
                                             "predicted": prediction["label"], "accepted": True})
    assert status == 201 and body["message_id"] == prediction["message_id"]
    line = next((device.home / "feedback").glob("*.jsonl")).read_text()
    event = json.loads(line)
    assert "a@b.co" not in line and event["event_id"] == body["event_id"]
    assert (event["route"], event["latency_ms"]) == ("device", prediction["latency_ms"])  # remembered
    status, batch = call(f"{base}/predict", {"texts": ["refund please", "cancel it"]})
    assert status == 200 and [p["route"] for p in batch["predictions"]] == ["device", "device"]
    assert [p["label"] for p in batch["predictions"]] == [device.predict(t).label for t in ("refund please", "cancel it")]


@pytest.mark.parametrize("path, body, raw, field", [
    ("/predict", {}, None, "text"),
    ("/predict", {"text": 5}, None, "text"),
    ("/predict", {"text": "   "}, None, "text"),
    ("/predict", {"texts": "where is my order"}, None, "texts"),
    ("/predict", {"texts": []}, None, "texts"),
    ("/predict", {"texts": ["ok", 5]}, None, "texts[1]"),
    ("/predict", None, b"{not json", None),
    ("/predict", None, b"[1, 2]", None),
    ("/feedback", {"predicted": "get_refund", "accepted": True}, None, "text"),
    ("/feedback", {"text": "refund", "accepted": True}, None, "predicted"),
    ("/feedback", {"text": "refund", "predicted": "get_refund", "accepted": "yes"}, None, "accepted"),
    ("/feedback", {"text": "refund", "predicted": "nope", "accepted": True}, None, "predicted"),
    ("/feedback", {"text": "refund", "predicted": "get_refund", "accepted": True, "route": "moon"}, None, "route"),
    ("/feedback", {"text": "refund", "predicted": "get_refund", "accepted": True, "latency_ms": -1}, None,
     "latency_ms"),
    ("/feedback", {"text": "refund", "predicted": "get_refund", "accepted": True, "cloud_ms": "9"}, None, "cloud_ms"),
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
        personalization = health[1].pop("personalization")
        assert health == (200, {"status": "ok", "device_id": "dev-0200", "channel": "stable",
                                "model_version": "v1", "previous_version": None,
                                "tuf": {"enrolled": False}, "last_refusal": None,
                                "cloud": {"url": "http://127.0.0.1:8090/v1/classify", "timeout_s": 2.0},
                                "collab": None})  # the CLI's default cloud; a bundle without a policy
        assert personalization["active"] is False and personalization["upload_policy"] == "none"
        assert "examples, fewer than min_examples" in personalization["reason"]
        assert call(f"http://127.0.0.1:{port}/predict", {"text": "refund please"})[0] == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---- limits --------------------------------------------------------------------------------------
def _connect(base: str) -> socket.socket:
    port = int(base.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_response(sock: socket.socket) -> tuple[int | None, bytes]:
    """Status and raw bytes of what the server sent before closing (None: closed without a word)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return (int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else None), data


def _trickle(sock: socket.socket, pieces: list[bytes], every_s: float, stop: threading.Event) -> None:
    for piece in pieces:
        if stop.wait(every_s):
            return
        try:
            sock.sendall(piece)
        except OSError:  # the server hung up: what the test wants to see
            return


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_slow_client_is_cut_off_at_the_deadline_while_others_are_served(device, phase):
    device.sync()
    limits = Limits(request_timeout_s=1.0, max_connections=2)
    with serving(device, limits) as base:
        slow, stop = _connect(base), threading.Event()
        body = json.dumps({"text": "where is my order"}).encode()
        if phase == "headers":  # slowloris: one header line every 0.2 s, never the blank line
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            pieces = [f"X-Pad-{i}: y\r\n".encode() for i in range(50)]
        else:  # a complete head, then the body one byte at a time
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode())
            pieces = [body[i:i + 1] for i in range(len(body))]
        trickler = threading.Thread(target=_trickle, args=(slow, pieces, 0.2, stop), daemon=True)
        started = time.monotonic()
        trickler.start()
        try:
            # the other slot still serves a normal client while the slow one is being held
            assert call(f"{base}/predict", {"text": "refund please"})[0] == 200
            status, raw = _read_response(slow)
            held_s = time.monotonic() - started
        finally:
            stop.set()
            trickler.join(timeout=5)
            slow.close()
        assert status == 408 and b"did not arrive within 1 s" in raw
        assert held_s < 2.5, f"the slow client held a worker for {held_s:.1f} s with a 1 s deadline"
        assert call(f"{base}/health")[0] == 200


def test_oversized_body_is_refused_with_413_before_it_is_sent(device):
    device.sync()
    with serving(device, Limits(max_body=1024)) as base:
        with _connect(base) as sock:  # announce 10 MB, send none of it: the answer must not wait
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
            started = time.monotonic()
            status, raw = _read_response(sock)
        assert status == 413 and b"above 1024" in raw and time.monotonic() - started < 1.5
        assert call(f"{base}/predict", raw=b" " * 1025)[0] == 413
        assert call(f"{base}/predict", {"text": "x" * 900})[0] == 200  # just below the limit is fine


def test_connections_beyond_the_cap_get_503_until_a_slot_frees(device):
    device.sync()
    with serving(device, Limits(max_connections=2, request_timeout_s=5.0)) as base:
        idle = [_connect(base) for _ in range(2)]  # connected, silent: both slots taken
        try:
            time.sleep(0.2)  # let the server accept them
            with _connect(base) as third:
                third.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                status, raw = _read_response(third)
            assert status == 503 and b"Retry-After: 1" in raw and b"2 connections" in raw
        finally:
            for sock in idle:
                sock.close()
        deadline, status = time.monotonic() + 5, None
        while time.monotonic() < deadline and status != 200:
            status = call(f"{base}/health")[0]
        assert status == 200


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_connections"):
        Limits(max_connections=0)
    with pytest.raises(ValueError, match="request_timeout_s"):
        Limits(request_timeout_s=0)


def test_keep_alive_requests_each_get_a_fresh_deadline(device):
    import http.client

    device.sync()
    with serving(device, Limits(request_timeout_s=1.0)) as base:
        conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=5)
        try:
            for _ in range(3):  # 3 requests 0.6 s apart on one connection: 1.8 s > the 1 s deadline
                conn.request("POST", "/predict", json.dumps({"text": "where is my order"}),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                assert response.status == 200 and json.loads(response.read())["label"]
                time.sleep(0.6)
        finally:
            conn.close()
