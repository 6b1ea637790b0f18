"""Deferral and out-of-scope thresholds (models/deferral.py) and the device's route (edge/collab.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.collab import CollabPolicy, decide, oos_score, route
from models.deferral import (Mahalanobis, auroc, choose_oos_threshold, choose_threshold, collab_metrics,
                             make_policy)


def test_threshold_is_the_lowest_that_reaches_the_target():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 1, 0, 0], bool)
    c = choose_threshold(conf, correct, 0.8)
    # Answering 5 rows gives 4/5 = 0.8; answering all 6 gives 4/6.
    assert c.threshold == 0.7 and c.coverage == pytest.approx(5 / 6) and c.answered_accuracy == pytest.approx(0.8)
    assert choose_threshold(conf, correct, 1.0).threshold == 0.8
    assert choose_threshold(conf, correct, 0.5).threshold == 0.6  # everything answered
    assert choose_threshold(conf, correct, 0.5).coverage == 1.0


def test_ties_are_answered_or_deferred_together():
    conf = np.array([0.9, 0.8, 0.8, 0.8])
    correct = np.array([1, 1, 0, 0], bool)
    c = choose_threshold(conf, correct, 0.75)
    # Cutting inside the 0.8 tie (2 rows, 2/2) is impossible; all four give 0.5.
    assert c.threshold == 0.9 and c.coverage == 0.25


def test_unreachable_target_defers_everything():
    c = choose_threshold(np.array([0.9, 0.8]), np.array([0, 1], bool), 0.99)
    assert c.threshold is None and c.coverage == 0.0 and c.answered_accuracy is None
    policy = make_policy(1.0, c, None, "msp")
    assert route(1.0, 1.0, policy) == "cloud"


def test_answered_accuracy_meets_target_on_random_data():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 5000)
    correct = rng.uniform(size=5000) < conf  # calibrated by construction
    c = choose_threshold(conf, correct, 0.95)
    answered = conf >= c.threshold
    assert correct[answered].mean() >= 0.95
    assert answered.mean() == pytest.approx(c.coverage)
    assert 0.05 < c.coverage < 0.5


def test_oos_threshold_costs_at_most_the_allowed_accuracy():
    rng = np.random.default_rng(1)
    s_in = rng.normal(2.0, 1.0, 1000)
    ok = rng.uniform(size=1000) < 0.9
    s_oos = rng.normal(-1.0, 1.0, 500)
    c = choose_oos_threshold(s_in, ok, s_oos, max_accuracy_loss=0.01)
    assert c.base_accuracy - c.in_scope_accuracy <= 0.01 + 1e-12
    assert np.mean(ok & (s_in < c.threshold)) <= 0.01
    assert c.oos_recall == pytest.approx(np.mean(s_oos < c.threshold))
    # A larger allowance never lowers recall.
    assert choose_oos_threshold(s_in, ok, s_oos, 0.05).oos_recall >= c.oos_recall
    assert 0.9 < c.auroc < 1.0


def test_auroc_extremes():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5


def test_mahalanobis_separates_far_points():
    rng = np.random.default_rng(2)
    means = np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0]], float)
    y = rng.integers(0, 3, 600)
    x = means[y] + rng.normal(0, 0.5, (600, 3))
    far = rng.normal(0, 0.5, (100, 3)) + np.array([0, 0, 6.0])
    m = Mahalanobis().fit(x, y)
    assert auroc(m.score(x), m.score(far)) > 0.99
    # Relative: the distance to the one background Gaussian is subtracted.
    rel = Mahalanobis(relative=True).fit(x, y)
    b = far - x.mean(axis=0)
    background = np.einsum("nd,de,ne->n", b, rel.bg_precision, b)
    assert np.allclose(rel.score(far), m.score(far) + background)


def test_route_order_rejected_then_device_then_cloud():
    p = CollabPolicy(temperature=1.0, threshold=0.9, oos_score="msp", oos_threshold=0.3)
    assert route(0.2, 0.2, p) == "rejected"
    assert route(0.95, 0.95, p) == "device"
    assert route(0.5, 0.5, p) == "cloud"
    assert route(0.2, 0.2, CollabPolicy(threshold=0.9)) == "cloud"  # no oos threshold: nothing rejected


def test_decide_applies_temperature_and_scores():
    logits = np.array([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 9.0, 0.0]])
    p = CollabPolicy(temperature=2.0, threshold=0.8, oos_score="msp", oos_threshold=0.4)
    d = decide(logits, p)
    assert [x.route for x in d] == ["cloud", "rejected", "device"]
    assert d[0].confidence == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert d[2].index == 1
    energy = oos_score(logits, "energy")
    assert energy[2] > energy[0] > energy[1]


def test_policy_round_trips_through_json_and_rejects_bad_fields():
    p = CollabPolicy(temperature=1.7, threshold=0.91, oos_score="energy", oos_threshold=3.2,
                     target_accuracy=0.98, oos_max_accuracy_loss=0.01)
    assert CollabPolicy.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError, match="collab.threshold"):
        CollabPolicy(threshold=1.5)
    with pytest.raises(ValueError, match="collab.oos_score"):
        CollabPolicy(oos_score="mahalanobis")
    with pytest.raises(ValueError, match="unknown field"):
        CollabPolicy.from_dict({"temperature": 1.0, "treshold": 0.9})
    with pytest.raises(ValueError, match="collab.temperature"):
        CollabPolicy.from_dict({"temperature": "hot"})


def test_collab_metrics():
    m = collab_metrics(["device", "cloud", "rejected", "rejected", "device"],
                       ["a", "b", None, None, "c"], ["a", "b", "c", None, None])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["in_scope_accuracy"] == pytest.approx(2 / 3)
    assert m["oos_recall"] == 0.5
    assert m["coverage"] == 0.4 and m["cloud_share"] == 0.2 and m["rejected_share"] == 0.4
    with pytest.raises(ValueError, match="unknown route"):
        collab_metrics(["phone"], ["a"], ["a"])
