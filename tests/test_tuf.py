"""TUF channels and bundles: one test per attack, with real python-tuf on real files.

The night publishes through :mod:`models.tuf_repository`; a device follows it with
:mod:`edge.updater`. Every attack must be refused with an error naming it, and the device must keep
the model it runs (its ``models/`` folder is unchanged, nothing new half-installed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge.channels import STABLE, make_record
from edge.updater import ENROLLED_ROOT, TufUpdater, UpdateRefused, enroll
from models.bundle import build_bundle, ensure_signing_key
from models.tuf_repository import ThresholdNotMet
from models.tuf_setup import init_repository, open_repository

VERSIONS = ("v1", "v2", "v3")


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def bundle_key(tmp_path) -> dict[str, Path]:
    keys = tmp_path / "bundle-keys"
    ensure_signing_key(keys / "edge.pem", keys / "edge.pub")
    return {"private": keys / "edge.pem", "public": keys / "edge.pub"}


@pytest.fixture
def bundles(tmp_path, bundle_key) -> dict[str, Path]:
    """Signed bundles v1..v3 (the edge format, built by the night's own code). Their model bytes
    are placeholders: TUF and the manifest check do not run the model."""
    out = {}
    for i, version in enumerate(VERSIONS, start=1):
        src = tmp_path / "models-src" / version
        src.mkdir(parents=True)
        (src / "model.onnx").write_bytes(bytes([i]) * 4096)
        (src / "tokenizer.json").write_text(json.dumps({"version": version}))
        (src / "labels.json").write_text(json.dumps(["a", "b"]))
        (src / "bundle.json").write_text(json.dumps({"max_length": 16, "backend": "onnx-fp32"}))
        build_bundle(src, tmp_path / "bundles" / version, model_version=version, metrics={"accuracy": 0.9},
                     teacher_version="t1", data_hash="h", backend="onnx-fp32", signing_key=bundle_key["private"])
        out[version] = tmp_path / "bundles" / version
    return out


def _repo(tmp_path, bundles, **kwargs):
    repo = init_repository(tmp_path / "home" / "tuf", tmp_path / "home" / "keys" / "tuf", **kwargs)
    for folder in bundles.values():
        repo.add_bundle(folder)
    repo.set_channel(STABLE, "v1", "first release")
    return repo


@pytest.fixture
def repo(tmp_path, bundles):
    return _repo(tmp_path, bundles)


def _device(tmp_path, repo, name="device"):
    state = tmp_path / name / "tuf"
    enroll(state, repo.root_bytes(1))  # the root shipped on the device at enrolment
    return TufUpdater(state, repo.repo_dir), tmp_path / name / "models"


def _snapshot_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(updater, models, kind: str, match: str | None = None) -> UpdateRefused:
    """Sync must raise UpdateRefused(kind) and leave ``models`` exactly as it was."""
    before = _snapshot_files(models)
    with pytest.raises(UpdateRefused) as err:
        updater.sync(STABLE, models)
    assert err.value.kind == kind, str(err.value)
    if match:
        assert match in str(err.value)
    assert _snapshot_files(models) == before, "a refused update changed the installed models"
    assert not list(models.glob("*.partial")), "a refused update left a partial download"
    return err.value


def _forge(repo, signers: dict, model_version: str) -> None:
    """What an attacker holding ``signers`` (role -> list of securesystemslib signers) can serve:
    new targets/snapshot/timestamp versions pointing stable at ``model_version``."""
    from tuf.api.metadata import MetaFile, TargetFile

    md = {role: repo.load(role) for role in ("targets", "snapshot", "timestamp")}
    record = make_record(STABLE, model_version,
                         md["targets"].signed.targets[f"bundles/{model_version}/manifest.json"].hashes["sha256"],
                         "forged")
    data = json.dumps(record).encode()
    info = TargetFile.from_data("channels/stable.json", data, ["sha256"])
    (repo.targets_dir / "channels" / f"{info.hashes['sha256']}.stable.json").write_bytes(data)
    md["targets"].signed.targets[info.path] = info
    for role in ("targets", "snapshot", "timestamp"):
        m = md[role]
        if role == "snapshot":
            m.signed.meta["targets.json"] = MetaFile.from_data(md["targets"].signed.version, raw, ["sha256"])
        if role == "timestamp":
            m.signed.snapshot_meta = MetaFile.from_data(md["snapshot"].signed.version, raw, ["sha256"])
        m.signed.version += 1
        m.signatures.clear()
        for signer in signers[role]:
            m.sign(signer, append=True)
        raw = m.to_bytes()
        name = "timestamp.json" if role == "timestamp" else f"{m.signed.version}.{role}.json"
        (repo.metadata_dir / name).write_bytes(raw)


def _key_signers(repo, role: str, keys_dir: Path | None = None) -> list:
    """Signers for ``role`` from the private keys in ``keys_dir`` (default: the repository's)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey

    out = []
    for path in sorted((keys_dir or repo.keys_dir).glob("*.pem")):
        private = load_pem_private_key(path.read_bytes(), None)
        public = SSlibKey.from_crypto(private.public_key())
        if keys_dir is not None or public.keyid in repo.load("root").signed.roles[role].keyids:
            out.append(CryptoSigner(private, public))
    return out


# ---- the normal path --------------------------------------------------------------------------------
def test_sync_installs_the_channel_bundle_and_reuses_it(tmp_path, repo, bundles, bundle_key):
    updater, models = _device(tmp_path, repo)
    record, folder = updater.sync(STABLE, models, public_key=bundle_key["public"])
    assert record["model_version"] == "v1" and folder == models / "v1"
    assert _snapshot_files(folder) == _snapshot_files(bundles["v1"])
    mtime = (folder / "model.onnx").stat().st_mtime_ns
    repo.set_channel(STABLE, "v2", "better model")
    record, folder = updater.sync(STABLE, models, public_key=bundle_key["public"])
    assert record["model_version"] == "v2" and _snapshot_files(folder) == _snapshot_files(bundles["v2"])
    # an intact local copy is reused, not downloaded again
    _, again = TufUpdater(updater.state_dir, repo.repo_dir).sync(STABLE, models)
    assert again == folder and (models / "v1" / "model.onnx").stat().st_mtime_ns == mtime
    assert not any(repo.repo_dir.rglob("*.pem")), "private keys must never sit in the served repository"
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in repo.keys_dir.glob("*.pem"))


def test_sync_over_http(tmp_path, repo, bundles, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    handler = partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                      directory=str(repo.repo_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state = tmp_path / "http-device" / "tuf"
        enroll(state, repo.root_bytes(1))
        updater = TufUpdater(state, f"http://127.0.0.1:{server.server_port}/", timeout=5)
        record, folder = updater.sync(STABLE, tmp_path / "http-device" / "models")
        assert record["model_version"] == "v1"
        assert _snapshot_files(folder) == _snapshot_files(bundles["v1"])
        (repo.targets_dir / "bundles" / "v1").rename(repo.targets_dir / "gone")
        shutil.rmtree(folder)
        from edge.fetch import FetchError
        with pytest.raises(FetchError, match="404"):  # missing files are a failure, not an attack
            TufUpdater(state, f"http://127.0.0.1:{server.server_port}/").sync(STABLE, folder.parent)
    finally:
        server.shutdown()
        server.server_close()


# ---- one test per attack ----------------------------------------------------------------------------
@pytest.mark.parametrize("replay", ["whole-repository", "snapshot-via-timestamp-key"])
def test_downgrade_to_older_signed_metadata_is_refused(tmp_path, repo, replay):
    from tuf.api.metadata import MetaFile

    old_state = tmp_path / "served-while-stable-was-v1"
    shutil.copytree(repo.metadata_dir, old_state)  # validly signed, not expired
    repo.set_channel(STABLE, "v2", "better model")
    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    if replay == "whole-repository":  # a mirror replays the older repository
        shutil.rmtree(repo.metadata_dir)
        shutil.copytree(old_state, repo.metadata_dir)
        match = "timestamp version"
    else:  # the online timestamp key is stolen: a new timestamp names the older snapshot
        older = repo.versions()["snapshot"] - 1
        md = repo.load("timestamp")
        md.signed.version += 1
        md.signed.snapshot_meta = MetaFile.from_data(
            older, (repo.metadata_dir / f"{older}.snapshot.json").read_bytes(), ["sha256"])
        md.signatures.clear()
        for signer in _key_signers(repo, "timestamp"):
            md.sign(signer, append=True)
        (repo.metadata_dir / "timestamp.json").write_bytes(md.to_bytes())
        match = "snapshot version must be >="
    err = _refused(updater, models, "rollback", match)
    assert "never go down" in str(err)
    assert sorted(p.name for p in models.iterdir()) == ["v2"]


def test_frozen_timestamp_is_refused_until_re_signed(tmp_path, bundles):
    repo = _repo(tmp_path, bundles, expiry={"timestamp": 2})
    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    expires = repo.load("timestamp").signed.expires
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.2)
    _refused(updater, models, "freeze", "timestamp.json is expired")
    assert open_repository(repo.repo_dir, repo.keys_dir).refresh_timestamp()["timestamp"] > 0
    assert updater.sync(STABLE, models)[0]["model_version"] == "v1"  # the nightly re-sign unfreezes


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_mix_and_match_metadata_is_refused(tmp_path, repo, role):
    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    repo.set_channel(STABLE, "v2", "better model")
    v = repo.versions()[role]
    # the file at the version the metadata above names holds another valid, signed version
    shutil.copyfile(repo.metadata_dir / f"{v - 1}.{role}.json", repo.metadata_dir / f"{v}.{role}.json")
    _refused(updater, models, "mix-and-match", f"{role}")


@pytest.mark.parametrize("target", ["model.onnx", "manifest.json", "channel"])
def test_tampered_target_is_refused(tmp_path, repo, target):
    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    repo.set_channel(STABLE, "v2", "better model")
    if target == "channel":  # the attack of issue 13: the channel rewritten to name an older bundle
        digest = repo.load("targets").signed.targets["channels/stable.json"].hashes["sha256"]
        served = repo.targets_dir / "channels" / f"{digest}.stable.json"
        record = json.loads(served.read_bytes())
        record.update(model_version="v1", bundle="v1")
        served.write_text(json.dumps(record))
    else:
        served = next((repo.targets_dir / "bundles" / "v2").glob(f"*.{target}"))
        data = bytearray(served.read_bytes())
        data[len(data) // 2] ^= 0xFF
        served.write_bytes(bytes(data))
    _refused(updater, models, "tampered", "target")
    assert sorted(p.name for p in models.iterdir()) == ["v1"]


def test_metadata_signed_by_an_untrusted_key_is_refused(tmp_path, repo):
    from securesystemslib.signer import CryptoSigner

    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    attacker = CryptoSigner.generate_ed25519()
    _forge(repo, {"targets": [attacker], "snapshot": [attacker], "timestamp": [attacker]}, "v3")
    _refused(updater, models, "signature", "timestamp was signed by 0/1 keys")


def test_one_signature_where_two_are_required_is_refused(tmp_path, bundles):
    repo = _repo(tmp_path, bundles, thresholds={"root": 2, "targets": 2})
    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    # an attacker holding one of the two targets keys and the online snapshot/timestamp keys
    one = _key_signers(repo, "targets")[:1]
    _forge(repo, {"targets": one, "snapshot": _key_signers(repo, "snapshot"),
                  "timestamp": _key_signers(repo, "timestamp")}, "v3")
    _refused(updater, models, "signature", "targets was signed by 1/2 keys")


def test_repository_refuses_to_publish_below_threshold(tmp_path, bundles):
    repo = _repo(tmp_path, bundles, thresholds={"targets": 2})
    before = repo.versions()
    keyid = repo.load("root").signed.roles["targets"].keyids[0]
    (repo.keys_dir / f"{keyid}.pem").unlink()
    with pytest.raises(ThresholdNotMet, match="targets"):
        repo.set_channel(STABLE, "v2", "better model")
    assert repo.versions() == before and repo.channel(STABLE)["model_version"] == "v1"


def test_key_rotation_is_followed_and_revoked_keys_are_refused(tmp_path, bundles):
    repo = _repo(tmp_path, bundles, thresholds={"root": 2})
    updater, models = _device(tmp_path, repo)  # enrolled with root v1
    updater.sync(STABLE, models)
    revoked = tmp_path / "revoked-keys"
    shutil.copytree(repo.keys_dir, revoked)  # what a thief of the old keys would hold
    old_targets = {k for k in repo.load("root").signed.roles["targets"].keyids}
    old_root = {k for k in repo.load("root").signed.roles["root"].keyids}
    repo.rotate_key("root")
    repo.rotate_key("targets")
    assert not any((repo.keys_dir / f"{k}.pem").exists() for k in old_targets | old_root)
    repo.set_channel(STABLE, "v2", "signed with the new targets key")
    assert repo.versions()["root"] == 3

    record, _ = updater.sync(STABLE, models)  # follows root v1 -> v2 -> v3
    assert record["model_version"] == "v2"
    assert (updater.state_dir / "metadata" / "root_history" / "3.root.json").is_file()

    stolen = {r: [s for s in _key_signers(repo, r, revoked) if s.public_key.keyid in old_targets]
              for r in ("targets",)}
    _forge(repo, {"targets": stolen["targets"], "snapshot": _key_signers(repo, "snapshot"),
                  "timestamp": _key_signers(repo, "timestamp")}, "v3")
    _refused(updater, models, "signature", "targets was signed by 0/1 keys")

    # a root signed only by the revoked root keys cannot take over either
    from tuf.api.metadata import Metadata
    forged = repo.load("root")
    forged.signed.version += 1
    forged.signatures.clear()
    for signer in _key_signers(repo, "root", revoked):
        if signer.public_key.keyid in old_root:
            forged.sign(signer, append=True)
    (repo.metadata_dir / f"{forged.signed.version}.root.json").write_bytes(forged.to_bytes())
    assert isinstance(forged, Metadata)
    _refused(updater, models, "signature", "root was signed by 0/2 keys")


def test_rollback_is_a_new_higher_version_and_is_accepted(tmp_path, repo):
    repo.set_channel(STABLE, "v2", "better model")
    updater, models = _device(tmp_path, repo)
    assert updater.sync(STABLE, models)[0]["model_version"] == "v2"
    before = repo.versions()
    record = repo.set_channel(STABLE, "v1", "rollback: v2 misroutes refunds")
    after = repo.versions()
    assert all(after[r] == before[r] + 1 for r in ("targets", "snapshot", "timestamp"))
    got, folder = updater.sync(STABLE, models)
    assert got == record and got["model_version"] == "v1" and folder == models / "v1"
    assert repo.set_channel(STABLE, "v1", "again") == record and repo.versions() == after  # no-op move


# ---- repository and enrolment rules ---------------------------------------------------------------------
def test_repository_rules(tmp_path, repo, bundles):
    with pytest.raises(FileExistsError, match="already holds"):
        init_repository(repo.repo_dir, repo.keys_dir)
    with pytest.raises(FileNotFoundError, match="not published"):
        repo.set_channel(STABLE, "v9", "no such bundle")
    with pytest.raises(ValueError, match="channel must be one of"):
        repo.set_channel("beta", "v1", "unknown channel")
    with pytest.raises(ValueError, match="expiry.timestamp must be positive"):
        init_repository(tmp_path / "other", tmp_path / "other-keys", expiry={"timestamp": 0})
    with pytest.raises(ValueError, match="thresholds.root"):
        init_repository(tmp_path / "other", tmp_path / "other-keys", thresholds={"root": 0})
    assert repo.add_bundle(bundles["v1"]) == "v1"  # publishing the same bundle again is a no-op
    altered = tmp_path / "altered" / "v1"
    shutil.copytree(bundles["v1"], altered)
    (altered / "labels.json").write_text('["x"]')
    with pytest.raises(FileExistsError, match="immutable"):
        repo.add_bundle(altered)
    assert repo.bundles() == list(VERSIONS)
    before = repo.versions()
    after = repo.refresh_timestamp()
    assert after == {**before, "timestamp": before["timestamp"] + 1}
    assert repo.load("timestamp").signed.expires > datetime.now(timezone.utc) + timedelta(days=1)


def test_nightly_re_sign_renews_an_aging_root_when_its_keys_are_at_hand(tmp_path, repo):
    updater, models = _device(tmp_path, repo)
    updater.sync(STABLE, models)
    repo.expiry["root"] = timedelta(days=1000)  # the 365-day root now has less than half its life left
    assert repo.refresh_timestamp()["root"] == 2
    assert updater.sync(STABLE, models)[0]["model_version"] == "v1"  # the device follows the renewed root
    assert (updater.state_dir / "metadata" / "root_history" / "2.root.json").is_file()
    for keyid in repo.load("root").signed.roles["root"].keyids:  # root keys moved offline
        (repo.keys_dir / f"{keyid}.pem").unlink()
    repo.expiry["root"] = timedelta(days=3000)  # aging again (the renewal above lasts 1000 days)
    before = repo.versions()
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the project's Prefect logging may stop propagation to caplog
    logging.getLogger("models.tuf_repository").addHandler(handler)
    try:
        assert repo.refresh_timestamp() == {**before, "timestamp": before["timestamp"] + 1}
    finally:
        logging.getLogger("models.tuf_repository").removeHandler(handler)
    assert any("cannot be renewed here" in r.getMessage() for r in records)


def test_enrolment_pins_one_root(tmp_path, repo):
    state = tmp_path / "dev" / "tuf"
    enroll(state, repo.root_bytes(1))
    enroll(state, repo.root_bytes(1))  # the same root again is fine
    repo.rotate_key("root")
    with pytest.raises(FileExistsError, match="enrolled once"):
        enroll(state, repo.root_bytes(2))
    with pytest.raises(ValueError, match="expected root"):
        enroll(tmp_path / "other", repo.metadata_dir.joinpath("timestamp.json").read_bytes())
    with pytest.raises(FileNotFoundError, match="enroll the device first"):
        TufUpdater(tmp_path / "nobody", repo.repo_dir)
    assert (state / ENROLLED_ROOT).read_bytes() == repo.root_bytes(1)
