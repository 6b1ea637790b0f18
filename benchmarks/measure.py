"""Measurements the benchmark suite combines: latency, throughput, relabel speed, backends, RSS.

Every comparison of speeds interleaves the contenders (one call of each in turn, the order
rotating), so that the noise of a shared box falls on all of them alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _pct(times: list[float], q: float) -> float:
    s = sorted(times)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def interleaved_latency(fns: dict[str, Callable[[str], object]], texts: list[str], runs: int,
                        warmup: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 wall time (ms) of each function, calls interleaved; p50 and p95 per function."""
    names = list(fns)
    for t in texts[:warmup]:
        for n in names:
            fns[n](t)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(runs):
        t = texts[i % len(texts)]
        k = i % len(names)
        for n in names[k:] + names[:k]:
            start = time.perf_counter()
            fns[n](t)
            times[n].append((time.perf_counter() - start) * 1000)
    return {n: {"p50_ms": round(statistics.median(v), 4), "p95_ms": round(_pct(v, 0.95), 4), "runs": len(v)}
            for n, v in times.items()}


def blocked_latency(fns: dict[str, Callable[[str], object]], texts: list[str], runs: int, block: int = 25,
                    settle: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 wall time (ms) in alternating blocks: ``block`` calls of one function, then the next.

    The first ``settle`` calls of each block are not counted: right after a torch call its
    OpenMP workers keep spinning and the caches hold the other model, which would bill the
    teacher's footprint to the student. Blocks still alternate, so drifting load hits both.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    i = 0
    while min(len(v) for v in times.values()) < runs:
        for n in names:
            for j in range(block):
                t = texts[(i + j) % len(texts)]
                start = time.perf_counter()
                fns[n](t)
                if j >= settle:
                    times[n].append((time.perf_counter() - start) * 1000)
        i += block
    return {n: {"p50_ms": round(statistics.median(v), 4), "p95_ms": round(_pct(v, 0.95), 4), "runs": len(v)}
            for n, v in times.items()}


def interleaved_throughput(fns: dict[str, Callable[[list[str]], np.ndarray]], texts: list[str],
                           rounds: int) -> dict[str, dict]:
    """Rows/s of each bulk function over ``texts``, rounds interleaved; median round, last output."""
    secs: dict[str, list[float]] = {n: [] for n in fns}
    outs: dict[str, np.ndarray] = {}
    names = list(fns)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            outs[n] = fns[n](texts)
            secs[n].append(time.perf_counter() - start)
    return {n: {"rows": len(texts), "seconds": round(statistics.median(v), 3),
                "rows_per_s": round(len(texts) / statistics.median(v), 1), "output": outs[n]}
            for n, v in secs.items()}


# ---- teacher relabel -------------------------------------------------------------------------

def plain_torch_loop(model, tokenizer, max_length: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """The baseline: batches of ``batch_size`` in arrival order, padded to their longest text."""
    import torch

    def run(texts: list[str]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                enc = tokenizer(texts[s:s + batch_size], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
                out.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy())
        return np.concatenate(out)

    return run


def bucketed_torch(model, tokenizer, max_length: int, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    from models.training import batched_logits

    return lambda texts: batched_logits(model, tokenizer, texts, max_length, batch_size, desc="relabel")


def bucketed_onnx(predictor, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """An :class:`OnnxPredictor` fed length-sorted batches; rows come back in input order."""

    def run(texts: list[str]) -> np.ndarray:
        lengths = [len(e.ids) for e in predictor.tokenizer.encode_batch(texts)]
        order = np.argsort(lengths, kind="stable")
        probs = predictor.predict_proba([texts[i] for i in order], batch_size=batch_size)
        out = np.empty_like(probs)
        out[order] = probs
        return out

    return run


def torch_one(model, tokenizer, max_length: int) -> Callable[[str], np.ndarray]:
    """Batch-1 prediction in torch, tokenization included."""
    import torch

    def run(text: str) -> np.ndarray:
        with torch.inference_mode():
            enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().numpy()

    return run


# ---- the edge runtime in its own process -------------------------------------------------------

# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from a process
# that holds torch would report the parent's footprint.
RSS_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
from edge.predictor import OnnxPredictor
p = OnnxPredictor({folder!r})
texts = json.loads(sys.stdin.read())
for i in range(300):
    p.predict([texts[i % len(texts)]])
p.predict_proba(texts, batch_size=32)
heavy = sorted(m for m in ("torch", "transformers", "bitsandbytes", "mlflow", "prefect") if m in sys.modules)
print(json.dumps({{"peak_rss_mb": hwm(), "interpreter_rss_mb": base, "heavy_modules_loaded": heavy}}))
"""


def edge_peak_rss(folder: str | Path, texts: list[str]) -> dict:
    """Peak RSS (MB) of a fresh process that imports only the edge predictor, loads ``folder``
    and answers 300 batch-1 predictions and one batch-32 pass."""
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT.format(root=str(ROOT), folder=str(folder))],
                          input=json.dumps(texts), capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"edge RSS probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- quantization backends of the student ------------------------------------------------------

def student_backends(student_dir: Path, edge_dir: Path, texts: list[str], y_true: list[str],
                     latency_texts: list[str], runs: int) -> list[dict]:
    """Accuracy, size and batch-1 p50 of the float student under every quantization backend.

    ONNX fp32/int8 run in ONNX Runtime (what ships is ``onnx-int8``); torch fp32, torch dynamic
    int8 and bitsandbytes 8-bit / nf4 run in torch (measured, never shipped). Sizes are the
    weights as each backend stores them (ONNX file; ``torch.save`` of the state dict).
    """
    import torch

    from edge.predictor import MODEL_FILE, OnnxPredictor
    from models.quantize import (QuantizationUnavailable, quantize_bnb, quantize_torch_dynamic,
                                 serialized_mb, write_edge_folder)
    from models.student import load_student
    from models.training import batched_logits

    model, tok = load_student(student_dir)
    max_length = json.loads((edge_dir / "bundle.json").read_text())["max_length"]
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    rows: list[dict] = []
    fns: dict[str, Callable[[str], object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir = write_edge_folder(model, tok, Path(tmp) / "fp32", max_length, backend="onnx-fp32")
        onnx = {"onnx-fp32": (OnnxPredictor(fp32_dir), fp32_dir), "onnx-int8 (ships)": (OnnxPredictor(edge_dir), edge_dir)}
        for name, (pred, folder) in onnx.items():
            idx = pred.predict_proba(texts).argmax(1)
            acc = float(np.mean(np.array(pred.labels)[idx] == np.array(y_true)))
            rows.append({"backend": name, "runtime": "onnxruntime", "accuracy": round(acc, 4),
                         "size_mb": round((folder / MODEL_FILE).stat().st_size / 1e6, 3), "pred": idx})
            fns[name] = lambda t, p=pred: p.predict_proba([t])
        variants: dict[str, Callable[[], torch.nn.Module]] = {
            "torch-fp32": lambda: model, "torch-dynamic-int8": lambda: quantize_torch_dynamic(model),
            "bnb-int8": lambda: quantize_bnb(model, 8), "bnb-nf4": lambda: quantize_bnb(model, 4, "nf4")}
        for name, make in variants.items():
            try:
                m = make()
            except QuantizationUnavailable as exc:
                rows.append({"backend": name, "runtime": "torch", "error": str(exc)})
                continue
            pred = batched_logits(m, tok, texts, max_length, 64).argmax(1)
            acc = float(np.mean(np.array(labels)[pred] == np.array(y_true)))
            rows.append({"backend": name, "runtime": "torch", "accuracy": round(acc, 4),
                         "size_mb": round(serialized_mb(m), 3), "pred": pred})
            fns[name] = torch_one(m, tok, max_length)
        lat = interleaved_latency(fns, latency_texts, runs)
    ref = next(r["pred"] for r in rows if r["backend"] == "torch-fp32")
    for r in rows:
        r.update(lat.get(r["backend"], {}))
        if "pred" in r:
            r["agreement_with_torch_fp32"] = round(float(np.mean(r.pop("pred") == ref)), 4)
    return rows
