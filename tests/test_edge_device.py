"""Device runtime with a real tiny ONNX model: sync, refusals, fallback, canary, feedback, CLI."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from data_contracts.feedback_inbox import collect_feedback
from edge.device import Device, NoModelError, assign_channel
from edge.predictor import OnnxPredictor
from models.bundle import build_bundle, publish_channel
from edge_fixtures import edge_model_dirs, flip_byte, make_bundle, signing_keys  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def world(edge_model_dirs, signing_keys, tmp_path):
    """A bundles root with signed v1 and v2, stable -> v1, and a fresh device on stable."""
    root = tmp_path / "bundles"
    for v in ("v1", "v2"):
        make_bundle(edge_model_dirs[v], root, v, signing_keys["private"])
    publish_channel(root, "stable", "v1", "first")
    device = Device("dev-0001", tmp_path / "home", root, signing_keys["public"], canary_share=0.0)
    return {"root": root, "device": device, "keys": signing_keys, "dirs": edge_model_dirs,
            "tmp": tmp_path}


def _sync_ok(device, version):
    result = device.sync()
    assert result.ok, result.reason
    assert device.current_version() == version
    return result


def test_sync_installs_then_updates_and_keeps_previous(world):
    device = world["device"]
    with pytest.raises(NoModelError, match="run sync first"):
        device.predict("where is my order")
    assert _sync_ok(device, "v1").status == "updated"
    assert device.sync().status == "up_to_date"
    prediction = device.predict("where is my order")
    assert prediction.model_version == "v1" and prediction.label in device.labels()
    assert 0.0 < prediction.confidence <= 1.0
    publish_channel(world["root"], "stable", "v2", "gate passed")
    _sync_ok(device, "v2")
    assert device.previous_version() == "v1"
    assert device.predict("where is my order").model_version == "v2"
    assert device.rollback() == "v1"
    assert (device.current_version(), device.previous_version()) == ("v1", "v2")
    assert device.predict("where is my order").model_version == "v1"


def test_predictions_identical_before_and_after_swapping_the_same_model(world):
    device, texts = world["device"], ["where is my order", "refund please", "cancel it now hello"]
    _sync_ok(device, "v1")
    before = [device.predict(t) for t in texts]
    make_bundle(world["dirs"]["v1"], world["root"], "v1-rebuilt", world["keys"]["private"])
    publish_channel(world["root"], "stable", "v1-rebuilt", "same weights, new version")
    _sync_ok(device, "v1-rebuilt")
    after = [device.predict(t) for t in texts]
    assert [(p.label, p.confidence) for p in before] == [(p.label, p.confidence) for p in after]
    # Dynamic axes: a padded batch answers like one message at a time.
    predictor = OnnxPredictor(world["dirs"]["v1"])
    np.testing.assert_allclose(predictor.predict_proba(texts),
                               np.concatenate([predictor.predict_proba([t]) for t in texts]), atol=1e-5)


@pytest.mark.parametrize("break_v2, reason", [
    (lambda root, keys: flip_byte(root / "v2" / "model.onnx"), "checksum mismatch: model.onnx"),
    (lambda root, keys: (root / "v2" / "model.onnx").write_bytes(
        (root / "v2" / "model.onnx").read_bytes()[:1000]), "size mismatch: model.onnx"),
    (lambda root, keys: (root / "v2" / "labels.json").unlink(), "download of v2 failed"),
])
def test_bad_download_is_refused_and_the_device_keeps_serving(world, break_v2, reason):
    device, root = world["device"], world["root"]
    _sync_ok(device, "v1")
    publish_channel(root, "stable", "v2", "gate passed")
    break_v2(root, world["keys"])
    result = device.sync()
    assert not result.ok and reason in result.reason
    assert device.current_version() == "v1" and result.model_version == "v1"
    assert device.predict("refund please").model_version == "v1"
    assert not list((device.home / "models").glob("*.partial")), "a failed download leaves nothing"


def test_unsigned_and_foreign_bundles_are_refused(world):
    device, root, keys = world["device"], world["root"], world["keys"]
    _sync_ok(device, "v1")
    make_bundle(world["dirs"]["v3"], root, "unsigned", None)
    make_bundle(world["dirs"]["v3"], root, "foreign", keys["other_private"])
    for version, reason in (("unsigned", "unsigned bundle"), ("foreign", "wrong key")):
        publish_channel(root, "stable", version, "test")
        result = device.sync()
        assert result.status == "refused" and reason in result.reason
        assert device.current_version() == "v1"


def test_leftover_partial_download_is_cleaned_and_redone(world):
    device, root = world["device"], world["root"]
    _sync_ok(device, "v1")
    partial = device.home / "models" / "v2.partial"
    partial.mkdir()
    (partial / "model.onnx").write_bytes(b"half a model")
    publish_channel(root, "stable", "v2", "gate passed")
    _sync_ok(device, "v2")
    assert not partial.exists()


def test_damaged_installed_model_falls_back_to_previous_then_heals(world):
    device, root, keys = world["device"], world["root"], world["keys"]
    _sync_ok(device, "v1")
    publish_channel(root, "stable", "v2", "gate passed")
    _sync_ok(device, "v2")
    flip_byte(device.home / "models" / "v2" / "model.onnx")  # disk corruption after install
    restarted = Device("dev-0001", device.home, root, keys["public"], canary_share=0.0)
    assert restarted.predict("where is my order").model_version == "v1"
    assert restarted.current_version() == "v1"
    _sync_ok(restarted, "v2")  # the damaged copy is dropped and downloaded again
    assert restarted.predict("where is my order").model_version == "v2"


def test_sync_over_http(world):
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(world["root"]))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        device = Device("dev-0002", world["tmp"] / "http-home", url, world["keys"]["public"], 0.0, timeout=5)
        _sync_ok(device, "v1")
        assert device.predict("refund please").model_version == "v1"
        bad = Device("dev-0003", world["tmp"] / "h3", "http://127.0.0.1:1/", world["keys"]["public"], timeout=2)
        assert bad.sync().status == "failed"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_unreachable_or_unpublished_channel_fails_cleanly(world, tmp_path):
    device = Device("dev-0004", tmp_path / "h", tmp_path / "nowhere", world["keys"]["public"])
    result = device.sync()
    assert result.status == "failed" and "cannot read channel" in result.reason
    assert Device("dev-0005", tmp_path / "h5", None, world["keys"]["public"]).sync().status == "failed"


def test_canary_assignment_is_stable_and_proportional():
    ids = [f"dev-{i:04d}" for i in range(2000)]
    first = [assign_channel(i, 0.1) for i in ids]
    assert first == [assign_channel(i, 0.1) for i in ids]
    share = first.count("canary") / len(ids)
    assert 0.08 <= share <= 0.12
    assert all(assign_channel(i, 0.0) == "stable" for i in ids[:50])
    assert all(assign_channel(i, 1.0) == "canary" for i in ids[:50])
    # Raising the share only moves stable devices into canary, never the other way.
    assert all(assign_channel(i, 0.2) == "canary" for i, c in zip(ids, first) if c == "canary")


def test_canary_device_follows_stable_until_a_canary_is_published(world):
    root, keys = world["root"], world["keys"]
    device = Device("dev-0006", world["tmp"] / "c", root, keys["public"], canary_share=1.0)
    assert device.channel() == "canary"
    _sync_ok(device, "v1")
    publish_channel(root, "canary", "v2", "canary")
    _sync_ok(device, "v2")


def test_device_refuses_bad_ids_and_shares(tmp_path):
    for bad in ("Device 1", "dev-abcd\n", "dev-ab"):  # "\n": the feedback contract refuses it too
        with pytest.raises(ValueError, match="device_id"):
            Device(bad, tmp_path, None, tmp_path / "k.pub")
    with pytest.raises(ValueError, match="canary_share"):
        Device("dev-0001", tmp_path, None, tmp_path / "k.pub", canary_share=1.5)


# ---- feedback ----------------------------------------------------------------------------------
def test_feedback_is_redacted_and_matches_the_lake_message_id(world):
    from data_contracts.datasets import message_id as lake_message_id

    device = world["device"]
    _sync_ok(device, "v1")
    raw = "where is my order? write to anna.f@example.com"
    prediction = device.predict(raw)
    event = device.feedback(prediction.message_id, prediction.label, accepted=False,
                            corrected_label=next(l for l in device.labels() if l != prediction.label))
    assert "anna.f@example.com" not in event["text"] and "{EMAIL}" in event["text"]
    assert event["message_id"] == prediction.message_id == lake_message_id(event["text"])
    by_text = device.feedback(raw, prediction.label, accepted=True)
    assert by_text["message_id"] == event["message_id"] and by_text["corrected_label"] is None
    files = list((device.home / "feedback").glob("*.jsonl"))
    assert len(files) == 1
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r["event_id"] for r in rows] == [event["event_id"], by_text["event_id"]]
    assert all("example.com" not in line for line in files[0].read_text().splitlines())
    assert rows[0]["device_id"] == "dev-0001" and rows[0]["model_version"] == "v1"


@pytest.mark.parametrize("kwargs, field", [
    ({"predicted": "no_such_label", "accepted": True}, "predicted"),
    ({"predicted": "get_refund", "accepted": False, "corrected_label": "nope"}, "corrected_label"),
    ({"predicted": "get_refund", "accepted": True, "corrected_label": "cancel_order"}, "corrected_label"),
    ({"predicted": "get_refund", "accepted": "yes"}, "accepted"),
])
def test_feedback_names_the_bad_field(world, kwargs, field):
    device = world["device"]
    _sync_ok(device, "v1")
    with pytest.raises(ValueError, match=f"'{field}'"):
        device.feedback("refund please", **kwargs)
    with pytest.raises(ValueError, match="'message'"):
        device.feedback(" ", "get_refund", True)


def test_collect_feedback_validates_dedupes_and_sorts(world, tmp_path):
    device = world["device"]
    _sync_ok(device, "v1")
    first = device.feedback("refund please", "get_refund", True)
    second = device.feedback("cancel my order", "get_refund", False, "cancel_order")
    spool = tmp_path / "spool" / "dev-0001"
    spool.mkdir(parents=True)
    log_file = next((device.home / "feedback").glob("*.jsonl"))
    # The same file uploaded to a spool, plus garbage: each event once, bad lines skipped.
    (spool / "upload.jsonl").write_text(log_file.read_text() + "not json\n{\"device_id\": \"dev-x\"}\n")
    events = collect_feedback([device.home, tmp_path / "spool"])
    assert [e["event_id"] for e in events] == [first["event_id"], second["event_id"]]
    assert events[1]["corrected_label"] == "cancel_order"
    assert collect_feedback(tmp_path / "empty") == []


# ---- process level -----------------------------------------------------------------------------
def test_edge_runtime_never_imports_torch_transformers_or_the_server_side():
    # Every module of the device package, and nothing of the training side may come with it.
    code = ("import importlib, pkgutil, sys, edge; "
            "[importlib.import_module(f'edge.{m.name}') for m in pkgutil.iter_modules(edge.__path__)]; "
            "bad = [m for m in ('torch', 'transformers', 'pandas', 'edgeloop', 'data_contracts', 'models', "
            "'tasks', 'flows') if m in sys.modules]; "
            "sys.exit(f'edge imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout


def test_cli_sync_predict_feedback_status(world, capsys):
    from edge.cli import main

    base = ["--home", str(world["tmp"] / "cli-home"), "--bundles", world["root"].as_uri(),
            "--public-key", str(world["keys"]["public"]), "--canary-share", "0"]
    assert main([*base, "predict", "hi"]) == 3
    assert main([*base, "sync"]) == 0
    assert json.loads(capsys.readouterr().out)["model_version"] == "v1"
    assert main([*base, "predict", "where is my order"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert main([*base, "feedback", prediction["message_id"], "--predicted", prediction["label"],
                 "--accepted"]) == 0
    assert json.loads(capsys.readouterr().out)["message_id"] == prediction["message_id"]
    assert main([*base, "feedback", "x", "--predicted", "bogus", "--rejected"]) == 2
    assert "'predicted'" in capsys.readouterr().err
    assert main([*base, "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["device_id"].startswith("dev-") and status["model_version"] == "v1"
    assert (world["tmp"] / "cli-home" / "device_id").read_text().strip() == status["device_id"]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "serve" in capsys.readouterr().out


def test_manifest_digest_in_channel_must_match(world):
    device, root = world["device"], world["root"]
    _sync_ok(device, "v1")
    publish_channel(root, "stable", "v2", "gate passed")
    channel = root / "channels" / "stable.json"
    record = json.loads(channel.read_text())
    record["manifest_sha256"] = hashlib.sha256(b"another manifest").hexdigest()
    channel.write_text(json.dumps(record))
    result = device.sync()
    assert result.status == "refused" and "differs from the channel" in result.reason
    assert device.current_version() == "v1"


def test_build_bundle_signature_covers_lineage(world):
    manifest = build_bundle(world["dirs"]["v3"], world["tmp"] / "b" / "v3", model_version="v3",
                            metrics={}, teacher_version="t", data_hash="h", backend="onnx-fp32",
                            signing_key=world["keys"]["private"])
    assert manifest["model_version"] == "v3"


def test_cli_verify_checks_and_smokes_a_bundle_in_a_fresh_process(world):
    args = [sys.executable, "-m", "edge.cli", "--public-key", str(world["keys"]["public"]), "verify"]
    ok = subprocess.run([*args, str(world["root"] / "v1"), "--text", "refund please"], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["model_version"] == "v1" and len(report["answers"]) == 1
    flip_byte(world["root"] / "v2" / "model.onnx")
    bad = subprocess.run([*args, str(world["root"] / "v2")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "checksum mismatch" in json.loads(bad.stderr)["error"]
