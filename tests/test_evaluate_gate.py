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


def result(acc, f1=None, per=None, size=1.0, p95=1.0, wrong=None):
    """100 golden texts (50 of intent a, 50 of b); ``wrong`` = indices answered wrong (default: the
    last ones of each intent, so that accuracy is ``acc``)."""
    gold = ["a"] * 50 + ["b"] * 50
    if wrong is None:
        k = round((1 - acc) * 100)
        wrong = [49 - i for i in range(k // 2)] + [99 - i for i in range(k - k // 2)]
    pred = [("b" if g == "a" else "a") if i in set(wrong) else g for i, g in enumerate(gold)]
    return EvalResult(n=100, accuracy=acc, macro_f1=f1 if f1 is not None else acc,
                      per_intent_f1=per or {"a": acc, "b": acc}, confusion=[], labels=["a", "b"],
                      size_mb=size, p95_ms=p95, gold=gold, predictions=pred)


CFG = GateConfig(min_accuracy=0.6, min_macro_f1=0.6, min_teacher_retention=0.6, max_bundle_mb=5, max_p95_ms=10)


def test_first_night_uses_floors_only():
    d = run_gate(result(0.9), teacher=result(0.95), champion=None, cfg=CFG)
    assert d.passed and not any(c.name.startswith("no_regression") for c in d.checks)
    assert d.tags()["gate.decision"] == "pass"


@pytest.mark.parametrize(("candidate", "champion", "failing"), [
    (result(0.5), None, {"accuracy_floor", "macro_f1_floor", "teacher_retention"}),
    # 12 texts newly wrong, none newly right: a significant 12-point drop.
    (result(0.78), result(0.9), {"no_regression_overall", "no_regression_per_intent"}),
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


def test_noise_between_equally_good_models_passes():
    # Same accuracy, different texts wrong: 4 worse, 4 better.
    champ = result(0.9, wrong=[0, 1, 2, 3, 50, 51, 52, 53, 54, 55])
    cand = result(0.9, wrong=[4, 5, 6, 7, 50, 51, 52, 53, 54, 55])
    d = run_gate(cand, teacher=result(0.95), champion=champ, cfg=CFG)
    assert d.passed, d.reason()
    overall = next(c for c in d.checks if c.name == "no_regression_overall")
    # the value is the one-sided upper bound of the change (observed 0): above -min_regression
    assert overall.value > 0 and overall.threshold == -CFG.min_regression
    assert "observed +0.0000" in overall.detail and "4 worse / 4 better of 100" in overall.detail


def test_small_significant_drop_below_the_minimum_effect_passes():
    champ = result(1.0)
    cand = result(0.99)  # one text: far from significant, and below min_regression anyway
    assert run_gate(cand, result(0.95), champ, CFG).passed


def test_a_lost_intent_is_named():
    champ = result(0.98)
    cand = result(0.5, wrong=list(range(50)))  # every text of intent a wrong
    d = run_gate(cand, result(0.95), champ, CFG.model_copy(update={"min_accuracy": 0.0, "min_macro_f1": 0.0,
                                                                  "min_teacher_retention": 0.0}))
    per_intent = next(c for c in d.failed if c.name == "no_regression_per_intent")
    assert per_intent.value == 1 and "regressed: a " in per_intent.detail
    assert d.comparison[0]["slice"] == "overall" and {r["slice"] for r in d.comparison[1:]} == {"a", "b"}


def test_different_golden_texts_cannot_be_compared():
    champ = result(0.9)
    champ.gold = champ.gold[:-1]
    d = run_gate(result(0.9), result(0.95), champ, CFG)
    assert [c.name for c in d.failed] == ["no_regression_vs_champion"]


def test_failed_contracts_and_mechanical_check_block_promotion():
    d = run_gate(result(0.9), result(0.95), None, CFG, contracts_ok=False, mechanical=(False, "did not load"))
    assert {c.name for c in d.failed} == {"contracts_passed", "bundle_loads_fresh_process"}
    assert "did not load" in d.reason()


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
