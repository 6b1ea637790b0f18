"""How fast the data contracts and redaction run: rows/s on a synthetic night of ``--rows`` messages.

Usage: ``python -m benchmarks.bench_contracts [--rows 100000] [--out benchmarks/results/contracts.json]``
(or ``python benchmarks/bench_contracts.py ...``).

Rows are Bitext instructions (5 % with an e-mail, phone and card appended, 0.5 % hostile:
duplicates, zero-width-only, too long, unknown labels), so the timing includes building reasons
for quarantined rows. Each contract runs its GX Checkpoints (schema, rows, and for teacher labels
the batch suite). The first call in a process pays for importing Great Expectations and building
its context; it is reported apart (``first_call_s``) from the warm figures the nightly flow sees
on later contracts. ``report_s`` is :func:`write_report` on the four results: JSON, Markdown and
the Data Docs site.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_contracts.contracts import (validate_feedback, validate_no_pii,  # noqa: E402
                                      validate_raw_messages, validate_teacher_labels, write_report)
from data_contracts.datasets import load_dataset  # noqa: E402
from data_contracts.redaction import redact_frame  # noqa: E402
from edgeloop.config import DatasetConfig  # noqa: E402

NOW = pd.Timestamp("2025-06-01", tz="UTC")


def make_frames(n: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    base = load_dataset(DatasetConfig())
    labels = sorted(base["label"].unique())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), n)
    text = base["text"].to_numpy()[idx].astype(object)
    ids = np.array([f"m{i:08d}" for i in range(n)], dtype=object)
    gold = base["label"].to_numpy()[idx].astype(object)
    gold[rng.random(n) < 0.7] = None
    # ~0.5 % hostile rows
    bad = rng.choice(n, size=max(n // 200, 4), replace=False)
    q = len(bad) // 4
    ids[bad[:q]] = ids[0]
    text[bad[q:2 * q]] = "\u200b"
    text[bad[2 * q:3 * q]] = "x" * 5000
    gold[bad[3 * q:]] = "teleport"
    # 5 % of messages carry contact and payment details, so redaction's slow path is timed too.
    pii = rng.random(n) < 0.05
    text[pii] = text[pii] + (" - mail me at jo.doe@example.com or call +1 555-123-4567,"
                             " card 4111 1111 1111 1111")
    raw = pd.DataFrame({"message_id": ids, "text": text, "source": "stream", "gold_label": gold,
                        "received_at": NOW - pd.Timedelta(hours=1)})
    k = len(labels)
    probs = rng.dirichlet(np.full(k, 0.1), n)
    top = probs.argmax(1)
    teacher = pd.DataFrame({"message_id": ids, "probs": list(probs), "label": np.array(labels)[top],
                            "confidence": probs.max(1)})
    fb = pd.DataFrame({"device_id": [f"dev-{i % 5000:06d}" for i in range(n)], "model_version": "3",
                       "message_id": ids, "predicted": np.array(labels)[top], "accepted": True,
                       "corrected_label": None, "at": NOW - pd.Timedelta(hours=2)})
    fb["corrected_label"] = fb["corrected_label"].astype(object)
    return raw, teacher, fb, labels


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "contracts.json"))
    args = ap.parse_args()
    raw, teacher, fb, labels = make_frames(args.rows)
    n = len(raw)
    warmup, first_s = timed(validate_raw_messages, raw.head(10), labels, now=NOW)
    figures: dict[str, dict] = {}

    def record(name, res, seconds):
        figures[name] = {"rows": n, "seconds": round(seconds, 3), "rows_per_s": round(n / seconds),
                         "accepted": res.rows_accepted if res is not None else None,
                         "quarantined": res.rows_quarantined if res is not None else None}
        print(f"{name:<22} {n:>8} rows  {seconds:7.2f} s  {n / seconds:>10,.0f} rows/s", flush=True)

    results = []
    res, s = timed(validate_raw_messages, raw, labels, now=NOW)
    record("raw_messages@1", res, s)
    results.append(res)
    (redacted, counts), s = timed(redact_frame, raw)
    record("redact_frame", None, s)
    res, s = timed(validate_no_pii, redacted)
    record("no_pii@1", res, s)
    results.append(res)
    res, s = timed(validate_teacher_labels, teacher, labels, None, max_drift=1.0, min_mean_confidence=0.0)
    record("teacher_labels@1", res, s)
    results.append(res)
    res, s = timed(validate_feedback, fb, labels, {"3"}, now=NOW)
    record("feedback@1", res, s)
    results.append(res)
    with tempfile.TemporaryDirectory() as tmp:
        files, report_s = timed(write_report, results, tmp)
        docs = files[-1].parent
        docs_mb = sum(p.stat().st_size for p in docs.rglob("*") if p.is_file()) / 2**20
    print(f"write_report (JSON, Markdown, Data Docs {docs_mb:.1f} MB): {report_s:.2f} s", flush=True)
    result = {"rows": n, "first_call_s": round(first_s, 3), "figures": figures, "report_s": round(report_s, 3),
              "data_docs_mb": round(docs_mb, 2), "redaction_counts": counts,
              "python": platform.python_version(), "machine": platform.machine(),
              "load_average_1m": round(os.getloadavg()[0], 2),
              "cpus_note": "shared 2-core box; figures are noisy (wall time: compare runs at a similar load)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"first call (GX import + context): {first_s:.2f} s; wrote {out}")


if __name__ == "__main__":
    main()
