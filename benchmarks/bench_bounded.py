"""A simulated month: do bounded nights stay within 0.5 accuracy points of full retrains on golden?

    python -m benchmarks.bench_bounded --nights 30 --seeds 13,14     # writes results/bounded-month.json

In one process, through the plain functions a night calls (no flow, no MLflow): a lake per student
seed, its day 0 the bundled seed (gold), cold-trained into the first champion. Every night adds
``--per-night`` rows (the bundled stream in its order: 75 a night is the whole stream in 30 nights;
perturbations of it beyond), the teacher labels them (``models.relabel.label_shard``, the ONNX
teacher), and tonight's student is trained from last night's bounded student:

* bounded: tonight's rows + ``replay_size`` replay (``models.replay``), every night, a chain;
* full: every row of the lake (``full_retrain=True``), from the same starting student, every
  ``--full-every`` nights and on the last: what ``edgeloop night --full-retrain`` would have given.

Both read the same teacher outputs from the lake, so they differ only in the rows they train on.
Each is scored as shipped (ONNX int8) on the frozen golden set. ``replay_size`` and
``augment_max_rows`` are ``--replay-factor`` times the night's rows (the defaults, 4000 / 4000 for
2,000-row nights, are 2x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_scale import DAY0, ROOT, base_outputs, bench_home, ensure_teacher, unique_perturbations

RESULTS = ROOT / "benchmarks" / "results" / "bounded-month.json"


def month(home: Path, seed: int, nights: int, per_night: int, factor: float, threads: int,
          full_every: int) -> list[dict]:
    """One month on a fresh lake with student seed ``seed``; one record per night."""
    import shutil

    from data_contracts.datasets import load_split, message_id
    from data_contracts.lake import Lake
    from edgeloop.config import load_settings
    from models.candidate import train_candidate
    from models.evaluate import golden_texts, shipped_predictor
    from models.relabel import label_shard, pending_shards
    from models.teacher import LocalTeacher
    from models.teacher_store import TeacherRef

    teacher_folder = ensure_teacher(home)
    base = base_outputs(home, teacher_folder)
    work = home / f"month-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings(overrides={"home": str(work), "student": {
        "seed": seed, "replay_size": int(factor * per_night), "augment_max_rows": int(factor * per_night)}},
        environ={})
    cfg, labels = settings.student, base["labels"]
    lake, ref = Lake(work / "lake"), TeacherRef("bench", str(teacher_folder))
    teacher = LocalTeacher(teacher_folder, settings.teacher.max_length)
    g_texts, g_y = golden_texts(load_split(settings.dataset))
    extra, _ = unique_perturbations(base["stream"], max(0, nights * per_night - len(base["stream"])), seed=seed,
                                    avoid=set(base["seed"]))
    arrivals = base["stream"] + extra

    def label_new() -> int:
        shards = pending_shards(lake, ref, 2)
        return sum(label_shard(settings.teacher, lake, ref, ids)["rows_accepted"] for ids in shards)

    def accuracy(folder: Path) -> float:
        proba = shipped_predictor(folder / "edge")(g_texts)
        return float(np.mean(np.array(labels)[proba.argmax(1)] == np.array(g_y)))

    lake.append_messages(pd.DataFrame({"message_id": [message_id(t) for t in base["seed"]], "text": base["seed"],
                                       "gold_label": base["gold"]}), "seed", received_at=DAY0)
    label_new()
    first = train_candidate(cfg, lake, ref, teacher, labels, work / "b0", threads=threads, night="day-0")
    out = [{"night": 0, "kind": first["training_kind"], "accuracy_cold": accuracy(work / "b0")}]
    for n in range(1, nights + 1):
        rows = arrivals[(n - 1) * per_night:n * per_night]
        lake.append_messages(pd.DataFrame({"message_id": [message_id(t) for t in rows], "text": rows}), "stream",
                             received_at=DAY0 + timedelta(days=n))
        rec = {"night": n, "rows_labeled": label_new()}
        prev = work / f"b{n - 1}"
        chains = [("bounded", False)] + ([("full", True)] if n % full_every == 0 or n == nights else [])
        for chain, full in chains:
            dst = work / f"{chain[0]}{n}"
            start = time.perf_counter()
            r = train_candidate(cfg, lake, ref, teacher, labels, dst, (str(n - 1), prev), threads=threads,
                                full_retrain=full, night=f"{DAY0 + timedelta(days=n):%Y-%m-%d}")
            rec[f"seconds_{chain}"] = round(time.perf_counter() - start, 1)
            rec[f"rows_{chain}"] = r["n_rows_trained"]
            rec[f"kind_{chain}"] = r["training_kind"]
            rec[f"accuracy_{chain}"] = accuracy(dst)
        if "accuracy_full" in rec:
            rec["gap_points"] = round(100 * (rec["accuracy_bounded"] - rec["accuracy_full"]), 2)
        shutil.rmtree(prev, ignore_errors=True)
        shutil.rmtree(work / f"f{n}", ignore_errors=True)
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_bounded", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="benchmark home (default $EDGELOOP_HOME/bench-scale or var/bench-scale)")
    p.add_argument("--nights", type=int, default=30)
    p.add_argument("--per-night", type=int, default=75, help="rows a night (75: the bundled stream in 30 nights)")
    p.add_argument("--full-every", type=int, default=5, help="a full retrain beside the bounded night every N nights")
    p.add_argument("--replay-factor", type=float, default=2.0)
    p.add_argument("--seeds", default="13")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from edgeloop.runtime import quiet_libraries

    quiet_libraries()
    home = bench_home(args.home)
    started, load = time.perf_counter(), os.getloadavg()[0]
    runs = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs[seed] = month(home, seed, args.nights, args.per_night, args.replay_factor, args.threads,
                           args.full_every)
        RESULTS.write_text(json.dumps({"partial": True, "runs": runs}, indent=2))
    gaps = [r["gap_points"] for nights in runs.values() for r in nights if "gap_points" in r]
    late = [r["gap_points"] for nights in runs.values() for r in nights if "gap_points" in r and r["night"] > args.nights // 2]
    result = {"measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
              "load_avg_1m_start": round(load, 2), "nights": args.nights, "per_night": args.per_night,
              "replay_size": int(args.replay_factor * args.per_night), "full_every": args.full_every,
              "seeds": list(runs),
              "gap_points": {"mean": round(statistics.mean(gaps), 2), "min": min(gaps), "max": max(gaps),
                             "stdev": round(statistics.stdev(gaps), 2) if len(gaps) > 1 else 0.0,
                             "within_0.5": sum(abs(g) <= 0.5 for g in gaps), "of": len(gaps),
                             "second_half_mean": round(statistics.mean(late), 2) if late else None},
              "seconds": round(time.perf_counter() - started, 1), "runs": runs}
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["gap_points"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
