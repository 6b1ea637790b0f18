"""Behaviour checks (models/behaviour.py): each check catches the fault it is for, and the night
runs them on a shipped bundle and gates on them.

Predictors here are plain functions with a known fault (one reacts to digits, one to names, one
never says one intent, one reads only the first sentence), so every check is shown to fail when it
should. The intent names are this test's own; the checks derive their cases from the golden data.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgeloop.config import GateConfig
from models import behaviour
from edge_fixtures import CORPUS, LABELS, edge_model_dirs, make_bundle, signing_keys  # noqa: F401

INTENTS = ["réclamation", "order status?", "A1"]  # any strings work as labels
KEYWORDS = {"refund": "réclamation", "money": "réclamation", "where": "order status?", "track": "order status?",
            "cancel": "A1", "stop": "A1"}
GOLDEN = [("I want a refund of $120 please", "réclamation"), ("give me my money back", "réclamation"),
          ("refund 45 dollars for order 4411-778", "réclamation"), ("where is my package", "order status?"),
          ("track order 123456 for me", "order status?"), ("where is my parcel now", "order status?"),
          ("cancel my order", "A1"), ("please stop order #98765", "A1"), ("cancel it", "A1")]
TEXTS, GOLD = [t for t, _ in GOLDEN], [y for _, y in GOLDEN]


def keyword_model(texts: list[str], skip_first: bool = False) -> np.ndarray:
    """A sound bag-of-keywords classifier: later keywords weigh more, digits and names do nothing."""
    out = np.full((len(texts), len(INTENTS)), 0.1)
    for row, text in enumerate(texts):
        for weight, word in enumerate(text.lower().replace(".", " ").replace(",", " ").split(), 1):
            if word in KEYWORDS:
                out[row, INTENTS.index(KEYWORDS[word])] += weight
    return out / out.sum(1, keepdims=True)


def digit_sensitive(texts):
    """Answers the intent picked by the digits' sum when a text has digits: numbers matter to it."""
    probs = keyword_model(texts)
    for row, t in enumerate(texts):
        digits = [int(c) for c in t if c.isdigit()]
        if digits:
            probs[row] = np.eye(len(INTENTS))[sum(digits) % len(INTENTS)]
    return probs


def name_sensitive(texts):
    """Says "A1" whenever the writer's name starts with a vowel."""
    probs = keyword_model(texts)
    for row, t in enumerate(texts):
        if any(n.startswith(("A", "O", "E", "I", "U")) and n in t for n in behaviour.NAMES):
            probs[row] = np.eye(len(INTENTS))[INTENTS.index("A1")]
    return probs


def never_a1(texts):
    probs = keyword_model(texts)
    probs[:, INTENTS.index("A1")] = 0
    return probs / probs.sum(1, keepdims=True)


def first_sentence_only(texts):
    return keyword_model([t.split(". ")[0] for t in texts])


def test_a_sound_model_passes_every_check():
    report = behaviour.run_checks(keyword_model, INTENTS, TEXTS, GOLD)
    assert report.rates["invariance"] == 1.0 and report.rates["functionality"] == 1.0
    assert report.rates["directional"] == 1.0 and not any(report.failures.values())
    # numbers: 3 texts hold an order number; amounts: "$120", "45 dollars"; names: 2 templates per text
    assert report.cases["invariance.numbers"] == 3 and report.cases["invariance.amounts"] == 2
    assert report.cases["invariance.names"] == 2 * len(TEXTS)
    assert report.cases["functionality"] == 3 * len(INTENTS) * len(behaviour.CASE_TEMPLATES)
    assert report.cases["directional"] == 2 * len(TEXTS)


def test_invariance_catches_a_model_that_reads_numbers():
    report = behaviour.run_checks(digit_sensitive, INTENTS, TEXTS, GOLD)
    assert report.rates["invariance.numbers"] < 1 and report.rates["invariance.amounts"] < 1
    assert report.rates["invariance.names"] == 1.0 and report.rates["invariance"] < 1
    assert "→" in report.failures["invariance.numbers"][0]


def test_invariance_catches_a_model_that_reads_names():
    report = behaviour.invariance(name_sensitive, INTENTS, TEXTS)
    assert report.rates["invariance.names"] < 1 and report.rates["invariance.numbers"] == 1.0


def test_minimum_functionality_names_the_intent_a_model_cannot_say():
    report = behaviour.min_functionality(never_a1, INTENTS, TEXTS, GOLD)
    assert report.rates["functionality.worst"] == 0.0
    assert report.rates["functionality"] == pytest.approx(2 / 3)
    assert all("expected A1" in f for f in report.failures["functionality"])


def test_clear_cases_are_each_intents_shortest_golden_texts():
    cases = behaviour.clear_cases(TEXTS + ["cancel"], GOLD + ["A1"], per_intent=2)
    assert cases["A1"] == ["cancel it", "cancel my order"]  # one-word texts only when nothing longer
    assert set(cases) == set(INTENTS)


def test_directional_catches_a_model_that_ignores_what_follows():
    report = behaviour.directional(first_sentence_only, INTENTS, TEXTS, GOLD)
    # Appending another intent's text must raise its probability: this model never moves.
    assert report.rates["directional"] == pytest.approx(0.5)
    assert "P(" in report.failures["directional"][0]


def test_numbers_and_amounts_are_told_apart_and_keep_their_shape():
    rng = random.Random(0)
    text = "refund $1,200.50 and 45 euros for order 4411-778"
    numbers = behaviour.replace_numbers(text, "numbers", rng)
    amounts = behaviour.replace_numbers(text, "amounts", rng)
    assert numbers.startswith("refund $1,200.50 and 45 euros for order ") and numbers[-8:] != "4411-778"
    assert len(numbers) == len(text) and numbers[-4] == "-"
    assert amounts.endswith("euros for order 4411-778") and "$1,200.50" not in amounts
    assert behaviour.replace_numbers("no digits here", "numbers", rng) is None


def test_checks_are_seeded_and_refuse_mismatched_input():
    a = behaviour.run_checks(digit_sensitive, INTENTS, TEXTS, GOLD)
    assert a.rates == behaviour.run_checks(digit_sensitive, INTENTS, TEXTS, GOLD).rates
    with pytest.raises(ValueError, match="9 texts but 8 labels"):
        behaviour.run_checks(keyword_model, INTENTS, TEXTS, GOLD[:-1])


def test_the_gate_checks_behaviour_on_a_shipped_bundle(tmp_path, edge_model_dirs, signing_keys):  # noqa: F811
    """The night's path on a real signed bundle: redaction + ONNX model, rates in the candidate's
    metrics, one gate check per rate recorded with its threshold."""
    from edge.predictor import OnnxPredictor
    from models.evaluate import behaviour_rates, evaluate_night
    from models.gate import decide

    make_bundle(edge_model_dirs["v1"], tmp_path, "v1", signing_keys["private"])
    golden = (CORPUS, [LABELS[i // 3] for i in range(len(CORPUS))])
    teacher = OnnxPredictor(edge_model_dirs["v2"])
    results, report = evaluate_night(golden, teacher, edge_model_dirs["v2"], tmp_path / "v1", None,
                                     latency_runs=5, teacher_latency_runs=5)
    rates = behaviour_rates(results["candidate"])
    assert set(rates) == set(report.rates) - {k for k, v in report.rates.items() if v is None}
    assert rates == {k: v for k, v in report.rates.items() if v is not None}
    assert all(0 <= v <= 1 for v in rates.values()) and report.cases["invariance.names"] == 2 * len(CORPUS)
    assert results["candidate"].metrics("candidate.")["candidate.behaviour.invariance"] == rates["invariance"]

    floors = GateConfig(min_accuracy=0, min_macro_f1=0, min_teacher_retention=0, max_p95_ms=1000,
                        min_invariance=0, min_functionality=0, min_directional=0)
    passed = decide(results, floors, contracts_ok=True, edge_dir=tmp_path / "v1", smoke_texts=CORPUS[:3],
                    behaviour=rates)
    checks = {c.name: c for c in passed.checks}
    assert passed.passed and checks["behaviour_invariance"].value == pytest.approx(rates["invariance"])
    assert "threshold=0.0" in passed.tags()["gate.behaviour_functionality"]
    strict = floors.model_copy(update={"min_functionality": 1.0})
    if rates["functionality"] < 1.0:  # a random tiny model: the strict floor fails it, by name
        failed = decide(results, strict, contracts_ok=True, edge_dir=tmp_path / "v1", smoke_texts=CORPUS[:3],
                        behaviour=rates)
        assert not failed.passed and "behaviour_functionality" in failed.reason()
