"""A fleet of 20 in-process devices following canary and stable channels."""

from __future__ import annotations

import pytest

from data_contracts.feedback_inbox import collect_feedback
from edge.device import Device
from models.bundle import channel_history, publish_channel
from edge_fixtures import edge_model_dirs, flip_byte, make_bundle, signing_keys  # noqa: F401

CANARY_SHARE = 0.2


@pytest.fixture()
def fleet(edge_model_dirs, signing_keys, tmp_path):
    root = tmp_path / "bundles"
    for v in ("v1", "v2", "v3"):
        make_bundle(edge_model_dirs[v], root, v, signing_keys["private"])
    devices = [Device(f"dev-{i:04d}", tmp_path / "homes" / f"dev-{i:04d}", root.as_uri(),
                      signing_keys["public"], CANARY_SHARE) for i in range(20)]
    return root, devices


def _versions(devices):
    return {d.device_id: d.current_version() for d in devices}


def test_canary_then_stable_and_a_tampered_bundle_runs_nowhere(fleet):
    root, devices = fleet
    canary = {d.device_id for d in devices if d.channel() == "canary"}
    # Deterministic ids: the cohort is fixed, about CANARY_SHARE of the fleet, never all or none.
    assert 1 <= len(canary) <= 8, canary
    assert canary == {d.device_id for d in devices if d.channel() == "canary"}
    at_default_share = [d for d in devices if Device(d.device_id, d.home, None, d.public_key, 0.1).channel() == "canary"]
    assert 1 <= len(at_default_share) <= 4 and {d.device_id for d in at_default_share} <= canary

    publish_channel(root, "stable", "v1", "first champion")
    assert all(d.sync().ok for d in devices)
    assert set(_versions(devices).values()) == {"v1"}

    publish_channel(root, "canary", "v2", "candidate passed the gate")
    results = {d.device_id: d.sync() for d in devices}
    assert all(r.ok for r in results.values())
    for d in devices:
        expected = "v2" if d.device_id in canary else "v1"
        assert d.current_version() == expected
        assert d.predict("where is my order").model_version == expected

    flip_byte(root / "v3" / "model.onnx")
    publish_channel(root, "canary", "v3", "tampered after signing")
    publish_channel(root, "stable", "v3", "tampered after signing")
    results = {d.device_id: d.sync() for d in devices}
    assert all(r.status == "refused" and "checksum mismatch" in r.reason for r in results.values())
    assert "v3" not in _versions(devices).values()
    assert all(d.predict("refund please").model_version in ("v1", "v2") for d in devices)

    publish_channel(root, "stable", "v2", "canary looked good")
    publish_channel(root, "canary", "v2", "canary back in step with stable")
    assert all(d.sync().ok for d in devices)
    assert set(_versions(devices).values()) == {"v2"}
    assert [h["model_version"] for h in channel_history(root)] == ["v1", "v2", "v3", "v3", "v2", "v2"]


def test_fleet_feedback_reaches_the_night(fleet, tmp_path):
    root, devices = fleet
    publish_channel(root, "stable", "v1", "first champion")
    for d in devices:
        d.sync()
        p = d.predict(f"order 1137 from {d.device_id} where is it")
        d.feedback(p.message_id, p.label, accepted=True)
    events = collect_feedback([d.home for d in devices])
    assert sorted(e["device_id"] for e in events) == sorted(d.device_id for d in devices)
    assert all(e["model_version"] == "v1" and e["text"] for e in events)
