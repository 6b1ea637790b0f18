"""A device learns from its own corrections, through the real Device, CLI and HTTP API.

Bundles are the tiny fixture students with their pooled output exported (as the night's
write_edge_folder now does). The device's users write "where's my stuff" for one intent the base
model gets wrong; after ~30 corrections and a personalization, the device answers that phrasing
with the corrected intent while accepted texts keep their answers; status, the CLI and HTTP show
the patch; reset drops it; a new base bundle refits it from the stored examples; and the upload
policy decides what leaves the device (never text).
"""

from __future__ import annotations

import json
import shutil

import pytest

from edge import cli
from edge.device import Device
from edge.patch_upload import UPLOAD_DIR, validate_upload
from edge.personal import PersonalConfig
from models.bundle import publish_channel
from models.federated import add_pooled_output
from edge_fixtures import edge_model_dirs, make_bundle, signing_keys  # noqa: F401
from test_edge_server import call, serving

PERSONAL = ["wheres my stuff", "where is my stuff", "my stuff where is it", "stuff not here yet",
            "where did my stuff go", "is my stuff coming", "wheres the stuff", "stuff where"]
OTHERS = ["where is my order", "track my package please", "i want a refund", "give me my money back",
          "cancel my order", "please cancel the order now", "refund the payment please",
          "when will my order arrive", "stop the order hello", "cancel the order", "my money back",
          "track my order please"]
UNRELATED = ["refund the payment please", "cancel my order", "track my package please"]
# Small-device settings (the defaults want 20 examples and 4 folds; this device has 36).
CFG = dict(min_examples=8, min_corrections=2, gate_folds=2, rank=2)


@pytest.fixture()
def world(edge_model_dirs, signing_keys, tmp_path):
    """Signed pooled-output bundles v1, v2; stable -> v1."""
    root = tmp_path / "bundles"
    for v in ("v1", "v2"):
        pooled = tmp_path / "pooled" / v
        shutil.copytree(edge_model_dirs[v], pooled)
        add_pooled_output(edge_model_dirs[v] / "model.onnx", pooled / "model.onnx")
        make_bundle(pooled, root, v, signing_keys["private"])
    publish_channel(root, "stable", "v1", "first")
    return {"root": root, "keys": signing_keys, "home": tmp_path / "home"}


def _device(world, **cfg) -> Device:
    return Device("dev-0001", world["home"], world["root"], world["keys"]["public"], canary_share=0.0,
                  personal=PersonalConfig(**{**CFG, **cfg}))


def _teach(device: Device) -> tuple[str, dict]:
    """~30 corrections of the personal phrasing to an intent the base never gives it, plus accepted
    answers for ordinary texts; returns the target intent and the last feedback event."""
    base = {device.predict(t).label for t in PERSONAL}
    target = next(lab for lab in reversed(device.labels()) if lab not in base)
    event = None
    for text in [f"{t} {'please ' * r}".strip() for r in range(3) for t in PERSONAL]:
        p = device.predict(text)
        event = device.feedback(p.message_id, p.label, False, target)
    for text in OTHERS:
        p = device.predict(text)
        event = device.feedback(text, p.label, True)
    return target, event


def test_device_learns_its_phrasing_shows_and_resets_its_patch(world):
    device = _device(world, refit_every=36)  # the 36th labelled event refits
    assert device.sync().ok
    before = {t: device.predict(t).label for t in UNRELATED}
    mine = device.predict(PERSONAL[0])
    assert not mine.patched and mine.base_label == mine.label

    target, last = _teach(device)
    assert mine.label != target
    decision = last["personalization"]  # the refit the last correction triggered
    assert decision["active"], decision
    assert "personalization" not in next((device.home / "feedback").glob("*.jsonl")).read_text()

    answer = device.predict(PERSONAL[0])
    assert answer.label == target and answer.patched and answer.base_label == mine.label
    assert {t: device.predict(t).label for t in UNRELATED} == before

    status = device.status()["personalization"]
    assert status["active"] and status["base_version"] == "v1" and status["upload_policy"] == "none"
    assert status["features"] == "pooled" and 0 < status["bytes"] <= 16 * 1024
    assert status["gate"]["patched_correct"] >= status["gate"]["base_correct"]
    assert any(c["to"] == target for c in status["changes"]) and status["pending_examples"] == 0
    assert not any(t in json.dumps(status) for t in PERSONAL)  # what it changed, never the texts

    # A new process on the same home serves the saved patch without refitting.
    again = _device(world)
    assert again.predict(PERSONAL[0]).label == target
    assert again.patch_status()["fitted_at"] == status["fitted_at"]

    reset = again.reset_patch()
    assert not reset["active"] and reset["reason"] == "reset"
    assert not again.predict(PERSONAL[0]).patched
    # ...and it stays reset in the next process (no silent refit for the same base model).
    assert not _device(world).predict(PERSONAL[0]).patched
    assert _device(world).personalize()["active"]  # on request it learns again from what is stored


def test_a_new_base_bundle_refits_from_stored_examples(world):
    device = _device(world, refit_every=0)
    assert device.sync().ok
    target, last = _teach(device)
    assert "personalization" not in last  # refit_every=0: only on request
    assert not device.predict(PERSONAL[0]).patched
    assert device.personalize()["active"]

    publish_channel(world["root"], "stable", "v2", "next night")
    assert device.sync().status == "updated"
    status = device.patch_status()
    assert status["active"], status
    assert status["base_version"] == "v2" and status["why_fitted"].startswith("refit")
    assert device.predict(PERSONAL[0]).label == target
    assert device.rollback() == "v1"  # back on v1: the patch refits for v1 again
    assert device.patch_status()["base_version"] == "v1" and device.predict(PERSONAL[0]).label == target


def test_upload_policy_none_writes_nothing_and_dp_delta_writes_no_text(world):
    device = _device(world, refit_every=0)
    assert device.sync().ok
    _teach(device)
    assert device.personalize()["active"]
    out = device.patch_upload()
    assert out["policy"] == "none" and out["written"] is None and "nothing leaves" in out["reason"]
    assert not (world["home"] / UPLOAD_DIR).exists()

    dp = _device(world, upload="dp_delta", dp_epsilon=4.0, dp_epsilon_total=8.0)
    first = dp.patch_upload()
    assert first["written"] and first["privacy_spent"]["epsilon"] == 4.0
    raw = open(first["written"], encoding="utf-8").read()
    payload = validate_upload(json.loads(raw))
    assert not any(t in raw for t in PERSONAL + OTHERS) and "dev-0001" not in raw
    assert payload["epsilon"] == 4.0
    assert dp.patch_upload()["written"]
    spent = dp.patch_upload()  # a third would pass dp_epsilon_total
    assert spent["written"] is None and "privacy budget spent" in spent["reason"]
    assert len(list((world["home"] / UPLOAD_DIR).glob("*.json"))) == 2


def test_cli_and_http_show_the_patch(world, capsys):
    device = _device(world, refit_every=0)
    assert device.sync().ok
    target, _ = _teach(device)
    assert device.personalize()["active"]
    common = ["--home", str(world["home"]), "--bundles", str(world["root"]),
              "--public-key", str(world["keys"]["public"]), "--device-id", "dev-0001"]

    def run(*args) -> tuple[int, dict]:
        code = cli.main([*common, *args])
        return code, json.loads(capsys.readouterr().out)

    code, shown = run("predict", PERSONAL[0])
    assert code == 0 and shown["label"] == target and shown["patched"] and shown["base_label"] != target
    code, patch = run("patch")
    assert code == 0 and patch["active"] and patch["base_version"] == "v1" and patch["upload_policy"] == "none"
    code, up = run("patch-upload")
    assert code == 0 and up["written"] is None and up["policy"] == "none"

    with serving(_device(world)) as base:
        status, body = call(f"{base}/predict", {"text": PERSONAL[0]})
        assert status == 200 and body["label"] == target and body["patched"] and body["base_label"] != target
        status, body = call(f"{base}/patch")
        assert status == 200 and body["active"] and body["bytes"] <= 16 * 1024
        assert call(f"{base}/health")[1]["personalization"]["active"]
        status, body = call(f"{base}/patch/reset", {})
        assert status == 200 and not body["active"]
        status, body = call(f"{base}/predict", {"text": PERSONAL[0]})
        assert not body["patched"] and body["label"] == body["base_label"]

    code, patch = run("patch", "--reset")
    assert code == 0 and not patch["active"]
    code, again = run("personalize")  # the CLI's default settings: 4 folds, 20 examples at least
    assert code == 0 and again["gate"]["heldout"] == 36, again
