"""Out-of-scope negatives (models/outliers.py): the CLINC150 source and the outlier-exposure term."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.distill import distillation_loss
from models.outliers import load_outlier_texts, outlier_exposure_loss, with_outliers


def test_loads_clinc150_oos_train_redacted_and_deduplicated():
    texts = load_outlier_texts()
    assert 90 <= len(texts) <= 100 and len(set(texts)) == len(texts)
    assert "how is glue made" in texts
    test_texts = load_outlier_texts(keys=("oos_test",), exclude=set(texts))
    assert len(test_texts) > 900 and not set(test_texts) & set(texts)


def test_outliers_are_redacted(tmp_path):
    f = tmp_path / "oos.json"
    f.write_text(json.dumps({"oos_train": [["write to bob@example.com", "oos"], ["write to bob@example.com", "oos"],
                                           ["", "oos"]]}))
    assert load_outlier_texts(f) == ["write to {EMAIL}"]
    with pytest.raises(Exception, match="not found"):
        load_outlier_texts(f, keys=("oos_val",))


def test_loss_is_log_k_at_uniform_and_pushes_towards_it():
    k = 5
    assert outlier_exposure_loss(torch.zeros(3, k)).item() == pytest.approx(math.log(k))
    z = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = outlier_exposure_loss(z)
    assert loss.item() > math.log(k)
    loss.backward()
    assert z.grad[0, 0] > 0 and (z.grad[0, 1:] < 0).all()  # gradient descent lowers the peak


def test_uniform_teacher_rows_in_the_kd_term_are_outlier_exposure():
    torch.manual_seed(0)
    z = torch.randn(6, 4)
    uniform = torch.full((6, 4), 0.25)
    gold = torch.full((6,), -1)
    t = 3.0
    kd, _ = distillation_loss(z, uniform, gold, temperature=t, alpha=1.0)
    expected = t ** 2 * (outlier_exposure_loss(z / t) - math.log(4))
    assert kd.item() == pytest.approx(expected.item(), rel=1e-5)


def test_with_outliers_appends_uniform_targets_without_gold():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    gold = np.array([0, -1])
    hidden = np.ones((2, 3), np.float32)
    texts, p, g, h = with_outliers(["a", "b"], probs, gold, hidden, ["x", "y"], np.zeros((2, 3)), repeat=2)
    assert texts == ["a", "b", "x", "y", "x", "y"]
    assert np.allclose(p[2:], 0.5) and (g[2:] == -1).all() and h.shape == (6, 3)
    assert with_outliers(["a"], probs[:1], gold[:1], None, ["x"])[3] is None
    with pytest.raises(ValueError, match="outlier_hidden"):
        with_outliers(["a"], probs[:1], gold[:1], hidden[:1], ["x"])
