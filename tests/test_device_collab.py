"""End and cloud together on a real device: a signed bundle whose manifest carries a collab policy,
a real cloud server process (models/cloud_server.py on loopback), the CLI and the HTTP server;
routes device / cloud / rejected, a cloud that is down, route and latency in feedback, and
deferred messages coming home: spool → inbox → lake (source "deferred", once) → relabelled first."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge.collab import CollabPolicy, decide
from edge.device import Device
from edge.feedback import DEFERRAL_SUFFIX, message_id
from edge.patch import base_outputs
from edge.predictor import OnnxPredictor
from models.bundle import build_bundle, load_signing_key, publish_channel, sign_manifest
from edge_fixtures import LABELS, edge_model_dirs, free_port, make_bundle, signing_keys  # noqa: F401
from edge_fixtures import get_json as _get

ROOT = Path(__file__).resolve().parent.parent
# Candidates for the three roles; the policy is cut from the tiny model's own logits for them.
CANDIDATES = ["where is my order", "i want a refund", "cancel my order", "track my package please",
              "give me my money back", "stop the order hello", "when will my order arrive", "refund the payment",
              "please cancel the order now", "hello", "money", "arrive please"]


def _policy_and_roles(model_dir: Path) -> tuple[CollabPolicy, dict[str, str]]:
    """A real policy for this model: the lowest-energy text is out of scope, the surest of the rest
    is answered on the device, the least sure deferred (thresholds half way between)."""
    z = base_outputs(OnnxPredictor(model_dir), CANDIDATES)[0].astype(np.float64)
    probe = decide(z, CollabPolicy(oos_score="energy"))
    energy, conf = np.array([d.score for d in probe]), np.array([d.confidence for d in probe])
    order = np.argsort(energy)
    oos, rest = int(order[0]), [int(i) for i in order[1:]]
    clear, unsure = max(rest, key=lambda i: conf[i]), min(rest, key=lambda i: conf[i])
    assert conf[clear] > conf[unsure] and energy[order[1]] > energy[oos]
    policy = CollabPolicy(temperature=1.0, threshold=float((conf[clear] + conf[unsure]) / 2), oos_score="energy",
                          oos_threshold=float((energy[oos] + energy[order[1]]) / 2), target_accuracy=0.98)
    return policy, {"clear": CANDIDATES[clear], "unsure": CANDIDATES[unsure], "oos": CANDIDATES[oos]}


def _collab_bundle(model_dir: Path, root: Path, version: str, private: Path, policy: CollabPolicy) -> None:
    """A bundle whose signed manifest carries ``collab`` (built unsigned, then signed with the block)."""
    manifest = build_bundle(model_dir, root / version, model_version=version, metrics={"accuracy": 0.9},
                            teacher_version="t1", data_hash="abc", backend="onnx-fp32", signing_key=None)
    manifest = sign_manifest({**manifest, "collab": policy.to_dict()}, load_signing_key(private))
    (root / version / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def cloud(edge_model_dirs):  # noqa: F811
    """A real cloud server process serving v2 as the teacher ("t7"), and its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "models.cloud_server", "--model-dir", str(edge_model_dirs["v2"]),
                             "--teacher-version", "t7", "--host", "127.0.0.1", "--port", str(port), "--threads", "1",
                             "--max-wait-ms", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if _get(url + "/health")["status"] == "ok":
                    break
            except OSError:
                assert time.monotonic() < deadline, "cloud server did not answer within 60 s"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def roles(edge_model_dirs):  # noqa: F811
    return _policy_and_roles(edge_model_dirs["v1"])


@pytest.fixture()
def world(edge_model_dirs, signing_keys, roles, tmp_path):  # noqa: F811
    """Bundles: ``c1`` (v1 with the policy) on stable and ``plain`` (v1, no policy); a device factory."""
    root = tmp_path / "bundles"
    _collab_bundle(edge_model_dirs["v1"], root, "c1", signing_keys["private"], roles[0])
    publish_channel(root, "stable", "c1", "with a collab policy")

    def device(cloud_url: str | None, name: str = "dev-0001", timeout: float = 5.0) -> Device:
        d = Device(name, tmp_path / name, root, signing_keys["public"], canary_share=0.0, cloud_url=cloud_url,
                   cloud_timeout_s=timeout)
        assert d.sync().ok
        return d

    return {"root": root, "device": device, "policy": roles[0], "texts": roles[1], "tmp": tmp_path,
            "keys": signing_keys}


def _deferrals(device: Device) -> list[dict]:
    return [json.loads(line) for f in sorted((device.home / "feedback").glob(f"*{DEFERRAL_SUFFIX}"))
            for line in f.read_text().splitlines()]


def test_default_cloud_url_matches_the_config():
    from edge.cloud import DEFAULT_CLOUD_URL, DEFAULT_TIMEOUT_S
    from edgeloop.sections import CollabConfig

    assert (DEFAULT_CLOUD_URL, DEFAULT_TIMEOUT_S) == (CollabConfig().cloud_url, CollabConfig().cloud_timeout_s)


def test_clear_device_unsure_cloud_out_of_scope_rejected(world, cloud, edge_model_dirs):  # noqa: F811
    d, t = world["device"](cloud), world["texts"]
    assert d.status()["collab"] == world["policy"].to_dict()
    before = _get(cloud + "/v1/stats")["messages"]
    local = dict(zip(CANDIDATES, OnnxPredictor(edge_model_dirs["v1"]).predict(CANDIDATES)))
    teacher = dict(zip(CANDIDATES, OnnxPredictor(edge_model_dirs["v2"]).predict(CANDIDATES)))

    clear = d.predict(t["clear"])
    assert (clear.route, clear.deferred, clear.label, clear.cloud_ms, clear.flag) == (
        "device", False, local[t["clear"]][0], None, None)
    assert clear.confidence >= world["policy"].threshold and clear.latency_ms > 0
    unsure = d.predict(t["unsure"])
    assert (unsure.route, unsure.deferred, unsure.teacher_version, unsure.flag) == ("cloud", True, "t7", None)
    assert (unsure.label, unsure.local_label) == (teacher[t["unsure"]][0], local[t["unsure"]][0])
    assert unsure.confidence == pytest.approx(teacher[t["unsure"]][1], abs=1e-5)
    assert 0 < unsure.cloud_ms <= unsure.latency_ms
    oos = d.predict(t["oos"])
    assert (oos.route, oos.label, oos.deferred, oos.cloud_ms) == ("rejected", None, False, None)
    assert _get(cloud + "/v1/stats")["messages"] - before == 1  # only the unsure text left the device

    # The batch path: one model call, one cloud request, the same routes and answers.
    stats = _get(cloud + "/v1/stats")
    batch = d.predict_many([t["clear"], t["unsure"], t["oos"]])
    assert [p.route for p in batch] == ["device", "cloud", "rejected"]
    assert [p.label for p in batch] == [clear.label, unsure.label, None]
    after = _get(cloud + "/v1/stats")
    assert (after["requests"] - stats["requests"], after["messages"] - stats["messages"]) == (1, 1)

    # Each deferred message goes home with the cloud's answer; the sure and the rejected ones do not.
    spooled = _deferrals(d)
    assert [r["message_id"] for r in spooled] == [unsure.message_id] * 2
    assert (spooled[0]["label"], spooled[0]["route"], spooled[0]["teacher_version"], spooled[0]["text"]) == (
        unsure.label, "cloud", "t7", t["unsure"])


def test_cloud_down_or_silent_answers_locally_and_flags(world, edge_model_dirs):  # noqa: F811
    t = world["texts"]
    local = OnnxPredictor(edge_model_dirs["v1"]).predict([t["unsure"]])[0][0]
    down = world["device"](f"http://127.0.0.1:{free_port()}", "dev-down", timeout=0.5)
    p = down.predict(t["unsure"])
    assert (p.route, p.deferred, p.label, p.cloud_ms) == ("device", True, local, None)
    assert p.flag.startswith("cloud_unreachable: unreachable")
    assert down.predict(t["clear"]).flag is None  # a sure answer never needed the cloud
    with socket.socket() as silent:  # accepts connections but never answers: the timeout decides
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow = world["device"](f"http://127.0.0.1:{silent.getsockname()[1]}", "dev-slow", timeout=0.3)
        started = time.perf_counter()
        q = slow.predict(t["unsure"])
        assert time.perf_counter() - started < 2 and q.latency_ms >= 300
        assert (q.route, q.label) == ("device", local) and "timed out" in q.flag
    record = _deferrals(down)[0]
    assert (record["route"], record["label"], record["teacher_version"]) == ("device", local, None)
    assert record["flag"].startswith("cloud_unreachable")


def test_no_cloud_never_defers_and_old_bundles_answer_everything(world, edge_model_dirs, signing_keys):  # noqa: F811
    t = world["texts"]
    alone = world["device"](None, "dev-alone")
    p = alone.predict(t["unsure"])
    assert (p.route, p.deferred, p.cloud_ms) == ("device", False, None)
    assert p.flag == "low_confidence: no cloud endpoint configured"
    assert alone.predict(t["oos"]).route == "rejected"  # rejection needs no cloud
    assert _deferrals(alone)[0]["route"] == "device"  # still worth relabelling first
    # A bundle without a policy (older nights): everything on the device, as before.
    make_bundle(edge_model_dirs["v1"], world["root"], "plain", signing_keys["private"])
    publish_channel(world["root"], "stable", "plain", "no policy")
    assert alone.sync().ok and alone.status()["collab"] is None
    expected = OnnxPredictor(edge_model_dirs["v1"]).predict(list(t.values()))
    got = alone.predict_many(list(t.values()))
    assert [(p.label, p.confidence) for p in got] == [(label, round(c, 6)) for label, c in expected]
    assert {(p.route, p.deferred, p.flag) for p in got} == {("device", False, None)}


def test_a_malformed_policy_is_refused_at_sync(world, edge_model_dirs, signing_keys):  # noqa: F811
    d = world["device"](None, "dev-strict")
    bad = CollabPolicy().to_dict() | {"threshold": 1.5}
    manifest = build_bundle(edge_model_dirs["v2"], world["root"] / "bad", model_version="bad", metrics={},
                            teacher_version="t1", data_hash="x", backend="onnx-fp32", signing_key=None)
    signed = sign_manifest({**manifest, "collab": bad}, load_signing_key(signing_keys["private"]))
    (world["root"] / "bad" / "manifest.json").write_text(json.dumps(signed))
    publish_channel(world["root"], "stable", "bad", "a broken policy")
    result = d.sync()
    assert result.status == "refused" and "collab" in result.reason and "threshold" in result.reason
    assert d.current_version() == "c1"


def test_feedback_records_route_and_latency(world, cloud):
    from data_contracts.feedback_inbox import collect_feedback

    d, t = world["device"](cloud), world["texts"]
    p = d.predict(t["unsure"])
    event = d.feedback(p.message_id, p.label, accepted=True)
    assert (event["route"], event["deferred"], event["latency_ms"], event["cloud_ms"]) == (
        "cloud", True, p.latency_ms, p.cloud_ms)
    q = d.predict(t["clear"])
    other = d.feedback(t["clear"], q.label, accepted=True)  # by text: the same message, remembered
    assert (other["route"], other["deferred"], other["cloud_ms"]) == ("device", False, None)
    # A file written before the route fields existed still validates; its events carry nulls.
    old = {k: v for k, v in event.items() if k not in ("route", "deferred", "latency_ms", "cloud_ms")}
    spool = world["tmp"] / "spool"
    spool.mkdir()
    (spool / "old.jsonl").write_text(json.dumps({**old, "event_id": "f" * 32}) + "\n")
    events = {e["event_id"]: e for e in collect_feedback([d.home, spool])}
    assert events["f" * 32]["route"] is None and events[event["event_id"]]["route"] == "cloud"
    assert len(events) == 3  # deferral records are not feedback events
    with pytest.raises(ValueError, match="'route'"):
        d.feedback(p.message_id, p.label, accepted=True, route={"route": "moon"})


def test_cli_and_http_show_route_and_latency(world, cloud):
    from edge.server import make_server

    d, t = world["device"](cloud, "dev-cli1"), world["texts"]
    env = {**os.environ, "EDGELOOP_EDGE_HOME": str(d.home), "EDGELOOP_EDGE_BUNDLES": str(world["root"]),
           "EDGELOOP_EDGE_PUBLIC_KEY": str(d.public_key), "EDGELOOP_EDGE_DEVICE_ID": "dev-cli1",
           "EDGELOOP_EDGE_CLOUD_URL": cloud}
    run = subprocess.run([sys.executable, "-m", "edge.cli", "predict", t["unsure"], t["oos"]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert [(o["route"], o["teacher_version"]) for o in out] == [("cloud", "t7"), ("rejected", None)]
    assert all(o["latency_ms"] > 0 for o in out) and out[1]["label"] is None
    bad = subprocess.run([sys.executable, "-m", "edge.cli", "--cloud-url", "ftp://nope", "predict", "hi"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cloud url must start with http" in json.loads(bad.stderr)["error"]

    server = make_server(d, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        req = urllib.request.Request(base + "/predict", data=json.dumps({"text": t["unsure"]}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert (body["route"], body["deferred"], body["teacher_version"]) == ("cloud", True, "t7")
        assert body["latency_ms"] >= body["cloud_ms"] > 0
    finally:
        server.shutdown()
        server.server_close()


def test_deferred_messages_come_home_once_and_are_relabelled_first(world, cloud, edge_model_dirs):  # noqa: F811
    from datetime import datetime, timezone

    import pandas as pd

    from data_contracts.feedback_ingest import ingest_feedback
    from data_contracts.lake import Lake
    from models.relabel import pending_ids, pending_shards
    from models.teacher_store import TeacherRef

    lake = Lake(world["tmp"] / "lake")
    earlier = ["i need help with my order", "my package is late"]  # already waiting, unlabeled, in lake order
    lake.append_messages(pd.DataFrame({"message_id": [message_id(x) for x in earlier], "text": earlier}),
                         source="stream", received_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    d = world["device"](cloud, "dev-home")
    # This bundle defers everything (threshold 1 is never reached, nothing is rejected).
    _collab_bundle(edge_model_dirs["v1"], world["root"], "c2", world["keys"]["private"], CollabPolicy(threshold=1.0))
    publish_channel(world["root"], "stable", "c2", "defer everything")
    assert d.sync().ok
    texts = ["where is my order, mail me at jane.doe@example.com", "cancel my order", "refund the payment"]
    answers = d.predict_many(texts)
    assert {a.route for a in answers} == {"cloud"}
    d.feedback(answers[1].message_id, answers[1].label, accepted=True)
    inbox, processed = world["tmp"] / "inbox", world["tmp"] / "processed"
    for f in (d.home / "feedback").glob("*.jsonl"):  # what the device's uploader does
        (inbox / d.device_id).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, inbox / d.device_id / f.name)

    report = ingest_feedback(lake, inbox, processed, LABELS, {"c2"})
    assert (report.deferred_in, report.deferred_added, report.deferred_by_cloud) == (3, 3, 3)
    assert report.events_accepted == 1
    msgs = lake.messages().set_index("message_id")
    ids = [a.message_id for a in answers]
    assert (msgs.loc[ids, "source"] == "deferred").all() and msgs.loc[ids, "gold_label"].isna().all()
    assert "jane.doe" not in " ".join(msgs["text"]) and "{EMAIL}" in msgs.loc[ids[0], "text"]

    for f in (d.home / "feedback").glob("*.jsonl"):  # the same files delivered again add nothing
        shutil.copy(f, inbox / f"again-{f.name}")
    again = ingest_feedback(lake, inbox, processed, LABELS, {"c2"})
    assert (again.deferred_in, again.deferred_added) == (3, 0) and len(lake.messages()) == 5

    ref = TeacherRef("1", str(world["tmp"]))
    pending = pending_ids(lake, ref)
    assert set(pending[:3]) == set(ids) and pending[3:] == [message_id(x) for x in earlier]
    assert lake.unlabeled_ids(ref.cache_key)[:2] == [message_id(x) for x in earlier]  # lake order: older first
    shards = pending_shards(lake, ref, 2)
    assert all(s[0] in ids for s in shards) and sorted(sum(shards, [])) == sorted(pending)


def test_cloud_without_a_registered_teacher_starts_and_says_so(world, tmp_path):
    """What `make up` starts on a fresh home: the server answers, says no_teacher, classify is 503,
    and a device pointed at it answers locally, flagged."""
    port, home = free_port(), tmp_path / "fresh-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP", "MLFLOW_"))}
    env.update(EDGELOOP_HOME=str(home), EDGELOOP__COLLAB__CLOUD_URL=f"http://127.0.0.1:{port}")
    printed = subprocess.run([sys.executable, "-m", "models.cloud_server", "--print-url"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert printed.stdout.strip() == f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "models.cloud_server", "--reload-s", "600"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url, deadline, health = f"http://127.0.0.1:{port}", time.monotonic() + 90, {}
        while health.get("status") in (None, "loading"):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"no verdict within 90 s: {health}"
            try:
                health = _get(url + "/health")
            except OSError:
                pass
            time.sleep(0.2)
        assert health["status"] == "no_teacher" and "bootstrap-teacher" in health["reason"], health
        d = world["device"](url, "dev-early")
        p = d.predict(world["texts"]["unsure"])
        assert p.route == "device" and p.deferred and p.flag.startswith("cloud_unreachable: http 503")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
