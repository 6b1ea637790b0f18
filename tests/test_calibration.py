"""Temperature scaling and ECE (models/calibration.py) on synthetic logits with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from edge.collab import calibrated_probs
from models.calibration import calibrate, expected_calibration_error, fit_temperature, nll


def _sample(true_t: float, n: int = 4000, k: int = 10, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_t): perfectly calibrated at true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3.0, size=(n, k))
    p = calibrated_probs(z, true_t)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_generated_the_labels(true_t):
    z, y = _sample(true_t)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.1)


def test_overconfident_model_gets_t_above_one_and_lower_ece_and_nll():
    z, y = _sample(2.5, seed=1)
    report = calibrate(z, y)
    assert report.temperature > 1.5
    assert report.ece_after < report.ece_before / 3
    assert report.nll_after < report.nll_before
    assert report.n == len(z) and report.n_bins == 15
    # The fitted temperature is the NLL minimum: both neighbours are worse.
    t = report.temperature
    assert nll(z, y, t) <= min(nll(z, y, t * 0.9), nll(z, y, t * 1.1))


def test_log_probabilities_calibrate_like_logits():
    z, y = _sample(2.0, seed=2)
    logp = np.log(calibrated_probs(z, 1.0))
    assert calibrate(logp, y).temperature == pytest.approx(calibrate(z, y).temperature, rel=1e-3)


def test_ece_by_hand():
    # Two rows at confidence 0.9 (one right), two at 0.6 (both right): bins differ.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    # bin of 0.9: acc 0.5, conf 0.9 -> gap 0.4, weight 0.5; bin of 0.6: acc 1.0, conf 0.6 -> 0.4, 0.5
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(0.4)
    assert expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(abs(0.75 - 0.75))


def test_perfect_confident_model_has_zero_ece():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 0])) == 0.0


@pytest.mark.parametrize("logits,labels,match", [
    (np.zeros((0, 3)), np.zeros(0, int), "empty"),
    (np.zeros((2, 3)), np.array([0, 3]), r"\[0, 2\]"),
    (np.zeros((2, 3)), np.array([0.5, 1.0]), "class indices"),
    (np.zeros(3), np.array([0]), "2-D"),
    (np.array([[0.0, np.inf]]), np.array([0]), "finite"),
    (np.zeros((2, 3)), np.array([0]), "one class index per row"),
])
def test_bad_input_is_named(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        calibrate(logits, labels)
