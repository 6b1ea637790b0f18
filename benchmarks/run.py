"""The benchmark suite: every figure issue 6 asks for, on Bitext and CLINC150, in one command.

Usage: ``python -m benchmarks.run [--quick] [--dataset bitext|clinc150|all] [--home DIR]``

Per data set, in a benchmark home (a fresh temporary one unless ``--home`` names one to reuse):
bootstrap the teacher if missing, run a full night (cold start) and an incremental night (warm
start) through the CLI, timing each; then, side by side on this CPU, the shipped student (the
incremental night's ONNX int8 candidate) against the teacher (torch fp32): golden accuracy and
retention, size, interleaved batch-1 latency (tokenization included), student batch-32
throughput, teacher relabel throughput (plain torch loop vs length buckets vs ONNX Runtime fp32 /
int8) with label agreement, the student under every quantization backend, and the edge
runtime's peak RSS in a process that imports only ``edge.predictor``. Contract validation
throughput comes from ``benchmarks/bench_contracts.py``.

Writes ``benchmarks/results/bench[-quick].json``, logs a run per data set to the MLflow
experiment ``edgeloop-bench`` under the benchmark home, prints medians, ratios and goals, and
(full runs over both data sets) rewrites the results table in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
NIGHTS = ("2026-11-01", "2026-11-02")

# Configuration only: CLINC150 is read through DatasetConfig, like any shop's export.
DATASETS: dict[str, dict] = {
    "bitext": {"name": "bitext"},
    "clinc150": {"name": "clinc150", "path": "data/clinc150/data_full.json", "format": "json_splits",
                 "json_keys": ["train", "val", "test"], "text_column": "text", "label_column": "intent"},
}
# 60 texts per intent keep CLINC150's teacher fine-tune within the suite's time on 2 cores
# (150 intents; seed 18 per intent, golden 12 per intent = 1,800 golden texts).
CLINC_MAX_ROWS = 9000

GOALS = {  # name: (figure key, op, threshold)
    "retention_bitext": ("bitext.retention", ">=", 0.99),
    "retention_clinc150": ("clinc150.retention", ">=", 0.97),
    "size_ratio": ("size_ratio", ">=", 50),
    "latency_ratio_p50": ("latency_ratio_p50", ">=", 20),
    "relabel_speedup": ("relabel_speedup", ">=", 3),
    "edge_peak_rss_mb": ("edge_peak_rss_mb", "<", 150),
}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"nproc": os.cpu_count(), "affinity_cpus": len(os.sched_getaffinity(0)), "cpu_model": cpu,
            "python": platform.python_version(), "platform": platform.platform()}


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "onnxruntime", "bitsandbytes", "tokenizers")}


def cli(home: Path, args: list[str], overrides: dict) -> tuple[float, dict | None]:
    """Run ``edgeloop <args>`` in its own process; (wall seconds, its JSON summary if any)."""
    sets = [f"--set=dataset.{k}={json.dumps(v)}" for k, v in overrides.items()]
    # The child sets up its own Prefect home and MLflow store under ``home``.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "MLFLOW_TRACKING_URI")}
    env["EDGELOOP_HOME"] = str(home)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args, *sets, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0,):
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"edgeloop {' '.join(args)} failed (rc {proc.returncode}):\n{tail}")
    out = proc.stdout
    start_json = out.find("\n{")
    blob = out[start_json + 1:] if start_json >= 0 else (out if out.startswith("{") else "")
    try:
        return wall, json.loads(blob) if blob.strip() else None
    except json.JSONDecodeError:
        return wall, None


def dataset_overrides(name: str, quick: bool) -> dict:
    over = dict(DATASETS[name])
    if name == "clinc150":
        over["max_rows"] = 4500 if quick else CLINC_MAX_ROWS
    return over


def bench_dataset(name: str, home: Path, quick: bool, measure_only: bool = False) -> dict:
    """Nights and every student/teacher figure for one data set."""
    from edgeloop.config import load_settings

    over = dataset_overrides(name, quick)
    res: dict = {"dataset": name, "dataset_overrides": over}
    if not measure_only:
        t, _ = cli(home, ["bootstrap-teacher", "--if-missing"], over)
        res["teacher_bootstrap_s"] = round(t, 1)
    for label, night in zip(("full_night", "incremental_night"), NIGHTS):
        if measure_only:
            break
        t, summary = cli(home, ["night", "--night", night], over)
        res[f"{label}_s"] = round(t, 1)
        res[f"{label}_summary"] = {k: v for k, v in (summary or {}).items() if k != "where_to_look"}
        print(f"[{name}] {label}: {t:.1f} s, gate {res[f'{label}_summary'].get('gate_decision')}, "
              f"retention {res[f'{label}_summary'].get('retention')}", flush=True)
    settings = load_settings(overrides={"home": str(home), "dataset": over})
    res.update(measure_models(settings, NIGHTS[-1], quick))
    return res


def measure_models(settings, night: str, quick: bool) -> dict:
    """Teacher (torch fp32) vs the shipped student, side by side on this CPU."""
    import torch

    from data_contracts.datasets import load_split
    from edge.predictor import OnnxPredictor
    from edge.redact import redact
    from models.evaluate import dir_size_mb, golden_texts
    from models.quantize import write_edge_folder
    from models.teacher import LocalTeacher
    from models.teacher_store import resolve_teacher

    from benchmarks import measure

    split = load_split(settings.dataset)
    texts, y = golden_texts(split)
    ref = resolve_teacher(settings.tracking_uri(), settings.teacher, settings.home_path() / "cache")
    teacher = LocalTeacher(ref.folder, settings.teacher.max_length, settings.teacher.relabel_batch_size)
    cand = settings.home_path() / "work" / night / "candidate"
    student = OnnxPredictor(cand / "edge")
    out: dict = {"torch_threads": torch.get_num_threads(), "n_golden": len(texts), "n_labels": len(split.labels)}

    t_pred = np.array(teacher.labels)[teacher.predict_proba(texts).argmax(1)]
    s_pred = np.array(student.labels)[student.predict_proba(texts).argmax(1)]
    out["teacher_accuracy"] = round(float(np.mean(t_pred == np.array(y))), 4)
    out["student_accuracy"] = round(float(np.mean(s_pred == np.array(y))), 4)
    out["retention"] = round(out["student_accuracy"] / out["teacher_accuracy"], 4)
    out["student_teacher_agreement"] = round(float(np.mean(s_pred == t_pred)), 4)
    out["teacher_size_mb"] = round(dir_size_mb(ref.folder), 3)
    out["student_size_mb"] = round(dir_size_mb(cand / "edge"), 3)
    out["size_ratio"] = round(out["teacher_size_mb"] / out["student_size_mb"], 1)
    print(f"  accuracy teacher {out['teacher_accuracy']} student {out['student_accuracy']} "
          f"retention {out['retention']}; size {out['teacher_size_mb']} MB vs {out['student_size_mb']} MB "
          f"({out['size_ratio']}x)", flush=True)

    runs = 60 if quick else 300
    pair = {"teacher_torch_fp32": lambda t: teacher.predict_proba([t]),
            "student_onnx_int8": lambda t: student.predict_proba([t])}
    lat = measure.blocked_latency(pair, texts, runs)
    out["latency"] = lat
    # Every call alternating: the student then also pays for the teacher's spinning threads.
    out["latency_per_call_interleaved"] = measure.interleaved_latency(pair, texts, runs // 2)
    out["latency_ratio_p50"] = round(lat["teacher_torch_fp32"]["p50_ms"] / lat["student_onnx_int8"]["p50_ms"], 1)
    print(f"  batch-1 p50 teacher {lat['teacher_torch_fp32']['p50_ms']} ms, student "
          f"{lat['student_onnx_int8']['p50_ms']} ms ({out['latency_ratio_p50']}x)", flush=True)

    tp = measure.interleaved_throughput({"student_b32_1thread": lambda ts: student.predict_proba(ts, batch_size=32)},
                                        texts, rounds=3)
    out["student_batch32_rows_per_s"] = tp["student_b32_1thread"]["rows_per_s"]

    stream = [redact(t)[0] for t in split.stream["text"]][:256 if quick else 1024]
    with tempfile.TemporaryDirectory() as tmp:
        bs = settings.teacher.relabel_batch_size
        fns = {"torch_fp32_plain_loop": measure.plain_torch_loop(teacher.model, teacher.tokenizer, teacher.max_length, bs),
               "torch_fp32_length_buckets": measure.bucketed_torch(teacher.model, teacher.tokenizer, teacher.max_length, bs)}
        sizes = {}
        for backend in ("onnx-fp32", "onnx-int8"):
            folder = write_edge_folder(teacher.model, teacher.tokenizer, Path(tmp) / backend, teacher.max_length, backend)
            pred = OnnxPredictor(folder, threads=max(1, torch.get_num_threads()))
            fns[f"ort_{backend.split('-')[1]}_length_buckets"] = measure.bucketed_onnx(pred, bs)
            sizes[backend] = round(dir_size_mb(folder), 3)
            g = np.array(pred.labels)[pred.predict_proba(texts).argmax(1)]
            out[f"teacher_{backend}_golden_accuracy"] = round(float(np.mean(g == np.array(y))), 4)
        rel = measure.interleaved_throughput(fns, stream, rounds=2 if quick else 3)
    base = rel["torch_fp32_plain_loop"]
    ref_labels = base["output"].argmax(1)
    out["relabel"] = {n: {"rows_per_s": r["rows_per_s"], "speedup": round(r["rows_per_s"] / base["rows_per_s"], 2),
                          "label_agreement": round(float(np.mean(r["output"].argmax(1) == ref_labels)), 4)}
                      for n, r in rel.items()}
    out["teacher_onnx_sizes_mb"] = sizes
    best = max((n for n in out["relabel"] if n != "torch_fp32_plain_loop"), key=lambda n: out["relabel"][n]["speedup"])
    out["relabel_best"] = best
    out["relabel_speedup"] = out["relabel"][best]["speedup"]
    for n, r in out["relabel"].items():
        print(f"  relabel {n:<28} {r['rows_per_s']:>8.1f} rows/s  {r['speedup']:>5.2f}x  agreement {r['label_agreement']}")

    out["backends"] = measure.student_backends(cand / "student", cand / "edge", texts, y, texts, 40 if quick else 150)
    for r in out["backends"]:
        print(f"  backend {r['backend']:<18} acc {r.get('accuracy')} (agree {r.get('agreement_with_torch_fp32')})  "
              f"{r.get('size_mb')} MB  p50 {r.get('p50_ms')} ms"
              + (f"  ({r['error']})" if "error" in r else ""), flush=True)
    out["edge_rss"] = measure.edge_peak_rss(cand / "edge", texts[:64])
    out["edge_peak_rss_mb"] = round(out["edge_rss"]["peak_rss_mb"], 1)
    print(f"  edge runtime peak RSS {out['edge_peak_rss_mb']} MB (heavy modules: "
          f"{out['edge_rss']['heavy_modules_loaded'] or 'none'})", flush=True)
    return out


def contracts(rows: int, quick: bool) -> dict:
    """bench_contracts.py as its author wrote it, into its own file (its committed results stay)."""
    out = RESULTS / f"bench-contracts{'-quick' if quick else ''}.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_contracts.py"), "--rows", str(rows),
                    "--out", str(out)], check=True, cwd=ROOT)
    return json.loads(out.read_text())


def goals(per: dict[str, dict]) -> dict[str, dict]:
    """Each goal: the worst value over the data sets measured, its threshold and verdict."""
    out = {}
    for goal, (key, op, thr) in GOALS.items():
        ds, _, field = key.rpartition(".")
        vals = [r[field] for d, r in per.items() if (not ds or d == ds) and field in r]
        if not vals:
            continue
        v = min(vals) if op == ">=" else max(vals)
        out[goal] = {"value": v, "op": op, "threshold": thr, "met": bool(v >= thr if op == ">=" else v < thr)}
    return out


def log_mlflow(result: dict, home: Path | None) -> None:
    """One run per data set in experiment ``edgeloop-bench``: under ``home``, or else in the
    store of ``$EDGELOOP_HOME`` / the configured tracking URI (``make bench``: ``var/``)."""
    import mlflow

    from edgeloop.config import load_settings

    settings = load_settings(overrides={"home": str(home)} if home else None)
    settings.home_path().mkdir(parents=True, exist_ok=True)
    uri = settings.tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("edgeloop-bench")
    for name, r in result["datasets"].items():
        with mlflow.start_run(run_name=f"bench-{name}{'-quick' if result['quick'] else ''}"):
            mlflow.log_params({"dataset": name, "quick": result["quick"], **{f"machine.{k}": v for k, v in result["machine"].items()}})
            flat = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            flat.update({f"relabel.{n}.rows_per_s": v["rows_per_s"] for n, v in r.get("relabel", {}).items()})
            flat.update({f"latency.{n}.p50_ms": v["p50_ms"] for n, v in r.get("latency", {}).items()})
            mlflow.log_metrics(flat)
            mlflow.log_dict(r, f"bench_{name}.json")
    print(f"MLflow: experiment 'edgeloop-bench' in {uri}")


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Measured {result['finished_at']} on {m['nproc']} CPUs ({m['cpu_model']}), "
             f"{'quick' if result['quick'] else 'full'} run, {result['wall_s']:.0f} s in all.", "",
             "| figure | " + " | ".join(result["datasets"]) + " |", "|---|" + "---|" * len(result["datasets"])]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(str(fn(r)) for r in result["datasets"].values()) + " |")

    row("golden texts / intents", lambda r: f"{r['n_golden']} / {r['n_labels']}")
    row("teacher accuracy (torch fp32)", lambda r: r["teacher_accuracy"])
    row("student accuracy (ONNX int8, as shipped)", lambda r: r["student_accuracy"])
    row("**retention**", lambda r: f"**{r['retention']}**")
    row("student/teacher agreement", lambda r: r["student_teacher_agreement"])
    row("size MB teacher / student", lambda r: f"{r['teacher_size_mb']} / {r['student_size_mb']}")
    row("**size ratio**", lambda r: f"**{r['size_ratio']}x**")
    row("batch-1 p50 ms teacher / student", lambda r: f"{r['latency']['teacher_torch_fp32']['p50_ms']} / "
        f"{r['latency']['student_onnx_int8']['p50_ms']}")
    row("**latency ratio (p50)**", lambda r: f"**{r['latency_ratio_p50']}x**")
    row("student p95 ms", lambda r: r["latency"]["student_onnx_int8"]["p95_ms"])
    row("p50 ms teacher / student, every call alternating", lambda r: "{} / {}".format(
        *(r["latency_per_call_interleaved"][k]["p50_ms"] for k in ("teacher_torch_fp32", "student_onnx_int8"))))
    row("student batch-32 rows/s (1 thread)", lambda r: r["student_batch32_rows_per_s"])
    for n in ("torch_fp32_plain_loop", "torch_fp32_length_buckets", "ort_fp32_length_buckets", "ort_int8_length_buckets"):
        row(f"relabel {n} rows/s (x, agreement)", lambda r, n=n: f"{r['relabel'][n]['rows_per_s']} "
            f"({r['relabel'][n]['speedup']}x, {r['relabel'][n]['label_agreement']})")
    row("teacher ONNX int8 golden accuracy", lambda r: r["teacher_onnx-int8_golden_accuracy"])
    row("edge peak RSS MB", lambda r: r["edge_peak_rss_mb"])
    row("teacher bootstrap s (~5 if reused)", lambda r: r.get("teacher_bootstrap_s", "n/a"))
    row("full night s (cold start)", lambda r: r.get("full_night_s", "n/a"))
    row("incremental night s (warm start)", lambda r: r.get("incremental_night_s", "n/a"))
    lines += ["", "Student backends (accuracy on golden, weights size, batch-1 p50 with tokenization, "
              "calls interleaved; torch rows use 2 threads, ONNX rows 1):", "",
              "| data set | backend | runtime | accuracy | agreement with torch fp32 | size MB | p50 ms | p95 ms |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in result["datasets"].items():
        for b in r["backends"]:
            lines.append(f"| {name} | {b['backend']} | {b['runtime']} | {b.get('accuracy', 'n/a')} | "
                         f"{b.get('agreement_with_torch_fp32', 'n/a')} | "
                         f"{b.get('size_mb', 'n/a')} | {b.get('p50_ms', 'n/a')} | {b.get('p95_ms', 'n/a')} |"
                         + (f" {b['error']} |" if "error" in b else ""))
    if result.get("contracts"):
        lines += ["", f"Contract validation ({result['contracts']['rows']} rows, bench_contracts.py): "
                  + ", ".join(f"{k} {v['rows_per_s']:,} rows/s" for k, v in result["contracts"]["figures"].items())]
    lines += ["", "Goals: " + ", ".join(f"{g} {v['value']} {v['op']} {v['threshold']} "
                                        f"{'met' if v['met'] else '**missed**'}" for g, v in result["goals"].items())]
    return "\n".join(lines)


def update_readme(md: str) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = README.read_text() if README.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    README.write_text(f"{head}{start}\n{md}\n{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, smaller CLINC150 slice (~1/3 the time)")
    ap.add_argument("--dataset", choices=["bitext", "clinc150", "all"], default="all")
    ap.add_argument("--home", help="benchmark home to (re)use; default: a fresh temporary folder, removed after")
    ap.add_argument("--contracts-rows", type=int, default=None, help="rows for bench_contracts (default 100k, quick 20k)")
    ap.add_argument("--measure-only", action="store_true",
                    help="with --home: skip bootstrap and nights, measure the last night's candidate again")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the table in benchmarks/README.md")
    args = ap.parse_args(argv)

    from edgeloop.runtime import OFFLINE_ENV, quiet_libraries

    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    quiet_libraries()
    start = time.perf_counter()
    tmp = None if args.home else tempfile.mkdtemp(prefix="edgeloop-bench-")
    base = Path(args.home or tmp).resolve()
    names = ["bitext", "clinc150"] if args.dataset == "all" else [args.dataset]
    result: dict = {"quick": args.quick, "machine": machine(), "versions": _versions(), "datasets": {}}
    try:
        for name in names:
            home = base / name  # one home per data set: its own teacher, lake and registry
            print(f"== {name} (home {home}) ==", flush=True)
            result["datasets"][name] = bench_dataset(name, home, args.quick, args.measure_only and bool(args.home))
        result["contracts"] = contracts(args.contracts_rows or (20_000 if args.quick else 100_000), args.quick)
        result["goals"] = goals(result["datasets"])
        result["wall_s"] = round(time.perf_counter() - start, 1)
        result["finished_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bench{'-quick' if args.quick else ''}{'' if args.dataset == 'all' else '-' + args.dataset}.json"
        out.write_text(json.dumps(result, indent=2, default=str))
        log_mlflow(result, base if args.home else None)
        md = markdown(result)
        print("\n" + md + f"\n\nwrote {out}")
        if not args.quick and args.dataset == "all" and not args.no_readme:
            update_readme(md)
            print(f"updated {README}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
