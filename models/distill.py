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


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors that the attention mask keeps."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def hidden_loss(student_pooled: torch.Tensor, teacher_pooled: torch.Tensor, proj: torch.nn.Module) -> torch.Tensor:
    """``1 - cos(proj(student), teacher)`` averaged over rows: the student's sentence vector,
    projected to the teacher's width, points where the teacher's does."""
    return (1 - F.cosine_similarity(proj(student_pooled), teacher_pooled, dim=-1)).mean()


@torch.inference_mode()
def teacher_outputs(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, mean-pooled last hidden states) of a transformers teacher, in input order."""
    from models.training import softmax

    model.eval()
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    pooled = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    lengths = token_lengths(tokenizer, texts, max_length)
    for idx in length_buckets(lengths, batch_size, shuffle=False):
        enc = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        out = model(**enc, output_hidden_states=True)
        probs[idx] = softmax(out.logits.float().numpy())
        pooled[idx] = mean_pool(out.hidden_states[-1], enc["attention_mask"]).float().numpy()
    return probs, pooled


def prepare_transfer(teacher, texts: list[str], probs: np.ndarray, gold: np.ndarray, cfg: StudentConfig
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    """A transfer set computed in full, nothing read from or stored in a lake: (texts, teacher probs,
    gold or -1, teacher vectors). The night uses :func:`models.transfer.teacher_targets` instead,
    which computes these once per (message, teacher version) and keeps them in the lake.

    Adds ``cfg.augment_copies`` teacher-labeled perturbed copies of the texts (see
    :mod:`models.augment`, seeded with ``cfg.seed``). When the teacher is a local transformers model (it has ``model`` and
    ``tokenizer``) and ``cfg.hidden_weight > 0``, also returns its mean-pooled sentence vectors for
    every text (one extra teacher pass); otherwise the vectors are None.
    """
    from models.augment import augment_texts

    extra = augment_texts(texts, cfg.augment_copies, seed=cfg.seed, max_rows=cfg.augment_max_rows)
    local = hasattr(teacher, "model") and hasattr(teacher, "tokenizer") and cfg.hidden_weight > 0
    hidden = None
    if local:
        max_length = getattr(teacher, "max_length", cfg.max_length)
        _, h_src = teacher_outputs(teacher.model, teacher.tokenizer, list(texts), max_length)
        p_extra, h_extra = teacher_outputs(teacher.model, teacher.tokenizer, extra, max_length)
        hidden = np.concatenate([h_src, h_extra])
    else:
        p_extra = np.asarray(teacher.predict_proba(extra), dtype=np.float32) if extra else np.zeros((0, probs.shape[1]), np.float32)
    if p_extra.shape != (len(extra), probs.shape[1]):
        raise ValueError(f"teacher gave probabilities of shape {p_extra.shape} for {len(extra)} augmented "
                         f"texts; expected ({len(extra)}, {probs.shape[1]})")
    return (list(texts) + extra, np.concatenate([probs, p_extra]).astype(np.float32),
            np.concatenate([gold, np.full(len(extra), -1, dtype=np.int64)]), hidden)


def distill(model, tokenizer, texts: list[str], teacher_probs: np.ndarray, gold: np.ndarray,
            cfg: StudentConfig, epochs: int | None = None, on_epoch=None,
            teacher_hidden: np.ndarray | None = None) -> list[dict]:
    """Train ``model`` in place on (texts, teacher soft labels, gold ids or -1); returns per-epoch logs.

    Seeded with ``cfg.seed``; the learning rate warms up over ``cfg.warmup_ratio`` of the steps.

    With ``teacher_hidden`` (the teacher's mean-pooled sentence vectors, one row per text) and
    ``cfg.hidden_weight > 0``, the student's mean-pooled last layer also learns to point where the
    teacher's does, through a linear projection used only in training.
    """
    if len(texts) != len(teacher_probs) or len(texts) != len(gold):
        raise ValueError(f"texts ({len(texts)}), teacher_probs ({len(teacher_probs)}) and gold "
                         f"({len(gold)}) must have the same length")
    if teacher_hidden is not None and len(teacher_hidden) != len(texts):
        raise ValueError(f"teacher_hidden has {len(teacher_hidden)} rows for {len(texts)} texts")
    if teacher_probs.shape[1] != model.config.num_labels:
        raise ValueError(f"teacher gives {teacher_probs.shape[1]} classes, the student has {model.config.num_labels}")
    seed = cfg.seed
    set_seed(seed)
    epochs = epochs or cfg.epochs
    probs = torch.from_numpy(np.asarray(teacher_probs, dtype=np.float32))
    gold_t = torch.from_numpy(np.asarray(gold, dtype=np.int64))
    lengths = token_lengths(tokenizer, texts, cfg.max_length)
    use_hidden = teacher_hidden is not None and cfg.hidden_weight > 0
    params = list(model.parameters())
    if use_hidden:
        hid = torch.from_numpy(np.asarray(teacher_hidden, dtype=np.float32))
        proj = torch.nn.Linear(model.config.hidden_size, hid.shape[1])
        params += list(proj.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    scheduler = linear_warmup(optimizer, epochs * -(-len(texts) // cfg.batch_size), cfg.warmup_ratio)

    def step(idx: list[int]):
        enc = tokenize(tokenizer, [texts[i] for i in idx], cfg.max_length)
        out = model(**enc, output_hidden_states=use_hidden)
        loss, parts = distillation_loss(out.logits, probs[idx], gold_t[idx], cfg.temperature, cfg.alpha)
        if use_hidden:
            h = hidden_loss(mean_pool(out.hidden_states[-1], enc["attention_mask"]), hid[idx], proj)
            loss = loss + cfg.hidden_weight * h
            parts["hidden"] = h.item()
        return loss, parts

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
            "recipe.hidden": f"mean-pooled cosine to teacher, weight={cfg.hidden_weight}",
            "recipe.augment": f"copies={cfg.augment_copies} max_rows={cfg.augment_max_rows} teacher-labeled",
            "recipe.backend": cfg.quantize}
