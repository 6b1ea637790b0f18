"""Scale benchmark (issue 10): does a night cost what its new rows cost, whatever the lake's size?

    python -m benchmarks.bench_scale                      # lakes of 10k, 100k, 700k; results/scale.json
    python -m benchmarks.bench_scale --sizes 10000 --full-retrain-sizes 10000 --relabel-rows 0

1. A teacher is fine-tuned once on the bundled seed (``models.teacher_store.bootstrap_teacher``).
2. Lakes of about 10k, 100k and 700k messages are built once and cached under
   ``$EDGELOOP_HOME/bench-scale`` (``var/bench-scale`` by default): day 0 holds the seed (gold), then
   one day partition per 2,000 rows of perturbed bundled messages (typos, dropped/swapped words,
   other numbers, splices of the redacted seed and stream). The real teacher labels each distinct
   source text once (soft labels and sentence vectors, torch); a perturbed row and its two stored
   augmented copies carry the outputs of the text they were made from. Labelling 700k rows with the
   teacher is more than this 2-core box can do in the time (about 1,400 rows/s with ONNX Runtime,
   half that for the vectors), so the history is filled that way; the night's own rows go through
   the real teacher.
3. Each night runs in its own process on its lake, from the same champion (cold-trained on the seed,
   its cut-off set to the lake's last day): 2,000 new messages (perturbed stream texts the lake does
   not hold) -> ingest (redaction + raw and no-PII contracts + append) -> relabel the new rows
   (ONNX teacher, 2 shards on threads) -> label contract on tonight's arrivals -> bounded training
   (new rows + ``student.replay_size`` replay; vectors and augmented copies computed for new rows
   only) -> ONNX int8 export -> evaluation on golden (teacher, candidate, champion, behaviour checks).
   Each step is timed; peak RSS is the process's VmHWM. After a night its files are removed again
   (the lake's file list is kept when built), so every night finds the same lake.
4. Optionally a full retrain night on the same lake gives the accuracy a bounded night is compared to.
5. Relabel at scale: 100k messages labeled by the relabel subflow (``flows.relabel.relabel_all``, a
   Prefect flow) on the thread runner and on a Dask LocalCluster with 2 worker processes.
6. Reads: pyarrow.dataset against DuckDB (when importable) on the largest lake.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
DAY0 = datetime(2026, 1, 1, 1, tzinfo=timezone.utc)
PER_DAY = 2000
TEACHER_KEY = "vbench"


def bench_home(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("EDGELOOP_HOME") or ROOT / "var") / "bench-scale"


def _settings(home: Path, **overrides):
    from edgeloop.config import load_settings

    return load_settings(overrides={"home": str(home / "state"), **overrides}, environ={})


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load() -> float:
    return os.getloadavg()[0]


# ---- texts -----------------------------------------------------------------------------------------

def perturb(text: str, rng: random.Random, others: list[str]) -> str:
    """One to three of augmentation's perturbations in a row."""
    from models import augment

    out = text
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        out = (augment.typo(out, rng) if op == 0 else augment.drop_word(out, rng) if op == 1 else
               augment.swap_words(out, rng) if op == 2 else augment.swap_entities(out, rng, []) if op == 3 else
               augment.splice(out, others[rng.randrange(len(others))], rng))
    return out.strip()


def unique_perturbations(base: list[str], n: int, seed: int, avoid: set[str]) -> tuple[list[str], list[int]]:
    """``n`` distinct perturbed texts of ``base`` not in ``avoid``, with the index of their source text."""
    rng, seen, texts, parents = random.Random(seed), set(avoid) | set(base), [], []
    tries = 0
    while len(texts) < n:
        i = rng.randrange(len(base))
        t = perturb(base[i], rng, base)
        tries += 1
        if t and t not in seen:
            seen.add(t)
            texts.append(t)
            parents.append(i)
        elif tries > 50 * n:
            raise RuntimeError(f"only {len(texts)} distinct perturbations of {len(base)} texts")
    return texts, parents


# ---- the teacher, the base texts' outputs, the champion (once) --------------------------------------

def ensure_teacher(home: Path) -> Path:
    """Fine-tune the teacher on the seed once; returns its model folder."""
    from data_contracts.datasets import load_split
    from models.teacher_store import bootstrap_teacher

    folder = home / "teacher" / "model"
    if (folder / "config.json").exists():
        return folder
    settings = _settings(home)
    tmp = home / "teacher.partial"
    start = time.perf_counter()
    _, result = bootstrap_teacher(settings.teacher, load_split(settings.dataset), tmp, seed=settings.dataset.split_seed,
                                  latency_runs=10)
    tmp.rename(home / "teacher")
    (home / "teacher" / "bootstrap.json").write_text(json.dumps(
        {"seconds": round(time.perf_counter() - start, 1), "golden_accuracy": result.accuracy}))
    return folder


def base_outputs(home: Path, teacher_folder: Path) -> dict:
    """The redacted seed and stream texts, the seed's gold labels, and the teacher's probs and vectors
    for each (computed once, cached in ``base.npz``)."""
    from data_contracts.datasets import load_split
    from edge.redact import redact

    cache = home / "base.npz"
    split = load_split(_settings(home).dataset)
    seed = list(dict.fromkeys(redact(t)[0] for t in split.seed["text"]))
    gold = dict(zip((redact(t)[0] for t in split.seed["text"]), split.seed["label"]))
    stream = [t for t in dict.fromkeys(redact(t)[0] for t in split.stream["text"]) if t not in gold]
    if not cache.exists():
        from models.distill import teacher_outputs
        from models.teacher import LocalTeacher

        teacher = LocalTeacher(teacher_folder)
        probs, vecs = teacher_outputs(teacher.model, teacher.tokenizer, seed + stream, teacher.max_length)
        np.savez(cache, probs=probs, vectors=vecs.astype(np.float16))
    data = np.load(cache)
    return {"seed": seed, "stream": stream, "gold": [gold[t] for t in seed], "labels": split.labels,
            "probs": data["probs"], "vectors": data["vectors"].astype(np.float32)}


def ensure_champion(home: Path, teacher_folder: Path) -> Path:
    """A student cold-trained on the seed alone (the real train path on a seed-only lake), once."""
    from data_contracts.lake import Lake
    from models.candidate import train_candidate
    from models.teacher import LocalTeacher
    from models.teacher_store import TeacherRef

    out = home / "champion"
    if (out / "edge").exists():
        return out
    base = base_outputs(home, teacher_folder)
    lake = Lake(home / "champion-lake")
    _write_day(lake, 0, base["seed"], base["gold"], base["probs"][:len(base["seed"])],
               base["vectors"][:len(base["seed"])], base["labels"], copies=None)
    settings = _settings(home)
    train_candidate(settings.student, lake, TeacherRef("bench", str(teacher_folder)), LocalTeacher(teacher_folder),
                    base["labels"], out, night="champion")
    return out


# ---- lakes -----------------------------------------------------------------------------------------

def _write_day(lake, day: int, texts: list[str], gold: list[str | None], probs: np.ndarray, vectors: np.ndarray,
               labels: list[str], copies: tuple[list[str], list[int]] | None) -> None:
    from data_contracts.datasets import message_id

    ids = [message_id(t) for t in texts]
    date = f"{DAY0 + timedelta(days=day):%Y-%m-%d}"
    lake.append_messages(pd.DataFrame({"message_id": ids, "text": texts, "gold_label": gold}),
                         "seed" if day == 0 else "stream", received_at=DAY0 + timedelta(days=day))
    key = TEACHER_KEY
    lake.append_labels(key, pd.DataFrame({"message_id": ids, "probs": list(probs.astype(np.float32)),
                                          "label": [labels[i] for i in probs.argmax(1)],
                                          "confidence": probs.max(1).astype(np.float32)}))
    if copies is None:
        return
    lake.append_vectors(key, ids, vectors, [date] * len(ids))
    c_texts, c_rows = copies
    lake.append_augmented(key, pd.DataFrame({"parent_id": [ids[i] for i in c_rows], "text": c_texts,
                                             "received_date": date}), probs[c_rows], vectors[c_rows])


def ensure_lake(home: Path, size: int, base: dict) -> Path:
    """A lake of ``size`` messages: the seed on day 0, then days of :data:`PER_DAY` perturbed rows,
    each with teacher labels, vectors and two augmented copies carried from its source text."""
    from data_contracts.lake import Lake

    root = home / f"lake-{size}"
    manifest = root / "manifest.json"
    if manifest.exists():
        return root
    start = time.perf_counter()
    lake = Lake(root / "lake")
    n_seed = len(base["seed"])
    everything = base["seed"] + base["stream"]
    rng = random.Random(size + 1)
    c_rows = [i for i in range(n_seed) for _ in range(2)]
    _write_day(lake, 0, base["seed"], base["gold"], base["probs"][:n_seed], base["vectors"][:n_seed],
               base["labels"], copies=([perturb(base["seed"][i], rng, everything) for i in c_rows], c_rows))
    texts, parents = unique_perturbations(everything, size - n_seed, seed=size, avoid=set())
    for day, s in enumerate(range(0, len(texts), PER_DAY), start=1):
        t, p = texts[s:s + PER_DAY], np.array(parents[s:s + PER_DAY])
        c_rows = [i for i in range(len(t)) for _ in range(2)]
        c_texts = [perturb(t[i], rng, everything) for i in c_rows]
        _write_day(lake, day, t, [None] * len(t), base["probs"][p], base["vectors"][p], base["labels"],
                   copies=(c_texts, c_rows))
    files = sorted(str(f.relative_to(root)) for f in (root / "lake").rglob("*") if f.is_file())
    manifest.write_text(json.dumps({"size": size, "days": day, "files": files,
                                    "build_seconds": round(time.perf_counter() - start, 1)}))
    return root


def reset_lake(root: Path) -> int:
    """Remove every file a night added (the lake's file list is kept in its manifest)."""
    keep = set(json.loads((root / "manifest.json").read_text())["files"])
    gone = 0
    for f in (root / "lake").rglob("*"):
        if f.is_file() and str(f.relative_to(root)) not in keep:
            f.unlink()
            gone += 1
    return gone


# ---- one night, in its own process ------------------------------------------------------------------

def night(home: Path, root: Path, full_retrain: bool, threads: int, warm_epochs: int | None = None) -> dict:
    """Ingest -> relabel -> label contract -> train -> evaluate on the lake at ``root``; timings in s."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from data_contracts.datasets import load_split, message_id
    from data_contracts.ingest import screen_and_store
    from data_contracts.lake import Lake
    from edge.redact import redact
    from models.candidate import train_candidate
    from models.evaluate import evaluate_night, golden_texts, teacher_stream_accuracy
    from models.relabel import check_batch_labels, label_shard, pending_shards
    from models.replay import write_mark
    from models.teacher import LocalTeacher
    from models.teacher_store import TeacherRef

    t: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds of the process (all threads): what the load does not inflate
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        t[name], cpu[name] = round(now - clock, 2), round(cpu_now - cpu_clock, 2)
        clock, cpu_clock = now, cpu_now

    reset_lake(root)
    settings = _settings(home, torch_threads=threads,
                         **({"student": {"warm_start_epochs": warm_epochs}} if warm_epochs else {}))
    teacher_folder = home / "teacher" / "model"
    base = base_outputs(home, teacher_folder)
    manifest = json.loads((root / "manifest.json").read_text())
    lake = Lake(root / "lake")
    ref = TeacherRef("bench", str(teacher_folder))
    split = load_split(settings.dataset)
    champ = root / "work" / "champion"
    shutil.rmtree(champ, ignore_errors=True)
    shutil.copytree(ensure_champion(home, teacher_folder), champ)
    last = DAY0 + timedelta(days=manifest["days"])
    write_mark(champ / "student", {"trained_through": pd.Timestamp(last).isoformat(), "teacher_version": TEACHER_KEY})
    # Perturbations of the stream the lake does not hold yet (a large lake holds many already).
    raw, _ = unique_perturbations(base["stream"], 3 * PER_DAY, seed=7, avoid=set())
    keys = [message_id(redact(r)[0]) for r in raw]
    held = set(lake.messages(ids=keys, columns=["message_id"])["message_id"])
    fresh = list(dict.fromkeys(r for r, k in zip(raw, keys) if k not in held))
    if len({message_id(redact(r)[0]) for r in fresh[:PER_DAY]}) < PER_DAY:
        raise RuntimeError(f"only {len(fresh)} new texts for a {PER_DAY}-row night")
    lap("setup")

    tonight = DAY0 + timedelta(days=manifest["days"] + 1)
    night_name = f"{tonight:%Y-%m-%d}"
    rows = pd.DataFrame({"message_id": [message_id(x) for x in fresh[:PER_DAY]], "text": fresh[:PER_DAY],
                         "gold_label": None})
    added, _, _ = screen_and_store(lake, rows, "stream", base["labels"], tonight, settings.contracts)
    lake.record_night(night_name, {"night": night_name, "ingested_at": tonight.isoformat()})
    lap("ingest")
    shards = pending_shards(lake, ref, settings.teacher.relabel_shards)
    with ThreadPoolExecutor(len(shards)) as pool:
        accounting = list(pool.map(lambda ids: label_shard(settings.teacher, lake, ref, ids), shards))
    lap("relabel")
    result, _, _ = check_batch_labels(lake, ref, split, settings.contracts, root / "work" / "contracts", night_name)
    lap("label_contract")
    teacher = LocalTeacher(teacher_folder, settings.teacher.max_length)
    lap("load_teacher")
    trained = train_candidate(settings.student, lake, ref, teacher, base["labels"], root / "work" / "candidate",
                              ("bench", champ), threads=threads, full_retrain=full_retrain,
                              last_full="2000-01-01", night=night_name, collab=settings.collab)
    lap("train")
    golden = golden_texts(split)
    results, _ = evaluate_night(golden, teacher, teacher_folder, root / "work" / "candidate" / "edge",
                                champ / "edge", latency_runs=settings.evaluation.latency_runs,
                                teacher_latency_runs=settings.evaluation.teacher_latency_runs,
                                behaviour_texts=settings.evaluation.behaviour_texts)
    stream_acc = teacher_stream_accuracy(split, lake.labels(ref.cache_key, ["message_id", "label"]))
    lap("evaluate")
    # The night's collab step (tasks/collab.py without MLflow): calibration slice, policy, OOS cut.
    from models.collab_night import collab_step

    collab = collab_step(settings.collab, lake, ref.cache_key, golden, root / "work" / "candidate" / "edge",
                         ("bench", champ / "edge", None))
    lap("collab")
    t["night"] = round(sum(v for k, v in t.items() if k != "setup"), 2)
    cpu["night"] = round(sum(v for k, v in cpu.items() if k != "setup"), 2)
    return {"lake_rows": manifest["size"], "lake_days": manifest["days"], "rows_added": added, "threads": threads,
            "warm_start_epochs": settings.student.warm_start_epochs,
            "rows_relabeled": sum(a["rows_in"] for a in accounting), "label_contract_rows": result.rows_in,
            "label_contract_ok": result.ok, "training": {k: v for k, v in trained.items()
                                                        if k not in ("history", "folder") and not k.startswith("recipe")},
            "golden_accuracy": results["candidate"].accuracy, "champion_accuracy": results["champion"].accuracy,
            "teacher_accuracy": results["teacher"].accuracy, "teacher_stream_accuracy": stream_acc,
            "collab": collab.metrics(),
            "seconds": t, "cpu_seconds": cpu, "peak_rss_mb": round(_rss_mb(), 1), "load_avg_1m_end": round(_load(), 2)}


def run_night(home: Path, root: Path, full_retrain: bool, threads: int, timeout: float,
              warm_epochs: int | None = None) -> dict:
    """:func:`night` in a fresh process; its JSON result (with the wall time of the whole process)."""
    out = root / "work" / f"night-{'full' if full_retrain else 'bounded'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.bench_scale", "--home", str(home), "--one-night", str(root),
           "--out", str(out), "--threads", str(threads)] + (["--full-retrain"] if full_retrain else []) + \
        (["--warm-epochs", str(warm_epochs)] if warm_epochs else [])
    load = _load()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"night on {root} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {**json.loads(out.read_text()), "process_seconds": round(time.perf_counter() - start, 1),
            "load_avg_1m_start": round(load, 2)}


# ---- relabel at scale: thread runner vs Dask LocalCluster (2 workers) --------------------------------

def _relabel_lake(home: Path, base: dict, rows: int):
    """A lake of ``rows`` perturbed messages, nothing labeled (built once)."""
    from data_contracts.datasets import message_id
    from data_contracts.lake import Lake

    root = home / f"relabel-{rows}"
    lake = Lake(root / "lake")
    if not (root / "built").exists():
        texts, _ = unique_perturbations(base["seed"] + base["stream"], rows, seed=rows + 11, avoid=set())
        for s in range(0, rows, 20000):
            chunk = texts[s:s + 20000]
            lake.append_messages(pd.DataFrame({"message_id": [message_id(x) for x in chunk], "text": chunk}),
                                 "stream", received_at=DAY0 + timedelta(days=s // 20000))
        (root / "built").write_text("ok")
    return lake


def relabel_bench(home: Path, base: dict, rows: int, runners=("thread", "dask")) -> dict:
    """Label ``rows`` messages on each runner, a fresh teacher key each (so everything is pending);
    the ONNX export is made before the clocks start.

    thread: the night's own path, ``flows.relabel.relabel_all`` in a Prefect flow (2 shards on
    Prefect's thread pool). dask: ``models.relabel.label_shard`` mapped over the shards on a
    ``dask.distributed`` LocalCluster of 2 single-threaded worker processes, called directly: the
    Prefect Dask subflow (``flows.relabel.relabel``) is refused by the Prefect API at this size,
    its ``shards`` parameter (100k ids, 3.5 MB) being over the 512 KB limit of flow-run parameters.
    """
    import shutil

    from models.relabel import label_shard, pending_shards
    from models.teacher_store import TeacherRef, relabel_teacher

    lake = _relabel_lake(home, base, rows)
    teacher_folder = home / "teacher" / "model"
    out: dict = {"rows": rows}
    for runner in runners:
        settings = _settings(home, runner=runner, dask_workers=2)
        ref = TeacherRef(f"relabel-{runner}", str(teacher_folder))
        shutil.rmtree(lake.labels_dir(ref.cache_key), ignore_errors=True)
        relabel_teacher(settings.teacher, ref)  # the ONNX export, once per teacher
        shards = pending_shards(lake, ref, settings.teacher.relabel_shards)
        load, start = _load(), time.perf_counter()
        if runner == "thread":
            from prefect import flow
            from prefect.testing.utilities import prefect_test_harness

            from flows.relabel import relabel_all

            @flow(name="bench-relabel-thread")
            def labelled() -> list[dict]:
                return relabel_all(settings, lake, ref, shards)

            with prefect_test_harness(server_startup_timeout=180):
                start = time.perf_counter()
                accounting = labelled()
                seconds = time.perf_counter() - start
            how = "Prefect flow, relabel_all on the thread runner"
        else:
            from dask.distributed import Client, LocalCluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                accounting = client.gather(client.map(label_shard, [settings.teacher] * len(shards),
                                                      [lake] * len(shards), [ref] * len(shards), shards, pure=False))
            seconds = time.perf_counter() - start
            how = "dask.distributed LocalCluster (2 worker processes, 1 thread each), label_shard per shard; cluster start included"
        n = sum(a["rows_accepted"] for a in accounting)
        out[runner] = {"seconds": round(seconds, 1), "rows_labeled": n, "rows_per_s": round(n / seconds, 1),
                       "shards": len(shards), "how": how, "load_avg_1m_start": round(load, 2),
                       "load_avg_1m_end": round(_load(), 2)}
        print(f"relabel {runner}: {n} rows in {seconds:.1f} s", flush=True)
    out["peak_rss_mb"] = round(_rss_mb(), 1)
    return out


# ---- reads: pyarrow.dataset vs DuckDB --------------------------------------------------------------

def compare_readers(root: Path, repeats: int = 3) -> dict:
    """The night's lake reads at the lake's size, by pyarrow.dataset (what the lake uses) and DuckDB
    (when importable), interleaved; median seconds."""
    import statistics

    from data_contracts.lake import Lake

    lake = Lake(root / "lake")
    msgs = lake._files(lake.messages_dir)
    labels = lake._files(lake.labels_dir(TEACHER_KEY))
    day = sorted(lake.partitions())[len(lake.partitions()) // 2]
    ids = lake.messages(dates=[day], columns=["message_id"])["message_id"].tolist()[:2000]
    vec_dir = f"{lake.root}/vectors/{TEACHER_KEY}"
    arrow = {"dedup_2000_ids": lambda: lake.messages(ids=ids, columns=["message_id"]),
             "unlabeled_ids": lambda: lake.unlabeled_ids(TEACHER_KEY),
             "one_day_texts": lambda: lake.messages(dates=[day], columns=["message_id", "text"]),
             "one_day_vectors": lambda: lake.vectors(TEACHER_KEY, ids, dates=[day]),
             "all_ids_and_labels": lambda: lake.labels(TEACHER_KEY, ["message_id", "label"])}
    contenders = {"pyarrow.dataset": arrow}
    try:
        import duckdb

        con = duckdb.connect()
        con.execute("SET threads TO 2")
        con.register("idf", pd.DataFrame({"message_id": ids}))
        q = lambda sql: con.sql(sql).to_arrow_table()  # noqa: E731
        contenders["duckdb"] = {
            "dedup_2000_ids": lambda: q(f"SELECT message_id FROM read_parquet({msgs}) WHERE message_id IN (SELECT message_id FROM idf)"),
            "unlabeled_ids": lambda: q(f"SELECT m.message_id FROM read_parquet({msgs}) m ANTI JOIN read_parquet({labels}) l USING (message_id)"),
            "one_day_texts": lambda: q(f"SELECT message_id, text FROM read_parquet('{lake.messages_dir}/*/*.parquet', hive_partitioning=true) WHERE received_date = '{day}'"),
            "one_day_vectors": lambda: q(f"SELECT message_id, vector FROM read_parquet('{vec_dir}/*/*.parquet', hive_partitioning=true) WHERE received_date = '{day}' AND message_id IN (SELECT message_id FROM idf)"),
            "all_ids_and_labels": lambda: q(f"SELECT message_id, label FROM read_parquet({labels})")}
        duck_version = duckdb.__version__
    except ImportError:
        duck_version = None
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in arrow} for c in contenders}
    for r in range(repeats):
        for op in arrow:
            for c in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
                start = time.perf_counter()
                contenders[c][op]()
                times[c][op].append(time.perf_counter() - start)
    return {"lake_rows": json.loads((root / "manifest.json").read_text())["size"], "message_parts": len(msgs),
            "duckdb_version": duck_version, "load_avg_1m": round(_load(), 2),
            "median_seconds": {c: {op: round(statistics.median(v), 4) for op, v in ops.items()}
                               for c, ops in times.items()}}


# ---- report ----------------------------------------------------------------------------------------

def table(result: dict) -> list[str]:
    """The Markdown lines of benchmarks/README.md's scale section."""
    nights = result["nights"]
    small = nights[0]["seconds"]["night"]
    cpu0 = nights[0]["cpu_seconds"]["night"]
    lines = [f"Measured {result['measured_at']} on {result['cpus']} CPUs under a load average of about "
             f"{result['load_avg_1m_start']} (the box is shared): wall seconds are inflated by the load, CPU seconds "
             f"(the night process, all its threads) much less. Student: {nights[0]['warm_start_epochs']} warm epoch(s), "
             f"{nights[0]['threads']} torch thread(s).", "",
             "| lake rows | night wall s (x 10k) | night CPU s (x 10k) | CPU s: ingest / relabel / label contract / "
             "train / evaluate / collab | wall s in train: select rows / teacher targets / distill / export | trained rows "
             "(new+replay+gold+copies) | teacher vectors / copies computed | golden acc | peak RSS MB | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in nights:
        s, c, tr = n["seconds"], n["cpu_seconds"], n["training"]
        lines.append(f"| {n['lake_rows']:,} | {s['night']} ({s['night'] / small:.2f}x) | {c['night']} "
                     f"({c['night'] / cpu0:.2f}x) | {c['ingest']} / {c['relabel']} / {c['label_contract']} / {c['train']} / "
                     f"{c['evaluate']} / {c.get('collab', 'n/a')} | " + " / ".join(str(v) for v in tr["seconds"].values()) +
                     f" | {tr['n_new']}+{tr['n_replay']}+{tr['n_replay_gold']}+{tr['n_augmented']} | "
                     f"{tr['vectors_computed']} / {tr['augmented_computed']} | {n['golden_accuracy']:.4f} | "
                     f"{n['peak_rss_mb']} | {n.get('load_avg_1m_start')} |")
    lines.append("")
    for f in result.get("full_retrains", []):
        b = next(n for n in nights if n["lake_rows"] == f["lake_rows"])
        lines.append(f"- {f['lake_rows']:,} rows, full retrain: {f['seconds']['night']} s ({f['training']['n_train']:,} rows "
                     f"+ {f['training']['n_augmented']:,} copies), golden {f['golden_accuracy']:.4f}; bounded "
                     f"{b['golden_accuracy']:.4f} ({100 * (b['golden_accuracy'] - f['golden_accuracy']):+.2f} points)")
    if result.get("relabel"):
        r = result["relabel"]
        lines.append(f"- relabel {r['rows']:,} rows (2 shards, ONNX teacher, label contract per shard): " + "; ".join(
            f"{k}: {v['seconds']} s, {v['rows_per_s']} rows/s, load {v['load_avg_1m_start']} ({v['how']})"
            for k, v in r.items() if isinstance(v, dict)))
    if result.get("readers"):
        r = result["readers"]
        ops = r["median_seconds"]["pyarrow.dataset"]
        lines.append(f"- reads at {r['lake_rows']:,} rows ({r['message_parts']} message parts), median s, "
                     + "; ".join(f"{op} " + " / ".join(f"{c} {r['median_seconds'][c][op]}" for c in r["median_seconds"])
                                 for op in ops))
    return lines


def update_readme(lines: list[str]) -> None:
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text()
    start, end = "<!-- scale:start -->", "<!-- scale:end -->"
    block = "\n".join([start, *lines, end])
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", help="benchmark home (default $EDGELOOP_HOME/bench-scale or var/bench-scale)")
    p.add_argument("--sizes", default="10000,100000,700000", help="lake sizes, comma-separated")
    p.add_argument("--full-retrain-sizes", default="10000", help="lakes that also get a full-retrain night")
    p.add_argument("--relabel-rows", type=int, default=100_000, help="relabel benchmark rows (0 = skip)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of a night")
    p.add_argument("--warm-epochs", type=int, help="student.warm_start_epochs of the nights (default: config's)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one night may take")
    p.add_argument("--no-readme", action="store_true")
    p.add_argument("--one-night", metavar="LAKE", help=argparse.SUPPRESS)
    p.add_argument("--relabel-only", type=int, help=argparse.SUPPRESS)
    p.add_argument("--full-retrain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--runners", default="thread,dask", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from edgeloop.runtime import quiet_libraries

    quiet_libraries()
    home = bench_home(args.home)
    home.mkdir(parents=True, exist_ok=True)
    if args.one_night:
        Path(args.out).write_text(json.dumps(night(home, Path(args.one_night), args.full_retrain, args.threads,
                                                   args.warm_epochs), default=float))
        return 0
    if args.relabel_only:
        teacher = ensure_teacher(home)
        runners = tuple(args.runners.split(","))
        Path(args.out).write_text(json.dumps(relabel_bench(home, base_outputs(home, teacher), args.relabel_only,
                                                           runners)))
        return 0
    result = {"measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
              "load_avg_1m_start": round(_load(), 2), "per_night_rows": PER_DAY}
    start = time.perf_counter()
    teacher = ensure_teacher(home)
    result["teacher"] = json.loads((home / "teacher" / "bootstrap.json").read_text())
    base = base_outputs(home, teacher)
    ensure_champion(home, teacher)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    roots = {}
    for size in sizes:
        roots[size] = ensure_lake(home, size, base)
        print(f"lake {size}: {json.loads((roots[size] / 'manifest.json').read_text())['build_seconds']} s to build", flush=True)
    result["nights"] = []
    for size in sizes:
        result["nights"].append(run_night(home, roots[size], False, args.threads, args.timeout, args.warm_epochs))
        print(json.dumps({k: result["nights"][-1][k] for k in ("lake_rows", "seconds", "peak_rss_mb")}), flush=True)
    if len(sizes) > 1:  # the first lake again: how much the shared box moves the figures
        result["repeat_first"] = run_night(home, roots[sizes[0]], False, args.threads, args.timeout, args.warm_epochs)
    result["full_retrains"] = []
    for size in [int(s) for s in args.full_retrain_sizes.split(",") if s]:
        result["full_retrains"].append(run_night(home, roots[size], True, args.threads, args.timeout,
                                                 args.warm_epochs))
        reset_lake(roots[size])
    for root in roots.values():
        reset_lake(root)
    result["readers"] = compare_readers(roots[sizes[-1]])
    if args.relabel_rows:
        out = home / "relabel.json"
        subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--home", str(home), "--relabel-only",
                        str(args.relabel_rows), "--out", str(out)], cwd=ROOT, check=True, timeout=args.timeout)
        result["relabel"] = json.loads(out.read_text())
    elif (home / "relabel.json").exists():  # measured by an earlier --relabel-only run
        result["relabel"] = json.loads((home / "relabel.json").read_text())
    result["train_steps"] = True
    result["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=float))
    lines = table(result)
    print("\n".join(lines))
    if not args.no_readme:
        update_readme(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
