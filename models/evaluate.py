"""Evaluation: one structured result per model (quality, size, latency) for MLflow and the gate."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EvalResult:
    """Everything the gate and the reports need about one model on one test set."""

    n: int
    accuracy: float
    macro_f1: float
    per_intent_f1: dict[str, float]
    confusion: list[list[int]]
    labels: list[str]
    agreement_with_teacher: float | None = None
    size_mb: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat numeric metrics for MLflow (per-intent F1 as ``f1.<label_key(intent)>``)."""
        from models.keys import label_key

        out = {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "n": float(self.n)}
        for k in ("agreement_with_teacher", "size_mb", "p50_ms", "p95_ms"):
            if getattr(self, k) is not None:
                out[k] = float(getattr(self, k))
        out.update({f"f1.{label_key(k)}": v for k, v in self.per_intent_f1.items()})
        out.update(self.extra)
        return {f"{prefix}{k}": float(v) for k, v in out.items()}

    def to_dict(self) -> dict:
        return asdict(self)


def classification_metrics(y_true: list[str], y_pred: list[str], labels: list[str]) -> EvalResult:
    """Accuracy, macro-F1 over ``labels``, per-intent F1 and the confusion matrix."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    index = {lbl: i for i, lbl in enumerate(labels)}
    unknown = sorted({y for y in y_true if y not in index})
    if unknown:
        raise ValueError(f"true labels {unknown[:5]} are not in the label set")
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[index[t], index[p]] += 1
    tp = np.diag(cm).astype(float)
    prec = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    present = cm.sum(1) > 0
    n = len(y_true)
    return EvalResult(
        n=n, accuracy=float(tp.sum() / n) if n else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_intent_f1={lbl: float(f1[i]) for i, lbl in enumerate(labels) if present[i]},
        confusion=cm.tolist(), labels=list(labels))


def latency_ms(predict_one: Callable[[str], object], texts: list[str], runs: int = 200,
               warmup: int = 10) -> tuple[float, float]:
    """Median and p95 wall time (ms) of single-text predictions, tokenization included."""
    sample = [texts[i % len(texts)] for i in range(runs + warmup)]
    for t in sample[:warmup]:
        predict_one(t)
    times = []
    for t in sample[warmup:]:
        start = time.perf_counter()
        predict_one(t)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]


def dir_size_mb(folder: str | Path) -> float:
    """Size on disk of every file under ``folder``, in MB (10^6 bytes)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


def evaluate_model(predict_proba: Callable[[list[str]], np.ndarray], labels: list[str], texts: list[str],
                   y_true: list[str], teacher_pred: list[str] | None = None,
                   folder: str | Path | None = None, latency_runs: int = 200) -> EvalResult:
    """Evaluate a model given as ``predict_proba`` over ``labels``; size from ``folder`` if given."""
    probs = predict_proba(texts)
    y_pred = [labels[i] for i in probs.argmax(axis=1)]
    res = classification_metrics(list(y_true), y_pred, labels)
    if teacher_pred is not None:
        res.agreement_with_teacher = float(np.mean([a == b for a, b in zip(y_pred, teacher_pred)]))
    if folder is not None:
        res.size_mb = dir_size_mb(folder)
    if latency_runs:
        res.p50_ms, res.p95_ms = latency_ms(lambda t: predict_proba([t]), texts, runs=latency_runs)
    return res


def confusion_png(result: EvalResult, path: str | Path, title: str) -> Path:
    """Draw the confusion matrix (row-normalised) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result.confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(6, len(result.labels) * 0.3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(result.labels) <= 40:
        ax.set_xticks(range(len(result.labels)), result.labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(result.labels)), result.labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {result.accuracy:.3f}, macro-F1 {result.macro_f1:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def per_intent_table(results: dict[str, EvalResult]) -> list[dict]:
    """Rows ``intent, <model>_f1...`` for a side-by-side per-intent table."""
    labels = next(iter(results.values())).labels
    return [{"intent": lbl, **{f"{name}_f1": round(r.per_intent_f1.get(lbl, float("nan")), 4)
                               for name, r in results.items()}} for lbl in labels]
