"""Training-loop pieces shared by the teacher fine-tune and the student distillation."""

from __future__ import annotations

import logging
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads (0 = leave torch's choice)."""
    if n > 0:
        torch.set_num_threads(n)


def length_buckets(lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Batches of indices with similar lengths, so little compute is spent on padding.

    With ``shuffle`` the batches (not their contents' order by length) are shuffled, which keeps
    training stochastic while still padding little.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if shuffle:
        rng = random.Random(seed)
        # Sort within chunks of 50 batches after a random permutation: varied but still bucketed.
        order = list(range(len(lengths)))
        rng.shuffle(order)
        chunk = batch_size * 50
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda i: lengths[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if shuffle:
        random.Random(seed + 1).shuffle(batches)
    return batches


def linear_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up to the base rate, then linear decay to zero."""
    warm = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EpochLog:
    """What one epoch did; one log line each."""

    epoch: int
    step: int
    loss: float
    extra: dict[str, float] = field(default_factory=dict)

    def line(self, total_epochs: int) -> str:
        bits = " ".join(f"{k}={v:.4f}" for k, v in self.extra.items())
        return f"epoch {self.epoch}/{total_epochs} step {self.step} loss={self.loss:.4f} {bits}".rstrip()


def progress(iterable, total: int, desc: str) -> Iterator:
    """A progress bar in a terminal, nothing in logs or CI."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, total=total, desc=desc, leave=False)
    else:
        yield from iterable


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def token_lengths(tokenizer, texts: list[str], max_length: int) -> list[int]:
    return [min(len(ids), max_length) for ids in tokenizer(list(texts), truncation=True,
                                                           max_length=max_length)["input_ids"]]


@torch.inference_mode()
def batched_logits(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int,
                   batch_size: int, desc: str = "predict") -> np.ndarray:
    """Logits for ``texts`` in their original order, computed over length buckets."""
    model.eval()
    if not texts:
        return np.zeros((0, model.config.num_labels), dtype=np.float32)
    lengths = token_lengths(tokenizer, texts, max_length)
    batches = length_buckets(lengths, batch_size, shuffle=False)
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for idx in progress(batches, len(batches), desc):
        enc = {k: v.to(model.device) for k, v in tokenize(tokenizer, [texts[i] for i in idx], max_length).items()}
        out[idx] = model(**enc).logits.float().cpu().numpy()  # a GPU (e.g. bitsandbytes) teacher too
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, batches_per_epoch: Callable[[int], list[list[int]]],
               step_fn: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]], epochs: int,
               desc: str, on_epoch: Callable[[EpochLog], None] | None = None) -> list[EpochLog]:
    """The loop: for each epoch, for each batch, ``loss = step_fn(batch)``, backward, step."""
    history: list[EpochLog] = []
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        batches = batches_per_epoch(epoch)
        total, sums, n = 0.0, {}, 0
        for idx in progress(batches, len(batches), f"{desc} epoch {epoch}"):
            loss, parts = step_fn(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            n += 1
            total += loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        entry = EpochLog(epoch, step, total / max(1, n), {k: v / max(1, n) for k, v in sums.items()})
        if not math.isfinite(entry.loss):
            raise FloatingPointError(f"{desc}: loss became {entry.loss} in epoch {epoch}; lower the learning rate")
        history.append(entry)
        log.info("%s %s", desc, entry.line(epochs))
        if on_epoch:
            on_epoch(entry)
    return history
