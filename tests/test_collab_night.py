"""The night's end-cloud collaboration: calibration slice, policy choice, gate checks, signed policy.

Tiny real ONNX models (tests/edge_fixtures.py) and a synthetic lake keep most of these fast; the
last test trains a real student on the bundled Bitext data with outlier exposure and calibrates it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from data_contracts.datasets import message_id
from data_contracts.lake import Lake
from edge.collab import CollabPolicy
from edgeloop.config import CollabConfig
from edge_fixtures import CORPUS, LABELS, edge_model_dirs, make_bundle, signing_keys  # noqa: F401
from rollout_fixtures import register, settings, store  # noqa: F401
from tests.test_student import TINY, teacher_dir  # noqa: F401

DAY0 = datetime(2026, 3, 1, 3, tzinfo=timezone.utc)


def _lake(root, n_days: int = 4, per_day: int = 60) -> Lake:
    """Day 0: gold seed rows; later days: teacher-labelled stream rows (one-hot teacher labels)."""
    lake = Lake(root)
    eye = np.eye(len(LABELS), dtype=np.float32)
    for d in range(n_days):
        texts = [f"{CORPUS[i % len(CORPUS)]} {d}-{i}" for i in range(per_day)]
        ys = [LABELS[(i % len(CORPUS)) // 3] for i in range(per_day)]
        ids = [message_id(t) for t in texts]
        lake.append_messages(pd.DataFrame({"message_id": ids, "text": texts, "gold_label": ys if d == 0 else None}),
                             "seed" if d == 0 else "stream", received_at=DAY0 + timedelta(days=d))
        probs = eye[[LABELS.index(y) for y in ys]]
        lake.append_labels("v1", pd.DataFrame({"message_id": ids, "probs": list(probs), "label": ys,
                                               "confidence": probs.max(1)}))
    return lake


def _oos_file(tmp_path, n_train: int = 5, n_val: int = 20, n_test: int = 40):
    """A CLINC150-layout file of out-of-scope texts."""
    words = ["weather", "song", "recipe", "flight", "joke", "alarm", "translate", "movie"]
    make = lambda tag, n: [[f"{tag} {words[i % len(words)]} {i} tomorrow", "oos"] for i in range(n)]  # noqa: E731
    path = tmp_path / "oos.json"
    path.write_text(json.dumps({"oos_train": make("train", n_train), "oos_val": make("val", n_val),
                                "oos_test": make("test", n_test)}))
    return str(path)


# ---- the calibration slice -----------------------------------------------------------------------

def test_slice_is_stable_about_its_share_and_never_depends_on_the_other_ids():
    from models.calibration import in_calibration_slice

    ids = [message_id(f"message {i}") for i in range(20000)]
    picked = in_calibration_slice(ids, 0.1)
    assert 0.09 < picked.mean() < 0.11
    np.testing.assert_array_equal(picked, in_calibration_slice(ids, 0.1))  # the same on every night
    np.testing.assert_array_equal(picked[5000:], in_calibration_slice(ids[5000:], 0.1))  # per id, not per batch
    assert not in_calibration_slice(ids, 0.0).any()
    assert (in_calibration_slice(ids, 0.05) <= picked).all()  # a smaller share is a subset
    with pytest.raises(ValueError, match="calibration_share"):
        in_calibration_slice(ids, 1.0)


@pytest.mark.parametrize("kind", ["full", "bounded"])
def test_slice_is_never_trained_on_and_is_what_calibrates(tmp_path, kind):
    from edgeloop.config import StudentConfig
    from models.calibration import in_calibration_slice
    from models.collab_data import calibration_slice
    from models.replay import select_rows

    lake = _lake(tmp_path, n_days=6)
    cfg = StudentConfig(replay_size=60, replay_gold_share=0.3)
    mark = {"trained_through": (DAY0 + timedelta(days=3)).isoformat()} if kind == "bounded" else None
    before = select_rows(lake, "v1", cfg, kind, mark, seed=0)
    rows = select_rows(lake, "v1", cfg, kind, mark, seed=0, exclude_share=0.25)
    cal = calibration_slice(lake, "v1", 0.25)
    everything = lake.messages(columns=["message_id"])["message_id"]
    n_slice = int(in_calibration_slice(everything, 0.25).sum())
    assert len(cal) == n_slice > 0 and cal["message_id"].is_unique
    assert not set(cal["message_id"]) & set(rows["message_id"])  # disjoint from training
    assert not in_calibration_slice(rows["message_id"], 0.25).any()
    if kind == "full":
        assert len(rows) == len(before) - n_slice
    else:  # the replay still draws its rows, from outside the slice
        assert (rows["role"] != "new").sum() == (before["role"] != "new").sum()
    # labels: gold where the message has one, else the teacher's
    seed = lake.gold_messages(["message_id", "gold_label"]).set_index("message_id")["gold_label"]
    known = cal[cal["message_id"].isin(seed.index)]
    assert len(known) and (known["label"].values == seed.loc[known["message_id"]].values).all()
    assert calibration_slice(lake, "v1", 0.25, max_rows=5)["message_id"].tolist() == cal["message_id"].tolist()[:5]
    assert calibration_slice(lake, "v1", 0.0).empty


def test_slice_of_the_bundled_data_holds_no_golden_message():
    from data_contracts.datasets import load_split
    from edge.redact import redact
    from edgeloop.config import DatasetConfig
    from models.calibration import in_calibration_slice

    split = load_split(DatasetConfig(max_rows=3000))
    lake_ids = [message_id(redact(t)[0]) for t in pd.concat([split.seed["text"], split.stream["text"]])]
    golden = {message_id(redact(t)[0]) for t in split.golden["text"]}
    sliced = {m for m, s in zip(lake_ids, in_calibration_slice(lake_ids, 0.1)) if s}
    assert sliced and not sliced & golden


def test_candidate_trains_with_outlier_exposure_outside_the_slice(tmp_path, teacher_dir):  # noqa: F811
    from models.calibration import in_calibration_slice
    from models.candidate import train_candidate
    from models.teacher import LocalTeacher
    from models.teacher_store import TeacherRef

    lake = _lake(tmp_path / "lake", n_days=2, per_day=30)
    teacher = LocalTeacher(teacher_dir, max_length=24)
    cfg = TINY.model_copy(update={"epochs": 1})
    collab = CollabConfig(calibration_share=0.3, oos_path=_oos_file(tmp_path, n_train=7))
    ids = lake.messages(columns=["message_id"])["message_id"]
    n_slice = int(in_calibration_slice(ids, 0.3).sum())
    with_oe = train_candidate(cfg, lake, TeacherRef("1", str(teacher_dir)), teacher, LABELS, tmp_path / "c1",
                              collab=collab)
    assert with_oe["n_train"] == 60 - n_slice and with_oe["n_outliers"] == 7 and with_oe["calibration_share"] == 0.3
    assert with_oe["n_rows_trained"] == with_oe["n_train"] + with_oe["n_augmented"] + 7
    assert (tmp_path / "c1" / "edge" / "model.onnx").is_file()
    off = train_candidate(cfg, lake, TeacherRef("1", str(teacher_dir)), teacher, LABELS, tmp_path / "c2",
                          collab=collab.model_copy(update={"enabled": False}))
    assert off["n_train"] == 60 and off["n_outliers"] == 0  # collab.enabled False: the old night


# ---- the policy: thresholds, gate checks ----------------------------------------------------------

def _night(coverage: float, champion: float | None, drop: float = 0.05):
    from models.collab_night import CollabNight
    from models.deferral import DeferralChoice

    return CollabNight(CollabPolicy(threshold=0.7, target_accuracy=0.98), None, "",
                       DeferralChoice(0.7, coverage, 0.98, 0.98, 200),
                       None if champion is None else {"version": "3", "temperature": 1.2, "coverage": champion,
                                                      "threshold": 0.6},
                       max_coverage_drop=drop)


@pytest.mark.parametrize("coverage,champion,passed", [
    (0.90, 0.92, True),    # within the tolerance of 0.05
    (0.87, 0.92, True),    # exactly at it
    (0.86, 0.92, False),   # more than 0.05 below the champion
    (0.95, 0.92, True),    # better
    (0.10, None, True),    # first night: nothing to compare with
])
def test_gate_coverage_check_fails_only_beyond_the_tolerance(coverage, champion, passed):
    from models.evaluate import classification_metrics
    from models.gate import run_gate
    from edgeloop.config import GateConfig

    check = next(c for c in _night(coverage, champion).checks() if c.name == "coverage_at_target")
    assert check.passed is passed and check.value == coverage
    if champion is not None:
        assert check.threshold == pytest.approx(champion - 0.05) and "champion v3" in check.detail
    res = classification_metrics(["a", "b"], ["a", "b"], ["a", "b"])
    res.size_mb, res.p95_ms = 1.0, 1.0
    open_gate = GateConfig(min_accuracy=0, min_macro_f1=0, min_teacher_retention=0, max_bundle_mb=1e9, max_p95_ms=1e9)
    decision = run_gate(res, res, None, open_gate, extra=_night(coverage, champion).checks())
    assert decision.passed is passed
    if not passed:
        assert [c.name for c in decision.failed] == ["coverage_at_target"]


def test_policy_chosen_on_a_real_model_with_out_of_scope_rejection(edge_model_dirs, tmp_path):  # noqa: F811
    from edge.predictor import OnnxPredictor
    from edge.collab import oos_score
    from models.collab_data import out_of_scope
    from models.collab_night import edge_logits, run_collab

    edge = edge_model_dirs["v1"]
    model = OnnxPredictor(edge)
    texts = [f"{t} {i}" for i in range(8) for t in CORPUS]
    # labels the model gets right where it is sure, so a threshold exists
    probs = model.predict_proba(texts)
    answered = [model.labels[i] for i in probs.argmax(1)]
    gold = [a if p.max() > np.median(probs.max(1)) else LABELS[(LABELS.index(a) + 1) % 3]
            for a, p in zip(answered, probs)]
    np.testing.assert_allclose(edge_logits(model, texts[:5]).argmax(1), probs[:5].argmax(1))
    cfg = CollabConfig(oos_path=_oos_file(tmp_path), oos_score="energy", target_accuracy=0.95,
                       min_oos_recall=0.0, oos_max_accuracy_loss=0.05)
    oos = out_of_scope(cfg)
    night = run_collab(cfg, (texts[:40], gold[:40]), (texts[40:], gold[40:]), edge, ("1", edge, None), oos)
    p = night.policy
    assert p.oos_score == "energy" and p.oos_threshold == night.oos.threshold and p.target_accuracy == 0.95
    assert night.calibration is not None and p.temperature == night.calibration.temperature
    # the gate measures what a device computes: the recall on oos_test from the device's own score
    recall = float(np.mean(oos_score(edge_logits(model, oos.test), "energy") < p.oos_threshold))
    assert night.oos_test_recall == pytest.approx(recall) and night.n_oos_test == 40
    checks = {c.name: c for c in night.checks()}
    assert checks["oos_recall"].passed and checks["oos_recall"].value == pytest.approx(recall)
    # the champion is the same model with T = 1: its coverage was measured the same way
    assert night.champion["temperature"] == 1.0 and 0 <= night.champion["coverage"] <= 1
    strict = run_collab(cfg.model_copy(update={"min_oos_recall": 1.0}), (texts[:40], gold[:40]),
                        (texts[40:], gold[40:]), edge, None, oos)
    assert strict.checks()[1].passed is (strict.oos_test_recall >= 1.0)
    lines = "\n".join(night.card_lines())
    assert "## End-cloud collaboration" in lines and "oos_test recall" in lines and "ECE" in lines
    assert json.dumps(p.to_dict(), sort_keys=True) in lines
    assert {"calibration.ece_before", "calibration.ece_after", "deferral.coverage", "oos.test_recall",
            "deferral.champion_coverage"} <= set(night.metrics())


def test_no_out_of_scope_path_means_no_rejection_and_a_passing_not_configured_check(edge_model_dirs):  # noqa: F811
    from models.collab_data import out_of_scope
    from models.collab_night import run_collab

    cfg = CollabConfig(oos_path="")
    assert out_of_scope(cfg) is None
    texts = [f"{t} {i}" for i in range(3) for t in CORPUS]
    gold = [LABELS[(i % 9) // 3] for i in range(len(texts))]
    night = run_collab(cfg, (texts[:10], gold[:10]), (texts, gold), edge_model_dirs["v2"], None, None)
    assert night.policy.oos_threshold is None and night.oos is None
    assert night.calibration is None and night.policy.temperature == 1.0  # 10 slice messages: too few to fit
    check = night.checks()[1]
    assert check.name == "oos_recall" and check.passed and check.value is None and "not configured" in check.detail
    assert "not configured" in "\n".join(night.card_lines())


# ---- the policy in the signed manifest -----------------------------------------------------------

def test_policy_lands_in_the_signed_manifest_and_verifies(edge_model_dirs, signing_keys, tmp_path):  # noqa: F811
    from edge.verify import BundleVerificationError, verify_bundle

    policy = CollabPolicy(temperature=0.81, threshold=0.62, oos_score="energy", oos_threshold=6.6,
                          target_accuracy=0.98, oos_max_accuracy_loss=0.01)
    manifest = make_bundle(edge_model_dirs["v1"], tmp_path, "v1", signing_keys["private"], collab=policy.to_dict())
    assert manifest["collab"] == policy.to_dict()
    verified = verify_bundle(tmp_path / "v1", signing_keys["public"])
    assert CollabPolicy.from_dict(verified["collab"]) == policy
    old = make_bundle(edge_model_dirs["v1"], tmp_path, "v0", signing_keys["private"])
    assert "collab" not in old and set(old) == set(manifest) - {"collab"}  # the other fields as before
    # the block is signed: changing the threshold breaks the signature
    path = tmp_path / "v1" / "manifest.json"
    m = json.loads(path.read_text())
    m["collab"]["threshold"] = 0.0
    path.write_text(json.dumps(m))
    with pytest.raises(BundleVerificationError, match="signature"):
        verify_bundle(tmp_path / "v1", signing_keys["public"])
    with pytest.raises(ValueError, match="collab.temperature"):
        make_bundle(edge_model_dirs["v1"], tmp_path, "v9", signing_keys["private"], collab={"temperature": -1.0})


def test_registered_policy_is_signed_into_the_promoted_bundle(settings, store, edge_model_dirs):  # noqa: F811
    from edge.verify import verify_bundle
    from models import registry, rollout
    from models.gate import GateDecision
    from models.registration import COLLAB_TAG, collab_block, version_tags

    policy = CollabPolicy(temperature=1.3, threshold=0.5, oos_score="msp", oos_threshold=0.2, target_accuracy=0.98,
                          oos_max_accuracy_loss=0.01)
    tags = version_tags(GateDecision(True), None, {"collab": policy.to_dict(), "night": "2026-03-01"}, None)
    assert collab_block(tags) == policy.to_dict() and collab_block({}) is None
    with pytest.raises(ValueError, match=COLLAB_TAG):
        collab_block({COLLAB_TAG: json.dumps({"threshold": 3})})
    version = register(settings, edge_model_dirs["v1"])
    registry.set_version_tags(store.tracking_uri, store.name, version, {COLLAB_TAG: tags[COLLAB_TAG]})
    folder = rollout.ensure_bundle(store, version)
    assert verify_bundle(folder, store.public_key)["collab"] == policy.to_dict()
    plain = rollout.ensure_bundle(store, register(settings, edge_model_dirs["v2"]))  # a version without a policy
    assert "collab" not in verify_bundle(plain, store.public_key)


# ---- real data -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_on_bundled_data_calibration_lowers_ece_and_the_gate_measures_oos_recall(tmp_path):
    """A student of the bundled Bitext data (gold labels as the teacher's, outlier exposure on
    CLINC150's oos_train), calibrated on its lake's slice, its policy chosen on golden."""
    from data_contracts.datasets import load_split
    from edge.redact import redact
    from edgeloop.config import DatasetConfig, StudentConfig, TeacherConfig
    from models.calibration import expected_calibration_error
    from models.collab_data import calibration_slice, out_of_scope
    from models.collab_night import edge_logits, run_collab
    from models.candidate import train_candidate
    from models.evaluate import golden_texts
    from models.teacher import base_model_path
    from models.teacher_store import TeacherRef
    from edge.collab import calibrated_probs
    from edge.predictor import OnnxPredictor

    split = load_split(DatasetConfig(max_rows=1500))
    lake = Lake(tmp_path / "lake")
    eye = np.eye(len(split.labels), dtype=np.float32)
    for day, (frame, gold) in enumerate([(split.seed, True), (split.stream.iloc[:400], False)]):
        texts = [redact(t)[0] for t in frame["text"]]
        ids = [message_id(t) for t in texts]
        lake.append_messages(pd.DataFrame({"message_id": ids, "text": texts,
                                           "gold_label": frame["label"].tolist() if gold else None}),
                             "seed" if gold else "stream", received_at=DAY0 + timedelta(days=day))
        probs = eye[[split.labels.index(y) for y in frame["label"]]]  # a teacher that is always right
        lake.append_labels("v1", pd.DataFrame({"message_id": ids, "probs": list(probs), "label": frame["label"],
                                               "confidence": probs.max(1)}))
    collab = CollabConfig()  # the defaults: 10% slice, CLINC150's out-of-scope lists, energy score
    cfg = StudentConfig(epochs=4, augment_copies=0, hidden_weight=0.0)  # the default shape, no teacher passes
    ref = TeacherRef("1", str(base_model_path(TeacherConfig())))  # its word pieces start the student
    trained = train_candidate(cfg, lake, ref, None, list(split.labels), tmp_path / "cand", collab=collab)
    cal = calibration_slice(lake, "v1", collab.calibration_share)
    assert trained["n_train"] + len(cal) == len(lake.messages()) and trained["n_outliers"] == 100

    golden = golden_texts(split)
    night = run_collab(collab, (cal["text"].tolist(), cal["label"].tolist()), golden, tmp_path / "cand" / "edge",
                       None, out_of_scope(collab))
    c = night.calibration
    assert c is not None and c.n == len(cal) and c.ece_after <= c.ece_before and c.nll_after <= c.nll_before
    # held out too: golden's ECE falls with the slice's temperature
    model = OnnxPredictor(tmp_path / "cand" / "edge")
    z = edge_logits(model, golden[0])
    y = np.array([model.labels.index(g) for g in golden[1]])
    assert expected_calibration_error(calibrated_probs(z, c.temperature), y) <= \
        expected_calibration_error(calibrated_probs(z, 1.0), y)
    d = night.deferral
    assert d.n == len(golden[0]) and (d.threshold is None or d.answered_accuracy >= collab.target_accuracy)
    assert 900 < night.n_oos_test <= 1000  # CLINC150's oos_test, less texts also in oos_train / oos_val
    assert 0 <= night.oos_test_recall <= 1 and night.policy.oos_threshold == night.oos.threshold
    o = night.oos  # the cut costs at most oos_max_accuracy_loss of the slice's right answers
    assert o.in_scope_accuracy >= o.base_accuracy - collab.oos_max_accuracy_loss - 1e-9
