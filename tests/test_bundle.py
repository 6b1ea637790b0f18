"""Bundle format: manifest, signature, verification refusals, channels (models/bundle.py, edge/verify.py,
edge/channels.py)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from edge.channels import CANARY, RECORD_FIELDS, STABLE, followed, make_record, parse_record
from edge.manifest import MANIFEST_FILE, sha256_file
from edge.verify import BundleVerificationError, verify_bundle
from models.bundle import (build_bundle, channel_history, ensure_signing_key, publish_channel,
                           read_channel)
from edge_fixtures import edge_model_dirs, flip_byte, make_bundle, signing_keys  # noqa: F401


@pytest.fixture()
def bundle(edge_model_dirs, signing_keys, tmp_path):
    make_bundle(edge_model_dirs["v1"], tmp_path / "bundles", "v1", signing_keys["private"])
    return tmp_path / "bundles" / "v1"


def test_manifest_lists_every_file_with_checksum_size_and_lineage(bundle):
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json", "labels.json", "bundle.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_file(bundle / name), "size": (bundle / name).stat().st_size}
    assert manifest["size_bytes"] == sum(e["size"] for e in manifest["files"].values())
    assert (manifest["model_version"], manifest["teacher_version"], manifest["data_hash"],
            manifest["backend"]) == ("v1", "teacher-1", "abc123", "onnx-fp32")
    assert manifest["metrics"] == {"accuracy": 0.9, "macro_f1": 0.88}
    assert manifest["created_at"].endswith("+00:00")
    assert len(manifest["key_id"]) == 16 and manifest["signature"]


def test_signed_bundle_verifies_with_its_public_key(bundle, signing_keys):
    assert verify_bundle(bundle, signing_keys["public"])["model_version"] == "v1"


def test_build_writes_atomically_and_never_overwrites_by_default(edge_model_dirs, signing_keys, tmp_path):
    root = tmp_path / "bundles"
    make_bundle(edge_model_dirs["v1"], root, "v1", signing_keys["private"])
    with pytest.raises(FileExistsError, match="immutable"):
        make_bundle(edge_model_dirs["v2"], root, "v1", signing_keys["private"])
    assert sorted(p.name for p in root.iterdir()) == ["v1"], "no temp folder may be left behind"
    manifest = make_bundle(edge_model_dirs["v2"], root, "v1", signing_keys["private"], overwrite=True)
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(edge_model_dirs["v2"] / "model.onnx")
    assert sorted(p.name for p in root.iterdir()) == ["v1"]


def test_build_refuses_missing_files_and_bad_names(edge_model_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks bundle file"):
        build_bundle(tmp_path, tmp_path / "out", model_version="v1", metrics={}, teacher_version="t",
                     data_hash="h", backend="onnx-int8", signing_key=None)
    with pytest.raises(ValueError, match="model_version"):
        make_bundle(edge_model_dirs["v1"], tmp_path, "../evil", None)


def test_metrics_become_plain_json_and_nan_is_refused(edge_model_dirs, tmp_path):
    manifest = make_bundle(edge_model_dirs["v1"], tmp_path, "v1", None,
                           metrics={"accuracy": np.float32(0.5), "per_intent": np.array([1, 2])})
    assert manifest["metrics"] == {"accuracy": 0.5, "per_intent": [1, 2]}
    with pytest.raises(ValueError, match="finite"):
        make_bundle(edge_model_dirs["v1"], tmp_path, "v2", None, metrics={"accuracy": float("nan")})


def test_ensure_signing_key_is_private_idempotent_and_checks_the_pair(tmp_path):
    priv, pub = tmp_path / "keys" / "k.pem", tmp_path / "keys" / "k.pub"
    kid = ensure_signing_key(priv, pub)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert ensure_signing_key(priv, pub) == kid and len(kid) == 16
    pub.unlink()
    assert ensure_signing_key(priv, pub) == kid, "the public half is rewritten from the private key"
    ensure_signing_key(tmp_path / "o.pem", tmp_path / "o.pub")
    with pytest.raises(ValueError, match="does not match"):
        ensure_signing_key(priv, tmp_path / "o.pub")
    with pytest.raises(FileExistsError, match="without its private key"):
        ensure_signing_key(tmp_path / "missing.pem", pub)


# ---- refusals ----------------------------------------------------------------------------------
def _remove_manifest(b):
    (b / MANIFEST_FILE).unlink()


def _strip_signature(b):
    m = json.loads((b / MANIFEST_FILE).read_text())
    del m["signature"]
    (b / MANIFEST_FILE).write_text(json.dumps(m))


def _edit_metrics(b):
    m = json.loads((b / MANIFEST_FILE).read_text())
    m["metrics"]["accuracy"] = 0.99
    (b / MANIFEST_FILE).write_text(json.dumps(m))


def _add_executable(b):
    (b / "run.sh").write_text("#!/bin/sh\necho pwned\n")
    os.chmod(b / "run.sh", 0o755)


def _append_byte(b):
    with open(b / "labels.json", "ab") as fh:
        fh.write(b" ")


@pytest.mark.parametrize("tamper, message", [
    (_remove_manifest, "missing manifest"),
    (_strip_signature, "unsigned"),
    (_edit_metrics, "bad signature"),
    (lambda b: (b / "tokenizer.json").unlink(), "file missing: tokenizer.json"),
    (lambda b: flip_byte(b / "model.onnx"), "checksum mismatch: model.onnx"),
    (_append_byte, "size mismatch: labels.json"),
    (_add_executable, "unexpected executable file run.sh"),
    (lambda b: (b / "hook.py").write_text("import os"), "unexpected executable file hook.py"),
])
def test_verification_refuses_tampered_bundles(bundle, signing_keys, tamper, message):
    tamper(bundle)
    with pytest.raises(BundleVerificationError, match=message):
        verify_bundle(bundle, signing_keys["public"])


def test_verification_refuses_another_key(bundle, signing_keys):
    with pytest.raises(BundleVerificationError, match="wrong key"):
        verify_bundle(bundle, signing_keys["other_public"])


def test_verification_tolerates_a_harmless_extra_file(bundle, signing_keys):
    (bundle / "README.txt").write_text("notes")
    verify_bundle(bundle, signing_keys["public"])


# ---- channels ----------------------------------------------------------------------------------
def test_publish_channel_records_pointer_and_history(edge_model_dirs, signing_keys, tmp_path):
    root = tmp_path / "bundles"
    for v in ("v1", "v2"):
        make_bundle(edge_model_dirs[v], root, v, signing_keys["private"])
    assert read_channel(root, "stable") is None
    publish_channel(root, "stable", "v1", "first champion", public_key=signing_keys["public"])
    record = publish_channel(root, "stable", "v2", "gate passed")
    assert read_channel(root, "stable") == record
    assert record["bundle"] == "v2"
    assert record["manifest_sha256"] == sha256_file(root / "v2" / MANIFEST_FILE)
    history = channel_history(root)
    assert [(h["model_version"], h["previous_model_version"], h["reason"]) for h in history] == [
        ("v1", None, "first champion"), ("v2", "v1", "gate passed")]


def test_publish_channel_refuses_bad_input(edge_model_dirs, signing_keys, tmp_path):
    root = tmp_path / "bundles"
    make_bundle(edge_model_dirs["v1"], root, "v1", signing_keys["private"])
    with pytest.raises(ValueError, match="channel must be one of"):
        publish_channel(root, "beta", "v1", "why")
    with pytest.raises(FileNotFoundError, match="no bundle for model_version 'v9'"):
        publish_channel(root, "stable", "v9", "why")
    with pytest.raises(ValueError, match="reason"):
        publish_channel(root, "stable", "v1", " ")
    flip_byte(root / "v1" / "model.onnx")
    with pytest.raises(BundleVerificationError, match="checksum mismatch"):
        publish_channel(root, "stable", "v1", "why", public_key=signing_keys["public"])
    assert read_channel(root, "stable") is None


def test_channel_record_round_trips_and_bad_records_name_the_field():
    record = make_record(CANARY, "v3", "ab" * 32, " gate passed ")
    assert set(record) == set(RECORD_FIELDS) and record["reason"] == "gate passed"
    assert parse_record(json.dumps(record), CANARY) == record
    assert followed(CANARY) == (CANARY, STABLE) and followed(STABLE) == (STABLE,)
    with pytest.raises(ValueError, match="manifest_sha256"):
        make_record(STABLE, "v3", "not-a-digest", "why")
    with pytest.raises(ValueError, match="model_version"):
        make_record(STABLE, "../v3", "ab" * 32, "why")
    with pytest.raises(ValueError, match="channels/stable.json field 'bundle'"):
        parse_record(json.dumps({**record, "bundle": "../../etc"}), STABLE)
    with pytest.raises(ValueError, match="channels/canary.json is not valid JSON"):
        parse_record(b"{", CANARY)
    with pytest.raises(ValueError, match="channel must be one of"):
        parse_record(json.dumps(record), "beta")
