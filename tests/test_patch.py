"""Per-device patches (edge/patch.py, edge/personal.py), the upload policy (edge/patch_upload.py)
and federated averaging back into the student (models/federated.py), on real tiny ONNX students."""

from __future__ import annotations

import json
import shutil
import uuid

import numpy as np
import pytest

from edge.feedback import append_event, make_event, message_id
from edge.patch import (IncompatiblePatch, Patch, PatchError, base_fingerprint, base_outputs, softmax,
                        fit_patch, labels_sha256, load_patch, save_patch)
from edge.patch_upload import (PrivacyLedger, assert_no_text, build_upload, clip, gaussian_sigma,
                               upload_matrix, validate_upload)
from edge.personal import (PersonalConfig, Personalizer, feedback_events, gate_patch, record_all,
                           sign_test_p)
from edge.predictor import OnnxPredictor
from models.federated import (add_pooled_output, aggregate_uploads, apply_delta_onnx,
                              apply_delta_safetensors, fedavg, fold_delta)
from edge_fixtures import LABELS, edge_model_dirs  # noqa: F401 - the fixture

# The device's own phrasing for one intent: words the base model never saw in training.
PERSONAL = ["wheres my stuff", "where is my stuff", "my stuff where is it", "stuff not here yet",
            "where did my stuff go", "is my stuff coming", "wheres the stuff", "stuff where"]
OTHERS = ["where is my order", "track my package please", "i want a refund", "give me my money back",
          "cancel my order", "please cancel the order now", "refund the payment please",
          "when will my order arrive", "stop the order hello", "cancel the order", "my money back",
          "track my order please"]
CFG = PersonalConfig(min_examples=8, min_corrections=2, gate_folds=2, rank=2)


@pytest.fixture(scope="module")
def pooled_dirs(edge_model_dirs, tmp_path_factory):
    """The tiny students with their pooled output exported (hidden 32): richer features than the
    3 logits of a 3-intent model, as a night exporting ``pooled`` would ship."""
    root = tmp_path_factory.mktemp("pooled")
    out = {}
    for name in ("v1", "v2"):
        shutil.copytree(edge_model_dirs[name], root / name)
        add_pooled_output(edge_model_dirs[name] / "model.onnx", root / name / "model.onnx")
        out[name] = root / name
    return out


def _event(text, predicted, label):
    accepted = predicted == label
    return make_event(device_id="dev-test1", model_version="v1", message_id=message_id(text), text=text,
                      predicted=predicted, accepted=accepted, corrected_label=None if accepted else label)


def _personal_target(predictor) -> str:
    """A label the base model does not give the personal phrasing (so learning it is a change)."""
    base = {lab for lab, _ in predictor.predict(PERSONAL)}
    return next(lab for lab in reversed(LABELS) if lab not in base)


def _teach(personalizer, predictor, repeats=3):
    target = _personal_target(predictor)
    texts = [f"{t} {'please ' * r}".strip() for r in range(repeats) for t in PERSONAL]
    for text, (pred, _) in zip(texts, predictor.predict(texts)):
        personalizer.record(_event(text, pred, target))
    for text, (pred, _) in zip(OTHERS, predictor.predict(OTHERS)):
        personalizer.record(_event(text, pred, pred))  # accepted: anchors what the base does well
    return target


def test_fitting_changes_the_answer_for_the_devices_own_phrasing(tmp_path, pooled_dirs):
    folder = pooled_dirs["v1"]
    predictor = OnnxPredictor(folder)
    pers = Personalizer(tmp_path, CFG)
    target = _teach(pers, predictor)
    mine = PERSONAL[0]  # the device's own phrasing, as its users write it
    assert pers.predict(predictor, [mine])[0]["label"] != target  # no patch yet: the base answers

    status = pers.fit(predictor, model_version="v1", fingerprint=base_fingerprint(folder))
    assert status["active"], status
    answer = pers.predict(predictor, [mine])[0]
    assert answer["label"] == target and answer["patched"] and answer["base_label"] != target
    assert sum(a["label"] == target for a in pers.predict(predictor, PERSONAL)) >= len(PERSONAL) - 1
    assert status["gate"]["patched_correct"] >= status["gate"]["base_correct"]
    assert any(c["to"] == target for c in status["changes"])
    assert status["bytes"] <= CFG.max_patch_bytes and status["fit_ms"] < 1000
    # Accepted answers mostly stay as they were (a random tiny model separates them only so well).
    others = pers.predict(predictor, OTHERS)
    assert sum(o["label"] == o["base_label"] for o in others) >= len(OTHERS) - 2
    # A fresh process (a new Personalizer) serves the saved patch; reset drops it.
    again = Personalizer(tmp_path, CFG)
    assert again.refresh(predictor, model_version="v1", fingerprint=base_fingerprint(folder))["active"]
    assert again.predict(predictor, [mine])[0]["label"] == target
    again.reset()
    assert not again.patch_path.exists() and not again.status()["active"]
    assert again.predict(predictor, [mine])[0]["label"] != target


def test_size_budget_is_enforced(tmp_path, edge_model_dirs):
    rng = np.random.default_rng(0)
    logits, feats, y = rng.normal(size=(40, 150)), rng.normal(size=(40, 128)), rng.integers(0, 150, 40)
    patch = fit_patch(logits, feats, y, rank=8, steps=5)
    size = save_patch(patch, tmp_path / "p.npz")
    assert size <= 16 * 1024
    big = fit_patch(logits, feats, y, rank=32, steps=5)
    with pytest.raises(PatchError, match="above the budget of 16384"):
        save_patch(big, tmp_path / "big.npz")
    assert not (tmp_path / "big.npz").exists()
    with pytest.raises(PatchError, match="budget"):
        load_patch(tmp_path / "p.npz", fingerprint="x", labels=[str(i) for i in range(150)], max_bytes=1000)
    # The device refuses a configuration whose patch cannot fit before fitting anything.
    predictor = OnnxPredictor(edge_model_dirs["v1"])
    pers = Personalizer(tmp_path / "dev", PersonalConfig(rank=4, max_patch_bytes=2000, min_examples=8))
    with pytest.raises(PatchError, match="max_patch_bytes=2000"):
        pers.fit(predictor, model_version="v1", fingerprint="f")


def test_patch_file_round_trips_without_pickle_and_rejects_junk(tmp_path):
    rng = np.random.default_rng(1)
    logits, feats, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 8)), rng.integers(0, 3, 30)
    patch = fit_patch(logits, feats, y, rank=2)
    patch.meta.update(base_fingerprint="f" * 64, labels_sha256=labels_sha256(LABELS), model_version="v1")
    save_patch(patch, tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert set(z.files) == {"u", "v", "b", "mu", "sd", "meta"}
    back = load_patch(tmp_path / "p.npz", fingerprint="f" * 64, labels=LABELS)
    np.testing.assert_allclose(back.apply(logits, feats), patch.apply(logits, feats), rtol=1e-6)
    # The dense form is the same map: what an upload carries and what folds into the classifier.
    dense = patch.dense()
    np.testing.assert_allclose(feats @ dense[:-1] + dense[-1], patch.delta(feats), atol=1e-4)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PatchError, match="not a patch file"):
        load_patch(tmp_path / "junk.npz", fingerprint="f" * 64, labels=LABELS)


def test_gate_refuses_a_harmful_patch(tmp_path):
    """Contradictory corrections: each phrase is labelled one way in one fold and the other way in
    the other. A patch learnt from one fold flips the other: held-out accuracy drops, so no patch."""
    rng = np.random.default_rng(2)
    phrases = rng.normal(size=(12, 16))
    logits0 = np.tile([3.0, 0.0, 0.0], (12, 1))  # the base says label 0 for all of them
    mids_even = [m for m in (uuid.uuid4().hex for _ in range(400)) if int(m[:8], 16) % 2 == 0][:12]
    mids_odd = [m for m in (uuid.uuid4().hex for _ in range(400)) if int(m[:8], 16) % 2 == 1][:12]
    feats = np.vstack([phrases, phrases])
    logits = np.vstack([logits0, logits0])
    y = np.array([0] * 12 + [1] * 12)  # fold 0 agrees with the base, fold 1 "corrects" to label 1
    cfg = PersonalConfig(min_examples=8, min_corrections=2, gate_folds=2, rank=2)
    result = gate_patch(logits, feats, y, mids_even + mids_odd, cfg)
    assert not result.kept and result.patched_correct < result.base_correct
    assert "patch lowers held-out accuracy" in result.reason and result.broken > result.fixed
    # A patch that helps, but not beyond chance (gate_max_p), is refused too.
    y_good = np.array([0] * 12 + [1] * 12)
    feats_good = np.vstack([phrases, rng.normal(size=(12, 16)) + 3.0])  # the corrections look alike
    mixed = mids_even[:6] + mids_odd[:6] + mids_even[6:] + mids_odd[6:]  # both labels in both folds
    helps = gate_patch(logits, feats_good, y_good, mixed, cfg)
    assert helps.kept and helps.p_value <= cfg.gate_max_p and helps.fixed > helps.broken
    assert helps.p_value == pytest.approx(sign_test_p(helps.fixed, helps.broken), abs=1e-6)
    strict = PersonalConfig(**{**cfg.__dict__, "gate_max_p": helps.p_value / 2})
    refused = gate_patch(logits, feats_good, y_good, mixed, strict)
    assert not refused.kept and "gain not shown" in refused.reason
    # The sign test: 3 fixes and no break is chance (1/8); 5 and none is not (1/32).
    assert sign_test_p(3, 0) == pytest.approx(0.125) and sign_test_p(5, 0) == pytest.approx(1 / 32)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(6, 6) > 0.5
    # Too little evidence is refused as well.
    few = gate_patch(logits[:6], feats[:6], y[:6], mids_even[:6], cfg)
    assert not few.kept and "min_examples" in few.reason


def test_device_gate_leaves_no_patch_when_it_fails(tmp_path, pooled_dirs):
    predictor = OnnxPredictor(pooled_dirs["v1"])
    pers = Personalizer(tmp_path, PersonalConfig(min_examples=50))
    _teach(pers, predictor)
    status = pers.fit(predictor, model_version="v1", fingerprint=base_fingerprint(pooled_dirs["v1"]))
    assert not status["active"] and "min_examples=50" in status["reason"]
    assert not pers.patch_path.exists()


def test_dp_payload_has_no_text_and_respects_the_clip_norm(tmp_path, pooled_dirs):
    folder = pooled_dirs["v1"]
    predictor = OnnxPredictor(folder)
    pers = Personalizer(tmp_path, CFG)
    _teach(pers, predictor)
    pers.fit(predictor, model_version="v1", fingerprint=base_fingerprint(folder))
    _, texts, _ = pers.examples(predictor.labels)

    none_cfg = CFG
    assert build_upload(pers.patch, none_cfg)[0] is None  # default policy: nothing leaves
    cfg = PersonalConfig(**{**CFG.__dict__, "upload": "dp_delta", "dp_epsilon": 2.0, "dp_clip_norm": 0.5,
                            "dp_epsilon_total": 3.0})
    ledger = PrivacyLedger(tmp_path / "personal")
    payload, reason = build_upload(pers.patch, cfg, ledger=ledger, rng=np.random.default_rng(7), texts=texts)
    assert payload is not None, reason
    blob = json.dumps(payload)
    assert not any(t in blob for t in texts)
    assert_no_text(payload, texts)
    sigma = gaussian_sigma(2.0, cfg.dp_delta, 2 * 0.5)
    assert payload["sigma"] == pytest.approx(sigma)
    dense = pers.patch.dense().astype(np.float64).ravel()
    expected = clip(dense, 0.5) + np.random.default_rng(7).normal(0.0, sigma, dense.size)
    np.testing.assert_allclose(upload_matrix(payload).ravel(), expected, atol=1e-5)
    assert np.linalg.norm(clip(dense, 0.5)) <= 0.5 + 1e-9 < np.linalg.norm(dense)
    # The budget: a second upload would pass dp_epsilon_total=3 (2 + 2): refused.
    again, why = build_upload(pers.patch, cfg, ledger=ledger, texts=texts)
    assert again is None and "privacy budget spent" in why
    # A payload carrying text, or a field not in the format, is refused by name.
    for bad in ({**payload, "text": texts[0]}, {**payload, "features": texts[0]}):
        with pytest.raises(ValueError, match="unknown field|'features'"):
            validate_upload(bad)
    with pytest.raises(ValueError, match="device text"):
        assert_no_text(payload, [payload["base_fingerprint"]])


def test_load_refuses_a_patch_for_another_base_model_and_refits(tmp_path, pooled_dirs):
    v1, v2 = pooled_dirs["v1"], pooled_dirs["v2"]
    p1, p2 = OnnxPredictor(v1), OnnxPredictor(v2)
    pers = Personalizer(tmp_path, CFG)
    _teach(pers, p1)
    assert pers.fit(p1, model_version="v1", fingerprint=base_fingerprint(v1))["active"]
    with pytest.raises(IncompatiblePatch, match="base model 'v1'"):
        load_patch(pers.patch_path, fingerprint=base_fingerprint(v2), labels=p2.labels)
    with pytest.raises(IncompatiblePatch, match="label set"):
        load_patch(pers.patch_path, fingerprint=base_fingerprint(v1), labels=list(reversed(LABELS)))
    # The same weights re-published keep the patch; new weights get one refitted from the examples.
    assert Personalizer(tmp_path, CFG).refresh(p1, model_version="v1b", fingerprint=base_fingerprint(v1))["active"]
    status = Personalizer(tmp_path, CFG).refresh(p2, model_version="v2", fingerprint=base_fingerprint(v2))
    assert "refit" in status["why_fitted"] and "base model 'v1'" in status["why_fitted"]
    assert status["active"] and status["model_version"] == "v2"
    assert Patch.from_bytes(pers.patch_path.read_bytes()).meta["base_fingerprint"] == base_fingerprint(v2)


def test_fedavg_bounds_each_devices_contribution():
    # Flower's aggregate semantics: the example-weighted mean.
    out = fedavg([([np.ones(2)], 1), ([np.zeros(2)], 3)])
    np.testing.assert_allclose(out[0], [0.25, 0.25])

    fp, lh = "a" * 64, labels_sha256(LABELS)

    def upload(matrix, **over):
        return {"format": "edgeloop-patch-delta/1", "mechanism": "gaussian-analytic", "features": "logits",
                "base_fingerprint": fp, "labels_sha256": lh, "clip_norm": 1.0, "epsilon": 1.0, "delta": 1e-5,
                "sigma": 1.0, "shape": list(matrix.shape), "values": matrix.ravel().tolist(), **over}

    honest = [upload(np.full((4, 3), 0.1)) for _ in range(9)]
    rogue = upload(np.full((4, 3), 1e6))
    agg = aggregate_uploads([*honest, rogue], fingerprint=fp, labels_sha256=lh, clip_norm=1.0,
                            weight_cap=5.0, weights=[5] * 9 + [10_000])
    assert agg.devices == 10
    assert agg.max_share == pytest.approx(0.1)  # the rogue's 10,000 examples count as 5, like the others'
    # Its delta is clipped to norm 1: its pull on the mean is at most 1 * 0.1.
    honest_mean = np.full((4, 3), 0.1) * (min(1.0, 1.0 / np.linalg.norm(np.full(12, 0.1))))
    assert np.linalg.norm(agg.delta - 0.9 * honest_mean) <= 0.1 + 1e-9
    # With the fleet's DP noise allowed for, the bound grows by sigma (sqrt(size) + 4), no more.
    alone = aggregate_uploads([rogue], fingerprint=fp, labels_sha256=lh, clip_norm=1.0, noise_sigma=0.5)
    assert np.linalg.norm(alone.delta) == pytest.approx(1.0 + 0.5 * (np.sqrt(12) + 4))
    other = aggregate_uploads([upload(np.ones((4, 3)), base_fingerprint="b" * 64), {"text": "hi"}],
                              fingerprint=fp, labels_sha256=lh, clip_norm=1.0)
    assert other.devices == 0 and len(other.refused) == 2 and other.delta is None


def test_averaged_delta_folds_into_the_student_exactly(tmp_path, edge_model_dirs):
    """Learning back: logits of the edited ONNX student == base logits + the patch, for both feature
    kinds; and the classifier-weight fold gives the same map."""
    src = edge_model_dirs["v1"]
    pooled_dir = tmp_path / "pooled"
    shutil.copytree(src, pooled_dir)
    add_pooled_output(src / "model.onnx", pooled_dir / "model.onnx")
    texts = PERSONAL + OTHERS
    rng = np.random.default_rng(3)
    for folder, kind in ((src, "logits"), (pooled_dir, "pooled")):
        predictor = OnnxPredictor(folder)
        logits, feats, got_kind = base_outputs(predictor, texts)
        assert got_kind == kind
        np.testing.assert_allclose(predictor.predict_proba(texts).argmax(1), logits.argmax(1))
        patch = fit_patch(logits, feats, rng.integers(0, 3, len(texts)), rank=2)
        out = tmp_path / f"learned-{kind}"
        shutil.copytree(folder, out)
        apply_delta_onnx(folder / "model.onnx", out / "model.onnx", patch.dense(), kind, step=1.0)
        edited = OnnxPredictor(out)
        got, _, _ = base_outputs(edited, texts)
        # float32 on both sides: the tolerance follows the size of the summands (a random tiny
        # model's features barely vary, so the standardized weights and bias are large and cancel).
        dense = patch.dense()
        scale = float((np.abs(feats) @ np.abs(dense[:-1])).max() + np.abs(dense[-1]).max())
        np.testing.assert_allclose(got, patch.apply(logits, feats), atol=max(1e-3, 1e-5 * scale))
    # Folding into the classifier's weights gives the same map, for either feature kind.
    h = rng.normal(size=(20, 16))
    w, b = rng.normal(size=(3, 16)), rng.normal(size=3)
    z = h @ w.T + b
    for kind, feats in (("pooled", h), ("logits", z)):
        patch = fit_patch(z, feats, rng.integers(0, 3, 20), rank=2)
        w2, b2 = fold_delta(w, b, patch.dense().astype(np.float64), kind)
        np.testing.assert_allclose(h @ w2.T + b2, patch.apply(z, feats), atol=1e-3)


def test_delta_folds_into_a_float_students_safetensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(4)
    w, b, other = (rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=3).astype(np.float32),
                   rng.normal(size=(5, 16)).astype(np.float32))
    save_file({"classifier.weight": w, "classifier.bias": b, "bert.pooler.dense.weight": other},
              str(tmp_path / "model.safetensors"))
    delta = rng.normal(size=(17, 3))
    apply_delta_safetensors(tmp_path, delta, "pooled", step=0.5)
    got = load_file(str(tmp_path / "model.safetensors"))
    want_w, want_b = fold_delta(w, b, delta, "pooled", step=0.5)
    np.testing.assert_allclose(got["classifier.weight"], want_w, rtol=1e-6)
    np.testing.assert_allclose(got["classifier.bias"], want_b, rtol=1e-6)
    np.testing.assert_array_equal(got["bert.pooler.dense.weight"], other)  # nothing else moves
    with pytest.raises(ValueError, match="pooled delta is"):
        apply_delta_safetensors(tmp_path, rng.normal(size=(9, 3)), "pooled")


def test_a_devices_existing_feedback_files_become_examples(tmp_path):
    events = [_event("wheres my stuff", "get_refund", "track_order"),  # a correction
              _event("cancel my order", "cancel_order", "cancel_order"),  # accepted
              {**_event("no idea", "get_refund", "get_refund"), "accepted": False}]  # rejected, no label
    for e in events:
        append_event(tmp_path, e)
    with open(tmp_path / "feedback" / "2000-01-01.jsonl", "w") as fh:
        fh.write('{"torn": \n')
    pers = Personalizer(tmp_path)
    assert record_all(pers, feedback_events(tmp_path)) == 2
    mids, texts, y = pers.examples(LABELS)
    assert texts == ["wheres my stuff", "cancel my order"]
    assert [LABELS[i] for i in y] == ["track_order", "cancel_order"]


def test_night_export_ships_pooled_through_int8(tmp_path, edge_model_dirs):
    """write_edge_folder adds ``pooled`` before quantizing: it must survive int8 and stay out of
    the predictor's way (OnnxPredictor asks for logits only)."""
    from models.quantize import quantize_int8

    folder = tmp_path / "int8"
    shutil.copytree(edge_model_dirs["v1"], folder)
    add_pooled_output(edge_model_dirs["v1"] / "model.onnx", tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", folder / "model.onnx")
    predictor = OnnxPredictor(folder)
    logits, feats, kind = base_outputs(predictor, OTHERS)
    assert kind == "pooled" and feats.shape == (len(OTHERS), 32) and np.isfinite(feats).all()
    np.testing.assert_allclose(softmax(logits), predictor.predict_proba(OTHERS), atol=1e-5)
