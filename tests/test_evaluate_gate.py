import numpy as np
import pytest

from edgeloop.config import GateConfig
from models.evaluate import EvalResult, classification_metrics, evaluate_model, latency_ms
from models.gate import run_gate

LABELS = ["a", "b", "c"]


def test_metrics_on_a_known_confusion():
    r = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "c"], LABELS)
    assert r.accuracy == pytest.approx(0.75)
    assert r.per_intent_f1 == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 1.0})
    assert r.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert r.confusion == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_unknown_true_label_is_named():
    with pytest.raises(ValueError, match=r"\['zz'\]"):
        classification_metrics(["zz"], ["a"], LABELS)


def test_evaluate_model_measures_agreement_latency_and_size(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x" * 2_000_000)

    def predict_proba(texts):
        return np.array([[1.0, 0, 0] if t.startswith("a") else [0, 1.0, 0] for t in texts])

    r = evaluate_model(predict_proba, LABELS, ["a1", "b1", "a2"], ["a", "b", "b"], teacher_pred=["a", "b", "a"],
                       folder=tmp_path, latency_runs=20)
    assert r.accuracy == pytest.approx(2 / 3) and r.agreement_with_teacher == pytest.approx(1.0)
    assert r.size_mb == pytest.approx(2.0) and 0 <= r.p50_ms <= r.p95_ms


def test_latency_percentiles_are_ordered():
    p50, p95 = latency_ms(lambda t: sum(range(1000)), ["x"], runs=50, warmup=2)
    assert 0 < p50 <= p95


def result(acc, f1=None, per=None, size=1.0, p95=1.0):
    return EvalResult(n=100, accuracy=acc, macro_f1=f1 if f1 is not None else acc,
                      per_intent_f1=per or {"a": acc, "b": acc}, confusion=[], labels=["a", "b"],
                      size_mb=size, p95_ms=p95)


CFG = GateConfig(min_accuracy=0.8, min_macro_f1=0.8, max_accuracy_drop=0.01, max_macro_f1_drop=0.01,
                 max_intent_f1_drop=0.05, min_teacher_retention=0.9, max_bundle_mb=5, max_p95_ms=10)


def test_first_night_uses_floors_only():
    d = run_gate(result(0.9), teacher=result(0.95), champion=None, cfg=CFG)
    assert d.passed and not any(c.name.endswith("vs_champion") for c in d.checks)
    assert d.tags()["gate.decision"] == "pass"


@pytest.mark.parametrize(("candidate", "champion", "failing"), [
    (result(0.7), None, {"accuracy_floor", "macro_f1_floor", "teacher_retention"}),
    (result(0.88), result(0.9), {"accuracy_vs_champion", "macro_f1_vs_champion"}),
    (result(0.9, per={"a": 0.99, "b": 0.8}), result(0.9, per={"a": 0.9, "b": 0.9}), {"worst_intent_f1_drop"}),
    (result(0.9, size=50), None, {"bundle_size_mb"}),
    (result(0.9, p95=99), None, {"p95_latency_ms"}),
])
def test_each_failing_check_is_named_with_value_and_threshold(candidate, champion, failing):
    d = run_gate(candidate, teacher=result(0.95), champion=champion, cfg=CFG)
    assert not d.passed and {c.name for c in d.failed} == failing
    tags = d.tags()
    assert tags["gate.decision"] == "fail"
    for name in failing:
        assert tags[f"gate.{name}"].startswith("fail value=") and "threshold=" in tags[f"gate.{name}"]
        assert name in d.reason()


def test_within_tolerance_of_champion_passes():
    d = run_gate(result(0.895), teacher=result(0.95), champion=result(0.9), cfg=CFG)
    assert d.passed


def test_failed_contracts_and_mechanical_check_block_promotion():
    d = run_gate(result(0.9), result(0.95), None, CFG, contracts_ok=False, mechanical=(False, "did not load"))
    assert {c.name for c in d.failed} == {"contracts_passed", "bundle_loads_fresh_process"}
    assert "did not load" in d.reason()


def test_per_intent_tolerance_widens_for_intents_with_few_golden_texts():
    from models.gate import intent_tolerance

    assert intent_tolerance(0.05, 100) == 0.05
    assert intent_tolerance(0.05, 12) == pytest.approx(0.125)
    champ = EvalResult(n=24, accuracy=0.9, macro_f1=0.9, per_intent_f1={"a": 0.9, "b": 0.9},
                       confusion=[[12, 0], [0, 12]], labels=["a", "b"], size_mb=1, p95_ms=1)
    one_flip = result(0.9, per={"a": 0.82, "b": 0.9})  # one text of 12 flipped: noise
    assert run_gate(one_flip, result(0.95), champ, CFG).passed
    collapse = result(0.9, per={"a": 0.5, "b": 0.9})
    d = run_gate(collapse, result(0.95), champ, CFG)
    assert [c.name for c in d.failed] == ["worst_intent_f1_drop"] and "over tolerance: a" in d.reason()


def test_behaviour_rates_are_gate_checks_against_their_floors():
    cfg = CFG.model_copy(update={"min_invariance": 0.9, "min_functionality": 0.8, "min_directional": 0.7})
    good = {"invariance": 0.95, "functionality": 0.8, "directional": 0.99, "invariance.names": 0.9}
    d = run_gate(result(0.9), result(0.95), None, cfg, behaviour=good)
    assert d.passed and {c.name for c in d.checks} >= {"behaviour_invariance", "behaviour_functionality",
                                                       "behaviour_directional"}
    assert d.tags()["gate.behaviour_invariance"] == "pass value=0.95 >= threshold=0.9"
    d = run_gate(result(0.9), result(0.95), None, cfg, behaviour={**good, "invariance": 0.85, "directional": None})
    assert {c.name for c in d.failed} == {"behaviour_invariance", "behaviour_directional"}
    assert "behaviour_invariance 0.85 < 0.9" in d.reason() and "not measured" in d.reason()
    assert not any(c.name.startswith("behaviour") for c in run_gate(result(0.9), result(0.95), None, cfg).checks)
