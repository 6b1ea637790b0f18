"""What ships (ONNX fp32/int8 edge folders) and the measured-only backends (torch, bitsandbytes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_student import CORPUS, LABELS, TINY, teacher_dir  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["where is my order", "i want a refund for the broken thing i got last week please",
         "cancel", "track my package please now", "zzz qqq unseen words"]


@pytest.fixture(scope="module")
def tiny_student(teacher_dir):  # noqa: F811
    from models.student import build_student

    torch.manual_seed(3)
    model, tok = build_student(teacher_dir, CORPUS, LABELS, TINY)
    return model.eval(), tok


def _torch_probs(model, tok, texts):
    from models.training import softmax

    enc = tok(texts, padding=True, truncation=True, max_length=TINY.max_length, return_tensors="pt")
    with torch.no_grad():
        return softmax(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy())


@pytest.mark.parametrize("backend", ["onnx-fp32", "onnx-int8"])
def test_edge_folder_reloads_and_predicts_like_the_model(tmp_path, tiny_student, backend):
    from edge.predictor import OnnxPredictor
    from models.quantize import write_edge_folder

    model, tok = tiny_student
    # Padding left in the tokenizer by a training call must not reach the device's tokenizer.json.
    tok(["a", "a longer text"], padding=True)
    folder = write_edge_folder(model, tok, tmp_path / backend, TINY.max_length, backend=backend)
    assert json.loads((folder / "tokenizer.json").read_text())["padding"] is None
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["backend"] == backend and json.loads((folder / "labels.json").read_text()) == LABELS
    assert not model.training, "export must leave the model in eval mode"
    pred = OnnxPredictor(folder)
    batched = pred.predict_proba(TEXTS)  # one padded batch of mixed lengths
    single = np.concatenate([pred.predict_proba([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5 if backend == "onnx-fp32" else 2e-2)
    ref = _torch_probs(model, tok, TEXTS)
    if backend == "onnx-fp32":
        np.testing.assert_allclose(batched, ref, atol=1e-5)
    else:
        np.testing.assert_allclose(batched, ref, atol=5e-2)
    assert (batched.argmax(1) == ref.argmax(1)).mean() >= 0.8


def test_unknown_backend_is_refused(tmp_path, tiny_student):
    from models.quantize import write_edge_folder

    with pytest.raises(ValueError, match="unknown quantization backend"):
        write_edge_folder(*tiny_student, tmp_path, TINY.max_length, backend="tflite")


def test_torch_dynamic_int8_runs_and_is_smaller(tiny_student):
    from models.quantize import quantize_torch_dynamic, serialized_mb

    model, tok = tiny_student
    q = quantize_torch_dynamic(model)
    assert np.abs(_torch_probs(q, tok, TEXTS) - _torch_probs(model, tok, TEXTS)).max() < 0.05
    assert serialized_mb(q) < serialized_mb(model)
    assert any(isinstance(p, torch.nn.Linear) for p in model.modules())  # the original is untouched


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_layers_run_forward_on_cpu(tiny_student, bits):
    from models.quantize import QuantizationUnavailable, quantize_bnb

    model, tok = tiny_student
    try:
        q = quantize_bnb(model, bits)
    except QuantizationUnavailable as exc:
        pytest.skip(str(exc))
    kinds = {type(m).__name__ for m in q.modules()}
    assert ("Linear8bitLt" if bits == 8 else "Linear4bit") in kinds
    assert type(q.classifier).__name__ == "Linear"  # the head stays float
    probs = _torch_probs(q, tok, TEXTS)
    assert probs.shape == (len(TEXTS), len(LABELS)) and np.isfinite(probs).all()
    assert np.abs(probs - _torch_probs(model, tok, TEXTS)).max() < 0.1


def test_bitsandbytes_refuses_bad_arguments(tiny_student):
    from models.quantize import quantize_bnb

    with pytest.raises(ValueError, match="bits"):
        quantize_bnb(tiny_student[0], 3)
    with pytest.raises(ValueError, match="quant_type"):
        quantize_bnb(tiny_student[0], 4, "int4")


def test_missing_bitsandbytes_gives_a_clear_error(monkeypatch, tiny_student):
    from models import quantize

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(quantize.QuantizationUnavailable, match="bitsandbytes cannot be imported"):
        quantize.quantize_bnb(tiny_student[0], 8)


def test_edge_runtime_answers_without_torch_in_little_memory(tmp_path, tiny_student):
    """The device process imports only edge.predictor: no torch, and its peak RSS stays small."""
    from benchmarks.measure import edge_peak_rss
    from models.quantize import write_edge_folder

    folder = write_edge_folder(*tiny_student, tmp_path / "edge", TINY.max_length)
    probe = edge_peak_rss(folder, TEXTS)
    assert probe["heavy_modules_loaded"] == []
    assert probe["peak_rss_mb"] < 150, probe
