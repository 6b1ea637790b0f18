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
    gold: list[str] = field(default_factory=list)  # per golden text, for paired comparisons
    predictions: list[str] = field(default_factory=list)

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
        confusion=cm.tolist(), labels=list(labels), gold=list(y_true), predictions=list(y_pred))


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


# ---- the night's evaluation ----------------------------------------------------------------------
def golden_texts(split) -> tuple[list[str], list[str]]:
    """Golden texts of a :class:`~data_contracts.datasets.Split` as a device sees them (redacted),
    with their gold labels."""
    from edge.redact import redact

    return [redact(t)[0] for t in split.golden["text"]], split.golden["label"].tolist()


def smoke_queries(texts: list[str], n: int) -> list[str]:
    """``n`` texts spread evenly over ``texts``: what the gate's fresh-process check asks."""
    return texts[:: max(1, len(texts) // n)][:n]


def teacher_stream_accuracy(split, teacher_labels) -> float | None:
    """How often the teacher's labels (the lake's rows for its version) match the stream's hidden
    gold labels (None when none of the stream is labeled yet)."""
    from edge.feedback import message_id
    from edge.redact import redact

    hidden = {message_id(redact(t)[0]): y for t, y in zip(split.stream["text"], split.stream["label"])}
    if teacher_labels.empty:
        return None
    known = teacher_labels[teacher_labels["message_id"].isin(hidden)]
    return float((known["label"] == known["message_id"].map(hidden)).mean()) if len(known) else None


def shipped_predictor(edge_dir: str | Path) -> Callable[[list[str]], np.ndarray]:
    """``predict_proba`` of an edge folder as a device runs it: redaction first, then the model."""
    from edge.predictor import OnnxPredictor
    from edge.redact import redact

    model = OnnxPredictor(edge_dir)
    return lambda texts: model.predict_proba([redact(t)[0] for t in texts])


def evaluate_night(golden: tuple[list[str], list[str]], teacher, teacher_folder: str | Path,
                   candidate_edge: Path, champion_edge: Path | None, *, latency_runs: int = 200,
                   teacher_latency_runs: int = 50, behaviour_texts: int = 200):
    """Teacher (as loaded), candidate (as shipped) and champion (as shipped, when there is one) on
    the golden set, and the candidate's behaviour checks (:mod:`models.behaviour`).

    Returns (results by model, the behaviour report); the behaviour pass rates are also in the
    candidate's ``extra`` as ``behaviour.<check>``, so they are logged with its metrics.
    """
    from edge.predictor import OnnxPredictor
    from models.behaviour import run_checks

    texts, y = golden
    results = {"teacher": evaluate_model(teacher.predict_proba, teacher.labels, texts, y, folder=teacher_folder,
                                         latency_runs=teacher_latency_runs)}
    teacher_pred = [teacher.labels[i] for i in teacher.predict_proba(texts).argmax(1)]
    for name, edge in (("candidate", candidate_edge), ("champion", champion_edge)):
        if edge is not None:
            model = OnnxPredictor(edge)
            results[name] = evaluate_model(model.predict_proba, model.labels, texts, y, teacher_pred,
                                           folder=edge, latency_runs=latency_runs)
    labels = results["candidate"].labels
    behaviour = run_checks(shipped_predictor(candidate_edge), labels, texts, y, max_texts=behaviour_texts)
    results["candidate"].extra.update(behaviour.metrics())
    return results, behaviour


def behaviour_rates(result: EvalResult) -> dict[str, float]:
    """The ``behaviour.<check>`` rates of ``result.extra`` by check name (what the gate reads)."""
    return {k[len("behaviour."):]: v for k, v in result.extra.items() if k.startswith("behaviour.")}
