"""TUF end to end: the real rollout functions publish, real enrolled devices sync (real bundles, ONNX).

The night publishes through :mod:`models.rollout` (promote, release, rollback, the canary's settle),
which writes the TUF repository under ``<home>/tuf``; each device is a real :class:`edge.device.Device`
enrolled with that repository's root, reading it as a folder. Every attack must leave the device on
the model it ran, with its ``models/`` folder unchanged and the refusal in its status.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import datetime, timezone

import pandas as pd
import pytest

from edge.device import Device
from edge_fixtures import edge_model_dirs, flip_byte, signing_keys  # noqa: F401
from models import canary, rollout
from models.stores import StudentStore
from rollout_fixtures import channels, register, settings, store  # noqa: F401


def _tuf_dir(settings):  # noqa: F811
    return settings.home_path() / "tuf"


def _enrolled(settings, tmp_path, device_id: str, canary_share: float = 0.0) -> Device:  # noqa: F811
    """A device that trusts the night's current root and reads its repository as a folder."""
    device = Device(device_id, tmp_path / device_id, _tuf_dir(settings), settings.public_key_path(), canary_share)
    assert device.enroll(_tuf_dir(settings) / "metadata" / "root.json")["enrolled"]
    return device


def _files(device: Device) -> dict[str, str]:
    models = device.models_dir
    return {str(p.relative_to(models)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(models.rglob("*")) if p.is_file()}


def _refused(device: Device, kind: str, match: str) -> dict:
    """Sync must be refused for ``kind`` and change nothing: same model running, same files."""
    running, before = device.current_version(), _files(device)
    result = device.sync()
    assert result.status == "refused" and match in result.reason, result
    assert device.current_version() == running and result.model_version == running
    assert _files(device) == before and not list(device.models_dir.glob("*.partial"))
    assert device.predict("where is my order").model_version == running  # it keeps serving
    refusal = device.status()["last_refusal"]
    assert refusal["kind"] == kind and refusal["reason"] == result.reason
    return refusal


# ---- the normal path, and a rollback -----------------------------------------------------------------
def test_rollback_reaches_enrolled_devices_as_a_new_higher_version(settings, edge_model_dirs, store, tmp_path,  # noqa: F811
                                                                   capsys):
    from edge.cli import main

    v1, v2 = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"])
    rollout.promote(store, v1, "first champion", "alice")
    rollout.release(store, v1, "first release", "alice")
    stable, canary_dev = _enrolled(settings, tmp_path, "dev-0001"), _enrolled(settings, tmp_path, "dev-0002", 1.0)
    assert stable.sync().status == canary_dev.sync().status == "updated"
    assert stable.current_version() == canary_dev.current_version() == f"v{v1}"

    rollout.promote(store, v2, "gate passed", "nightly")  # canary first ...
    assert stable.sync().status == "up_to_date" and canary_dev.sync().status == "updated"
    assert (stable.current_version(), canary_dev.current_version()) == (f"v{v1}", f"v{v2}")
    rollout.release(store, v2, "canary healthy", "nightly")  # ... then stable
    assert stable.sync().status == "updated" and stable.current_version() == f"v{v2}"

    # edgeloop rollback: champion and both channels back to v1, in new, higher TUF versions,
    # signed with a rotated targets key (root v2 lists it; enrolled devices follow from root v1)
    trusted = json.loads((stable.tuf_dir / "metadata" / "targets.json").read_bytes())["signed"]["version"]
    rollout.tuf_repository(store).rotate_key("targets")
    out = rollout.rollback(store, "v2 misroutes refunds", "carol")
    assert out["rolled_back"] == v2 and channels(settings) == {"canary": f"v{v1}", "stable": f"v{v1}"}
    for device in (stable, canary_dev):
        result = device.sync()
        assert (result.status, device.current_version(), device.previous_version()) == \
            ("updated", f"v{v1}", f"v{v2}"), result
    now = json.loads((stable.tuf_dir / "metadata" / "targets.json").read_bytes())["signed"]["version"]
    assert now > trusted, "a rollback is a new targets version, not an old one served again"
    assert stable.status()["tuf"] == {"enrolled": True, "root_version": 2}

    # the device command line: enroll, sync, status
    home, cli = tmp_path / "dev-cli", ["--bundles", str(_tuf_dir(settings))]
    cli = ["--home", str(home), *cli, "--public-key", str(settings.public_key_path()), "--device-id", "dev-0003"]
    assert main([*cli, "enroll", "--tuf-root", str(_tuf_dir(settings) / "metadata" / "root.json")]) == 0
    assert json.loads(capsys.readouterr().out)["enrolled"]
    assert main([*cli, "sync"]) == 0 and json.loads(capsys.readouterr().out)["status"] == "updated"
    assert main([*cli, "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model_version"] == f"v{v1}" and status["tuf"]["enrolled"] and status["last_refusal"] is None
    assert main([*cli, "enroll", "--tuf-root", str(settings.public_key_path())]) == 2  # not a TUF root
    assert "not TUF metadata" in capsys.readouterr().err


# ---- one end-to-end test per attack ------------------------------------------------------------------------
def test_downgrade_is_refused(settings, edge_model_dirs, store, tmp_path):  # noqa: F811
    """The attack of issue 13: an older, validly signed state served again."""
    v1, v2 = (register(settings, edge_model_dirs[k]) for k in ("v1", "v2"))
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")
    served_while_v1 = tmp_path / "old-metadata"
    shutil.copytree(_tuf_dir(settings) / "metadata", served_while_v1)  # signed, not expired
    device = _enrolled(settings, tmp_path, "dev-0010")
    plain = Device("dev-0011", tmp_path / "dev-0011", settings.bundles_root(), settings.public_key_path(), 0.0)
    rollout.promote(store, v2, "gate passed", "nightly")
    rollout.release(store, v2, "healthy", "nightly")
    assert device.sync().ok and plain.sync().ok and device.current_version() == plain.current_version() == f"v{v2}"

    # 1. the plain channel file rewritten to name the older (validly signed) bundle: a device
    #    without TUF "updates" back to v1; the enrolled one does not even read that file
    record = json.loads((settings.bundles_root() / "channels" / "stable.json").read_text())
    old = json.loads((served_while_v1 / "targets.json").read_text())
    record.update(model_version=f"v{v1}", bundle=f"v{v1}",
                  manifest_sha256=old["signed"]["targets"][f"bundles/v{v1}/manifest.json"]["hashes"]["sha256"])
    (settings.bundles_root() / "channels" / "stable.json").write_text(json.dumps(record))
    assert plain.sync().status == "updated" and plain.current_version() == f"v{v1}"
    assert device.sync().status == "up_to_date" and device.current_version() == f"v{v2}"

    # 2. the whole older TUF metadata replayed (a mirror, or an attacker on the path)
    metadata = _tuf_dir(settings) / "metadata"
    shutil.rmtree(metadata)
    shutil.copytree(served_while_v1, metadata)
    refusal = _refused(device, "rollback", "rollback")
    assert "never go down" in refusal["reason"] and device.current_version() == f"v{v2}"


def test_freeze_is_refused_until_the_night_re_signs(settings, edge_model_dirs, tmp_path):  # noqa: F811
    settings.bundle.tuf.timestamp_days = 4 / 86400  # a 4-second timestamp (config), so the test can wait it out
    store = StudentStore.from_settings(settings)  # noqa: F811
    v1 = register(settings, edge_model_dirs["v1"])
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")
    device = _enrolled(settings, tmp_path, "dev-0020")
    assert device.sync().status == "updated"
    expires = json.loads((_tuf_dir(settings) / "metadata" / "timestamp.json").read_bytes())["signed"]["expires"]
    wait = (datetime.fromisoformat(expires.replace("Z", "+00:00")) - datetime.now(timezone.utc)).total_seconds()
    time.sleep(max(0.0, wait) + 0.5)  # the repository is frozen: nobody re-signed
    _refused(device, "freeze", "expired")

    empty = pd.DataFrame(columns=["model_version", "accepted"])
    out = canary.settle_canary(store, settings.bundle, empty, "nightly:n2")  # the night's canary step re-signs
    assert out["action"] == "none" and out["tuf_versions"]["timestamp"] > 0
    assert device.sync().status == "up_to_date" and device.current_version() == f"v{v1}"


def test_mix_and_match_is_refused(settings, edge_model_dirs, store, tmp_path):  # noqa: F811
    v1, v2 = (register(settings, edge_model_dirs[k]) for k in ("v1", "v2"))
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")
    device = _enrolled(settings, tmp_path, "dev-0030")
    assert device.sync().status == "updated"
    rollout.promote(store, v2, "gate passed", "nightly")
    rollout.release(store, v2, "healthy", "nightly")
    # the targets file the snapshot names holds another valid, signed targets version
    metadata = _tuf_dir(settings) / "metadata"
    n = json.loads((metadata / "targets.json").read_bytes())["signed"]["version"]
    shutil.copyfile(metadata / f"{n - 1}.targets.json", metadata / f"{n}.targets.json")
    _refused(device, "mix-and-match", "targets")
    assert device.current_version() == f"v{v1}"


@pytest.mark.parametrize("what", ["model.onnx", "channel"])
def test_tampered_bundle_or_channel_is_refused(settings, edge_model_dirs, store, tmp_path, what):  # noqa: F811
    v1, v2 = (register(settings, edge_model_dirs[k]) for k in ("v1", "v2"))
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")
    device = _enrolled(settings, tmp_path, "dev-0040")
    assert device.sync().status == "updated"
    rollout.promote(store, v2, "gate passed", "nightly")
    rollout.release(store, v2, "healthy", "nightly")
    targets = _tuf_dir(settings) / "targets"
    if what == "model.onnx":  # the served copy of the new model corrupted or swapped
        flip_byte(next((targets / "bundles" / f"v{v2}").glob("*.model.onnx")))
    else:  # the served stable record edited back to v1 (hash no longer matches the signed one)
        signed = json.loads((_tuf_dir(settings) / "metadata" / "targets.json").read_bytes())["signed"]
        served = targets / "channels" / f"{signed['targets']['channels/stable.json']['hashes']['sha256']}.stable.json"
        record = json.loads(served.read_text())
        record.update(model_version=f"v{v1}", bundle=f"v{v1}")
        served.write_text(json.dumps(record))
    _refused(device, "tampered", "tampered")
    assert device.current_version() == f"v{v1}"


def test_reconcile_brings_a_lost_repository_back_from_the_channels(settings, edge_model_dirs, store, tmp_path):  # noqa: F811
    """A home published before TUF (or whose repository was lost): the next reconcile republishes."""
    v1 = register(settings, edge_model_dirs["v1"])
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")
    shutil.rmtree(_tuf_dir(settings))
    moves = rollout.reconcile(store, "nightly:n2")
    assert sorted(m["channel"] for m in moves) == ["canary", "stable"]
    assert rollout.reconcile(store, "again") == []
    device = _enrolled(settings, tmp_path, "dev-0050")
    assert device.sync().status == "updated" and device.current_version() == f"v{v1}"
