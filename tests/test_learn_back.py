"""Learning back in the night (models/learn_back.py, the learn-back task): uploads from several
simulated devices, built and written with edge/patch_upload.py, averaged into a second candidate
made from a real tiny ONNX student."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.patch import Patch, base_fingerprint, base_outputs, labels_sha256
from edge.patch_upload import build_upload, write_upload
from edge.personal import PersonalConfig
from edge.predictor import OnnxPredictor
from edgeloop.config import ConfigError, load_settings
from models.federated import aggregate_uploads
from models.learn_back import choose, learn_back, pending_uploads
from edge_fixtures import LABELS, edge_model_dirs  # noqa: F401 - the fixture

TEXTS = ["where is my order", "i want a refund", "cancel my order", "wheres my stuff", "money back now"]
CLIP = 20.0
DEVICE_CFG = PersonalConfig(upload="dp_delta", dp_epsilon=100.0, dp_clip_norm=CLIP, dp_epsilon_total=100.0)


@pytest.fixture
def candidate(tmp_path, edge_model_dirs):
    """Tonight's candidate folder as the night writes it: ``edge/`` (a real tiny ONNX student)."""
    folder = tmp_path / "candidate"
    shutil.copytree(edge_model_dirs["v1"], folder / "edge")
    return folder


def _device_upload(edge, bias, seed):
    """A device's dense patch that pushes the logits by ``bias``, through the device's own upload
    builder (clipped to CLIP and noised with the Gaussian mechanism)."""
    c = len(LABELS)
    patch = Patch(np.zeros((c, 1), np.float32), np.zeros((1, c), np.float32), np.asarray(bias, np.float32),
                  np.zeros(c, np.float32), np.ones(c, np.float32),
                  meta={"features": "logits", "base_fingerprint": base_fingerprint(edge),
                        "labels_sha256": labels_sha256(LABELS)})
    payload, why = build_upload(patch, DEVICE_CFG, rng=np.random.default_rng(seed))
    assert payload is not None, why
    return payload


def _sync(tmp_path, inbox, payloads):
    """Each device writes its upload at home; the sync moves it into the server's inbox."""
    inbox.mkdir(parents=True, exist_ok=True)
    for i, payload in enumerate(payloads):
        path = write_upload(tmp_path / f"device-{i}", payload)
        path.replace(inbox / f"device-{i}-{path.name}")


def test_uploads_from_devices_become_a_learned_back_candidate(tmp_path, candidate):
    edge = candidate / "edge"
    target = LABELS.index("cancel_order")
    bias = np.zeros(len(LABELS))
    bias[target] = 10.0
    inbox = tmp_path / "inbox"
    _sync(tmp_path, inbox, [_device_upload(edge, bias, seed) for seed in range(6)])
    report = learn_back(inbox, candidate, tmp_path / "learned", fitted_on=None, clip_norm=CLIP, min_devices=3,
                        batch="2026-01-02")
    assert (report.devices, report.accepted, report.rejected, report.waiting) == (6, 6, 0, 0)
    assert report.exact and report.features == "logits" and report.folder == str(tmp_path / "learned")
    assert not pending_uploads(inbox) and len(list((inbox / "processed" / "2026-01-02").glob("*.json"))) == 6

    base, learned = OnnxPredictor(edge), OnnxPredictor(tmp_path / "learned" / "edge")
    before, _, _ = base_outputs(base, TEXTS)
    after, _, _ = base_outputs(learned, TEXTS)
    # The folder's graph adds the averaged delta: the device's intent now wins on every text.
    assert (before.argmax(1) != target).any()
    assert (after.argmax(1) == target).all()
    assert np.abs((after - before)[:, target] - 10.0).max() < 3.0  # the mean of 6 noised +10 pushes
    # Evaluated like the candidate: with golden texts of that intent the learned-back one is kept.
    verdict = choose((TEXTS, ["cancel_order"] * len(TEXTS)), edge, tmp_path / "learned" / "edge")
    assert verdict["keep"] and verdict["accuracy_learned_back"] == 1.0 > verdict["accuracy_plain"]
    assert verdict["fixed"] > 0 and verdict["broken"] == 0
    # and not kept when golden says the base was right.
    base_labels = [LABELS[i] for i in before.argmax(1)]
    assert not choose((TEXTS, base_labels), edge, tmp_path / "learned" / "edge")["keep"]


def test_one_huge_upload_cannot_dominate_the_average(tmp_path, candidate):
    edge = candidate / "edge"
    honest = [_device_upload(edge, [2.0, 0.0, 0.0], seed) for seed in range(4)]
    rogue = dict(honest[0])
    rogue["values"] = [0.0] * 9 + [0.0, -1e6, 1e6]  # a valid payload with an enormous bias push
    inbox = tmp_path / "inbox"
    _sync(tmp_path, inbox, [*honest, rogue])
    report = learn_back(inbox, candidate, tmp_path / "learned", fitted_on=None, clip_norm=CLIP, max_weight=1.0)
    assert report.accepted == 5 and report.clipped >= 1 and report.max_share == pytest.approx(0.2)
    # Every contribution is clipped to CLIP, so the mean is too, and the rogue's pull on it is
    # at most CLIP / 5 (its share), not 1e6 / 5.
    assert report.delta_norm <= CLIP + 1e-6
    fp, lh = base_fingerprint(edge), labels_sha256(LABELS)
    without = aggregate_uploads(honest, fingerprint=fp, labels_sha256=lh, clip_norm=CLIP).delta
    with_rogue = aggregate_uploads([*honest, rogue], fingerprint=fp, labels_sha256=lh, clip_norm=CLIP).delta
    assert np.linalg.norm(with_rogue - without * 4 / 5) <= CLIP / 5 + 1e-6
    base, _, _ = base_outputs(OnnxPredictor(edge), TEXTS)
    after, _, _ = base_outputs(OnnxPredictor(tmp_path / "learned" / "edge"), TEXTS)
    assert np.abs(after - base).max() <= CLIP / 5 + 4 * 2.0  # bounded: nothing near 1e6 / 5


def test_invalid_uploads_are_quarantined_with_a_reason(tmp_path, candidate, edge_model_dirs):
    edge = candidate / "edge"
    good = [_device_upload(edge, [0.0, 3.0, 0.0], seed) for seed in range(2)]
    inbox = tmp_path / "inbox"
    _sync(tmp_path, inbox, good)
    (inbox / "torn.json").write_text('{"format": ')
    (inbox / "text.json").write_text(json.dumps({**good[0], "text": "wheres my stuff"}))
    (inbox / "other-base.json").write_text(json.dumps({**good[0], "base_fingerprint": "b" * 64}))
    (inbox / "other-labels.json").write_text(json.dumps({**good[0], "labels_sha256": labels_sha256(LABELS[::-1])}))
    (inbox / "pooled.json").write_text(json.dumps({**good[0], "features": "pooled"}))
    report = learn_back(inbox, candidate, tmp_path / "learned", fitted_on=None, clip_norm=CLIP, min_devices=1)
    assert (report.devices, report.accepted, report.rejected) == (7, 2, 5)
    rejected = inbox / "rejected"
    reasons = {p.name: (rejected / f"{p.stem}.reason.txt").read_text() for p in rejected.glob("*.json")}
    assert set(reasons) == {"torn.json", "text.json", "other-base.json", "other-labels.json", "pooled.json"}
    assert "unknown field" in reasons["text.json"] and "fitted on base model" in reasons["other-base.json"]
    assert "label set" in reasons["other-labels.json"] and "candidate takes logits" in reasons["pooled.json"]
    assert all(r.strip() for r in reasons.values()) and report.folder is not None
    # Uploads fitted on what the devices run (the champion), not on the candidate, are accepted
    # there; the edit is then marked as not exact.
    _sync(tmp_path / "again", inbox, [_device_upload(edge_model_dirs["v2"], [0.0, 3.0, 0.0], 0)])
    other = learn_back(inbox, candidate, tmp_path / "learned2", fitted_on=base_fingerprint(edge_model_dirs["v2"]),
                       clip_norm=CLIP)
    assert other.accepted == 1 and not other.exact


def test_too_few_devices_wait_in_the_inbox(tmp_path, candidate):
    inbox = tmp_path / "inbox"
    _sync(tmp_path, inbox, [_device_upload(candidate / "edge", [1.0, 0.0, 0.0], 0)])
    report = learn_back(inbox, candidate, tmp_path / "learned", fitted_on=None, clip_norm=CLIP, min_devices=3)
    assert report.folder is None and report.waiting == 1 and "min_devices is 3" in report.reasons[0]
    assert len(pending_uploads(inbox)) == 1 and not (tmp_path / "learned").exists()
    with pytest.raises(ValueError, match="min_devices"):
        learn_back(inbox, candidate, tmp_path / "learned", fitted_on=None, clip_norm=CLIP, min_devices=0)


def test_the_option_is_off_by_default_and_off_does_nothing(tmp_path, candidate):
    from tasks.fleet import learn_back as learn_back_task

    settings = load_settings(overrides={"home": str(tmp_path / "home")}, environ={})
    assert settings.federated.enabled is False
    inbox = settings.federated.inbox(settings.home_path())
    assert inbox == tmp_path / "home" / "patch_uploads" / "inbox"
    _sync(tmp_path, inbox, [_device_upload(candidate / "edge", [1.0, 0.0, 0.0], 0)])
    plain = {"folder": str(candidate), "n_train": 1}
    assert learn_back_task.fn(settings, None, None, plain, "2026-01-02", "run") is plain
    assert len(pending_uploads(inbox)) == 1 and not (inbox / "processed").exists()
    assert not (settings.home_path() / "work").exists()
    with pytest.raises(ConfigError, match="federated.clip_norm"):
        load_settings(overrides={"federated": {"clip_norm": 0}}, environ={})
    with pytest.raises(ConfigError, match="federated.min_devices"):
        load_settings(overrides={"federated": {"min_devices": 0}}, environ={})


def test_enabled_night_step_keeps_the_learned_back_candidate_and_logs_it(tmp_path, candidate):
    """The learn-back task on a real split (the shop's own seed/golden files), a real MLflow store."""
    from prefect.logging import disable_run_logger

    from models import registry, tracking
    from models.stores import StudentStore
    from tasks.common import SplitRef, experiment, load_data
    from tasks.fleet import learn_back as learn_back_task

    rows = [("wheres my stuff", "cancel_order"), ("cancel my order", "cancel_order"),
            ("stop the order hello", "cancel_order"), ("please cancel the order now", "cancel_order")]
    seed = [("where is my order", "track_order"), ("i want a refund", "get_refund"), ("cancel it", "cancel_order")]
    for name, data in (("seed.csv", seed), ("golden.csv", rows)):
        (tmp_path / name).write_text("instruction,intent\n" + "".join(f"{t},{y}\n" for t, y in data))
    settings = load_settings(environ={}, overrides={
        "home": str(tmp_path / "home"), "federated": {"enabled": True, "clip_norm": CLIP, "min_devices": 2},
        "dataset": {"seed_path": str(tmp_path / "seed.csv"), "golden_path": str(tmp_path / "golden.csv")}})
    with disable_run_logger():  # the tasks' plain functions, outside a flow run
        data: SplitRef = load_data.fn(settings)
    bias = np.zeros(len(LABELS))
    bias[LABELS.index("cancel_order")] = 10.0
    _sync(tmp_path, settings.federated.inbox(settings.home_path()),
          [_device_upload(candidate / "edge", bias, s) for s in range(3)])
    tracking.activate(settings.tracking_uri())
    run_id = tracking.start_parent_run(experiment(settings), "nightly-test", {}, {})
    plain = {"folder": str(candidate), "n_train": 1}
    store = StudentStore.from_settings(settings)  # no champion yet: uploads are checked against the candidate
    with disable_run_logger():
        got = learn_back_task.fn(settings, store, data, plain, "2026-01-02", run_id)
    assert got["learned_back"] and got["folder"] != plain["folder"] and got["n_train"] == 1
    assert (tmp_path / "home" / "work" / "2026-01-02" / "candidate-learned-back" / "edge" / "model.onnx").is_file()
    c = registry.client(settings.tracking_uri())
    step = next(r for r in c.search_runs([experiment(settings).experiment_id()])
                if r.info.run_name == "learn-back")
    assert step.data.params["devices"] == "3" and step.data.params["accepted"] == "3"
    assert step.data.params["rejected"] == "0" and step.data.params["kept"] == "True"
    m = step.data.metrics
    assert m["golden_accuracy_learned_back"] == 1.0 > m["golden_accuracy_plain"]
