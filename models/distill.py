"""Knowledge distillation: the student learns the teacher's soft labels and the gold labels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgeloop.config import StudentConfig
from models.training import length_buckets, linear_warmup, run_epochs, set_seed, token_lengths, tokenize


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, gold: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``alpha * T² * KL(p_teacher/T || p_student/T) + (1 - alpha) * CE(gold)``.

    ``teacher_probs`` are at T=1; they are re-tempered here (p^(1/T), renormalised), which equals
    a softmax of the teacher's logits divided by T. ``gold`` is -1 where a row has no gold label;
    the CE term averages over the rows that have one.
    """
    log_t = torch.log(teacher_probs.clamp_min(1e-12)) / temperature
    p_t = torch.softmax(log_t, dim=-1)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    kd = F.kl_div(log_s, p_t, reduction="batchmean") * temperature ** 2
    has_gold = gold >= 0
    ce = F.cross_entropy(student_logits[has_gold], gold[has_gold]) if has_gold.any() else student_logits.new_zeros(())
    loss = alpha * kd + (1 - alpha) * ce
    return loss, {"kd": kd.item(), "ce": ce.item()}


def distill(model, tokenizer, texts: list[str], teacher_probs: np.ndarray, gold: np.ndarray,
            cfg: StudentConfig, epochs: int | None = None, seed: int = 13, on_epoch=None) -> list[dict]:
    """Train ``model`` in place on (texts, teacher soft labels, gold ids or -1); returns per-epoch logs."""
    if len(texts) != len(teacher_probs) or len(texts) != len(gold):
        raise ValueError(f"texts ({len(texts)}), teacher_probs ({len(teacher_probs)}) and gold "
                         f"({len(gold)}) must have the same length")
    if teacher_probs.shape[1] != model.config.num_labels:
        raise ValueError(f"teacher gives {teacher_probs.shape[1]} classes, the student has {model.config.num_labels}")
    set_seed(seed)
    epochs = epochs or cfg.epochs
    probs = torch.from_numpy(np.asarray(teacher_probs, dtype=np.float32))
    gold_t = torch.from_numpy(np.asarray(gold, dtype=np.int64))
    lengths = token_lengths(tokenizer, texts, cfg.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = linear_warmup(optimizer, epochs * -(-len(texts) // cfg.batch_size), 0.1)

    def step(idx: list[int]):
        enc = tokenize(tokenizer, [texts[i] for i in idx], cfg.max_length)
        return distillation_loss(model(**enc).logits, probs[idx], gold_t[idx], cfg.temperature, cfg.alpha)

    history = run_epochs(model, optimizer, scheduler,
                         lambda e: length_buckets(lengths, cfg.batch_size, shuffle=True, seed=seed + e),
                         step, epochs, "student", on_epoch)
    model.eval()
    return [vars(h) for h in history]


def recipe(cfg: StudentConfig) -> dict[str, object]:
    """The compression choices a candidate was made with, as flat MLflow params."""
    return {"recipe.init": "pca-teacher-embeddings", "recipe.vocab": "pruned-to-corpus+chars",
            "recipe.shape": f"{cfg.num_layers}x{cfg.hidden_size}/{cfg.num_heads}h/ff{cfg.intermediate_size}",
            "recipe.kd": f"T={cfg.temperature} alpha={cfg.alpha}", "recipe.lr": cfg.lr,
            "recipe.augment": f"copies={cfg.augment_copies} max_rows={cfg.augment_max_rows} teacher-labeled",
            "recipe.backend": cfg.quantize}
