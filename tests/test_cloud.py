"""The cloud endpoint (models/cloud_server.py on a real uvicorn process) and the device's client
and routing (edge/cloud.py): batching, 503 when saturated, 504 on timeout, 413/400 on bad input,
an unreachable or silent cloud, and the device's answer per route."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge.cloud import CloudClient, answer, make_request
from edge.collab import CollabPolicy
from edge.predictor import OnnxPredictor
from edge_fixtures import LABELS, edge_model_dirs, free_port  # noqa: F401
from edge_fixtures import get_json as _get

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["where is my order {ORDER_ID}", "i want a refund", "cancel my order please", "track my package",
         "give me my money back", "stop the order", "when will it arrive", "refund the payment"]


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def start_server(edge_model_dirs):  # noqa: F811
    """Start ``python -m models.cloud_server`` on loopback with the given flags; stopped at the end."""
    procs = []

    def start(*flags: str, env: dict | None = None) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "models.cloud_server", "--model-dir", str(edge_model_dirs["v1"]),
             "--teacher-version", "t1", "--port", str(port), "--threads", "1", *flags],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"cloud server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if _get(url + "/health")["status"] == "ok":
                    return url
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("cloud server did not become healthy within 60 s")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture(scope="module")
def batching_server(start_server) -> str:
    return start_server("--max-batch", "32", "--max-wait-ms", "300", "--max-in-flight", "16")


def test_concurrent_requests_are_batched_and_answered_like_the_model(batching_server, edge_model_dirs):  # noqa: F811
    client = CloudClient(batching_server, timeout_s=10)
    barrier, replies = threading.Barrier(len(TEXTS)), {}

    def send(i: int) -> None:
        barrier.wait()
        replies[i] = client.classify([TEXTS[i]])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(TEXTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(replies[i] is not None for i in range(len(TEXTS))), client.last_error
    assert max(r.batch_size for r in replies.values()) > 1
    stats = _get(batching_server + "/v1/stats")
    assert stats["requests"] >= len(TEXTS) and stats["batches"] < stats["requests"]
    local = OnnxPredictor(edge_model_dirs["v1"]).predict(TEXTS)
    for i, (label, conf) in enumerate(local):
        r = replies[i].results[0]
        assert (r.label, r.out_of_scope) == (label, False)
        assert r.confidence == pytest.approx(conf, abs=1e-5)
        assert replies[i].teacher_version == "t1" and replies[i].latency_ms > 0


def test_bad_requests_are_refused_with_the_field(batching_server):
    url = batching_server + "/v1/classify"
    assert _post(url, b"{not json")[0] == 400
    status, body = _post(url, json.dumps({"schema": "other/9", "messages": []}).encode())
    assert (status, body["field"]) == (400, "schema")
    req = make_request(["hello"])
    req["messages"][0]["message_id"] = "nope"
    status, body = _post(url, json.dumps(req).encode())
    assert (status, body["field"]) == (400, "messages[0].message_id")
    status, body = _post(url, json.dumps(make_request(["x" * 300_000])).encode())
    assert status == 413 and "larger than" in body["error"]


def test_client_redacts_before_sending(batching_server):
    reply = CloudClient(batching_server).classify(["mail me at jane.doe@example.com"])
    # The id the server echoes is the hash of the redacted text, so that is what was sent.
    from edge.feedback import message_id

    assert reply.results[0].message_id == message_id("mail me at {EMAIL}")


def test_timeout_saturation_and_token(start_server):
    # The batcher waits 1.5 s for company, longer than the 0.5 s request timeout: a real 504.
    url = start_server("--max-in-flight", "1", "--max-wait-ms", "1500", "--timeout-s", "0.5",
                       env={"EDGELOOP_CLOUD_TOKEN": "s3cret"})
    client = CloudClient(url, timeout_s=5, token="s3cret")
    first: dict = {}
    t = threading.Thread(target=lambda: first.setdefault("reply", client.classify(["where is my order"])))
    t.start()
    deadline = time.monotonic() + 5
    while _get(url + "/v1/stats")["in_flight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # until the first request holds the only slot
    second = CloudClient(url, timeout_s=5, token="s3cret")
    assert second.classify(["i want a refund"]) is None and second.last_error.startswith("http 503")
    t.join()
    assert first["reply"] is None and client.last_error.startswith("http 504")
    stats = _get(url + "/v1/stats")
    assert stats["busy_503"] == 1 and stats["timeouts_504"] == 1
    anonymous = CloudClient(url, timeout_s=5)
    assert anonymous.classify(["hello"]) is None and anonymous.last_error.startswith("http 401")


def test_unreachable_and_silent_clouds_give_none_quickly():
    closed = CloudClient(f"http://127.0.0.1:{free_port()}", timeout_s=1)
    assert closed.classify(["hello"]) is None and closed.last_error.startswith("unreachable")
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        client = CloudClient(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3)
        start = time.perf_counter()
        assert client.classify(["hello"]) is None
        assert time.perf_counter() - start < 2 and "unreachable" in client.last_error


def test_device_answer_per_route(batching_server, start_server):
    labels = LABELS
    policy = CollabPolicy(temperature=1.0, threshold=0.8, oos_score="msp", oos_threshold=0.4)
    sure, unsure, lost = np.array([4.0, 0.0, 0.0]), np.array([1.0, 0.2, 0.0]), np.array([0.05, 0.0, 0.0])
    cloud = CloudClient(batching_server, timeout_s=10)
    a = answer("where is my order", sure, labels, policy, cloud)
    assert (a.route, a.label, a.deferred, a.cloud_ms, a.flag) == ("device", "track_order", False, None, None)
    b = answer("i want a refund", unsure, labels, policy, cloud)
    assert b.route == "cloud" and b.deferred and b.cloud_ms > 0 and b.teacher_version == "t1"
    assert b.label in labels and b.latency_ms >= b.cloud_ms
    c = answer("what is the weather in paris", lost, labels, policy, cloud)
    assert (c.route, c.label, c.deferred) == ("rejected", None, False)
    down = CloudClient(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
    d = answer("i want a refund", unsure, labels, policy, down)
    assert (d.route, d.label, d.deferred) == ("device", "track_order", True)
    assert d.flag.startswith("cloud_unreachable: unreachable")
    assert set(d.to_dict()) >= {"route", "latency_ms", "deferred", "flag", "local_label"}
    with pytest.raises(ValueError, match="one row of 3"):
        answer("x", np.zeros(4), labels, policy, cloud)
    # A cloud whose teacher is unsure of everything (its own threshold) says out of scope: rejected.
    strict = CloudClient(start_server("--oos-threshold", "0.99"), timeout_s=10)
    e = answer("i want a refund", unsure, labels, policy, strict)
    assert (e.route, e.label, e.deferred) == ("rejected", None, True) and e.cloud_ms > 0


def test_cloud_follows_the_registered_teacher_and_keeps_it_when_the_registry_fails(edge_model_dirs):  # noqa: F811
    """models/cloud_teacher.py: no teacher → 503 with the reason; one registered → served; a new
    version → swapped without a restart; a failing registry → the served one stays."""
    from fastapi.testclient import TestClient

    from models.cloud_server import create_slot_app
    from models.cloud_teacher import Served, TeacherSlot

    models = {v: OnnxPredictor(edge_model_dirs[v]) for v in ("v1", "v2")}
    registered: dict = {"now": None}

    def load(current):  # what registry_loader does, over a dict instead of MLflow's alias
        v = registered["now"]
        if v is None:
            raise LookupError("no registered model 'teacher@production'")
        if v == "broken":
            raise RuntimeError("registry unreachable")
        return current if current and current.version == v else Served(models[v].predict_proba, models[v].labels, v)

    slot = TeacherSlot(load=load, reload_s=3600)
    body = make_request(["i want a refund"])
    with TestClient(create_slot_app(slot)) as client:
        deadline = time.monotonic() + 10
        while slot.state == "loading" and time.monotonic() < deadline:  # the background thread's first look
            time.sleep(0.02)
        health = client.get("/health").json()
        assert (health["status"], health["teacher_version"]) == ("no_teacher", None) and "teacher@production" in health["reason"]
        refused = client.post("/v1/classify", json=body)
        assert refused.status_code == 503 and refused.json()["error"].startswith("no_teacher")
        for version in ("v1", "v2", "broken"):
            registered["now"] = version
            slot.refresh()
            served = "v2" if version == "broken" else version
            assert client.get("/health").json()["teacher_version"] == served
            reply = client.post("/v1/classify", json=body).json()
            label, conf = models[served].predict(["i want a refund"])[0]
            assert (reply["teacher_version"], reply["results"][0]["label"]) == (served, label)
            assert reply["results"][0]["confidence"] == pytest.approx(conf, abs=1e-5)
        assert slot.state == "ok"
