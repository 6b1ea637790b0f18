"""Gate benchmark: does the paired champion gate tell noise from regression, with real students?

Usage: ``python -m benchmarks.bench_gate [--dataset bitext|clinc150] [--source-home DIR] [--resamples 20]``

Reuses a home where a teacher is registered and one night filled the lake (``--source-home``;
default ``/tmp/pers`` for Bitext, ``/tmp/pers-clinc`` for CLINC150 with ``max_rows`` 9000,
the split of benchmarks/run.py). The lake and the teacher cache are COPIED into ``--work``;
the source home is only read. Four students are trained on the copy with
``models.candidate.train_candidate`` (cold, no warm start), each exported to ONNX int8 and
evaluated with ``edge.predictor.OnnxPredictor`` on the redacted golden texts:

- ``champion``: the default StudentConfig (``--epochs`` overrides the epochs), ``student.seed``;
- ``seed``: the same with ``student.seed + 1`` -> (a) false blocks: the gate should pass it;
- ``drop``: the same as the champion but every training row of one intent removed (its teacher
  label or its gold label is that intent), and every augmented copy the teacher labels as that
  intent (copies of other rows can splice in its text) -> (b) misses: the gate should fail it
  and name it;
- ``longer``: twice the epochs -> the base of (c): if it beats the champion overall, two of its
  correct golden texts of one intent (the smallest intent where both models got >= 2 texts
  right) are flipped to a wrong label -> (c): the gate should pass it.

Each comparison is made on the full golden set and on ``--resamples`` resamples of it, two ways:
``subsample`` (the headline: 80% of the golden texts drawn without replacement, a golden set the
gate could really face) and ``bootstrap`` (with replacement, also reported: a duplicated text that
one model gets wrong counts twice in the exact per-intent test, which no real golden set does, so
it overstates per-intent false blocks). The resamples are of
the golden texts (the same resample for both models), with ``models.gate.champion_checks`` and
the default GateConfig. Writes ``benchmarks/results/gate.json`` (one entry per data set, merged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sqlite3
import sys
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from benchmarks.run import dataset_overrides  # noqa: E402

SOURCE_HOMES = {"bitext": "/tmp/pers", "clinc150": "/tmp/pers-clinc"}


def source_param(home: Path, key: str) -> str | None:
    """A param the source home's nights logged to MLflow (read-only sqlite query)."""
    db = sqlite3.connect(f"file:{home / 'mlflow.db'}?mode=ro", uri=True)
    try:
        row = db.execute("select value from params where key = ? limit 1", (key,)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


@contextlib.contextmanager
def without_intent(intent: str | None):
    """Training rows (models.replay.select_rows) without any row labelled ``intent``."""
    import models.replay as replay
    import models.transfer as transfer

    if intent is None:
        yield
        return
    original = replay.select_rows

    def filtered(*args, **kwargs):
        rows = original(*args, **kwargs)
        # gold_label is a nullable string column: <NA> == intent is <NA>, counted as "not that intent"
        gone = rows["label"].eq(intent) | rows["gold_label"].eq(intent).fillna(False).astype(bool)
        return rows[~gone].reset_index(drop=True)

    def targets(lake, key, teacher, rows, label_names, cfg):
        # Augmented copies of the kept rows can splice in text of a removed row (measured on Bitext:
        # 33 of 2,806 copies had the teacher's argmax on the removed intent): drop those too.
        texts, probs, gold, hidden, stats = original_targets(lake, key, teacher, rows, label_names, cfg)
        keep = probs.argmax(axis=1) != label_names.index(intent)
        stats = {**stats, "dropped_augmented_of_intent": int((~keep).sum())}
        return ([t for t, k in zip(texts, keep) if k], probs[keep], gold[keep],
                None if hidden is None else hidden[keep], stats)

    original_targets = transfer.teacher_targets
    replay.select_rows, transfer.teacher_targets = filtered, targets
    try:
        yield
    finally:
        replay.select_rows, transfer.teacher_targets = original, original_targets


def train(name: str, cfg, lake, ref, teacher, labels, work: Path, threads: int, drop: str | None = None,
          reuse: bool = False):
    from models.candidate import train_candidate
    from models.replay import read_mark

    if reuse:  # trained there by an earlier run of this benchmark with the same options
        mark = read_mark(work / name / "student")
        if mark is None or not (work / name / "edge").is_dir():
            raise SystemExit(f"--reuse {name}: no trained student in {work / name}")
        print(f"  reused {name} from {work / name}", flush=True)
        return work / name / "edge", {"n_train": mark["n_train"], "n_augmented": mark["n_augmented"],
                                      "epochs": cfg.epochs, "seed": cfg.seed, "reused": True}

    start = time.perf_counter()
    with without_intent(drop):
        summary = train_candidate(cfg, lake, ref, teacher, labels, work / name, threads=threads)
    wall = time.perf_counter() - start
    print(f"  trained {name}: {summary['n_train']} rows (+{summary['n_augmented']} augmented), "
          f"{summary['epochs']} epochs, {wall:.0f}s", flush=True)
    return work / name / "edge", {"n_train": summary["n_train"], "n_augmented": summary["n_augmented"],
                                  "epochs": summary["epochs"], "seed": cfg.seed, "train_s": round(wall, 1),
                                  "dropped_augmented_of_intent": summary.get("dropped_augmented_of_intent"),
                                  "final_loss": round(summary["final_loss"], 4)}


def teacher_of(folder: Path) -> str | None:
    """The teacher version a trained student was distilled from (its training mark)."""
    from models.replay import read_mark

    mark = read_mark(folder / "student") or {}
    return mark.get("teacher_version")


def predict(edge: Path, texts: list[str]) -> list[str]:
    from edge.predictor import OnnxPredictor

    return [label for label, _ in OnnxPredictor(edge, threads=2).predict(texts)]


def verdict(gold, champ_pred, cand_pred, labels, gate_cfg) -> dict:
    """champion_checks on one (possibly resampled) golden set: pass, failed checks, regressed intents."""
    from models.evaluate import classification_metrics
    from models.gate import champion_checks
    from models.significance import PairedResult, regressions

    champ = classification_metrics(gold, champ_pred, labels)
    cand = classification_metrics(gold, cand_pred, labels)
    checks, rows = champion_checks(cand, champ, gate_cfg)
    names = {f.name for f in fields(PairedResult)}
    intents = [PairedResult(**{k: v for k, v in r.items() if k in names}) for r in rows[1:]]
    regressed = [r.slice for r in regressions(intents, gate_cfg.alpha, gate_cfg.min_intent_regression)]
    return {"passed": all(c.passed for c in checks), "failed": [c.name for c in checks if not c.passed],
            "regressed_intents": regressed, "overall": rows[0] if rows else None,
            "checks": [c.line() for c in checks]}


def clopper_pearson(k: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return [round(ci.low, 3), round(ci.high, 3)]


def scenario(gold, champ_pred, cand_pred, labels, gate_cfg, resamples: int, rng_seed: int,
             expect_intent: str | None = None) -> dict:
    """The verdict on the full golden set and on ``resamples`` paired resamples of it, each way."""
    full = verdict(gold, champ_pred, cand_pred, labels, gate_cfg)
    out = {"full_golden": {k: full[k] for k in ("passed", "failed", "regressed_intents", "checks")},
           "overall_effect": round(full["overall"]["effect"], 4), "resamples": resamples}
    g, a, b = (np.asarray(x, dtype=object) for x in (gold, champ_pred, cand_pred))
    for mode in ("subsample", "bootstrap"):
        rng = np.random.default_rng(rng_seed)
        passes, named, failed_checks, effects = 0, 0, {}, []
        for _ in range(resamples):
            idx = (rng.choice(len(g), int(0.8 * len(g)), replace=False) if mode == "subsample"
                   else rng.integers(0, len(g), len(g)))
            v = verdict(g[idx].tolist(), a[idx].tolist(), b[idx].tolist(), labels, gate_cfg)
            passes += v["passed"]
            named += bool(expect_intent and v["regressed_intents"] == [expect_intent])
            for name in v["failed"]:
                failed_checks[name] = failed_checks.get(name, 0) + 1
            effects.append(v["overall"]["effect"])
        r = {"passes": passes, "pass_rate_ci95": clopper_pearson(passes, resamples),
             "failed_checks_in_resamples": failed_checks,
             "overall_effect_in_resamples": [round(float(np.min(effects)), 4), round(float(np.max(effects)), 4)]}
        if expect_intent:
            r["resamples_naming_only_that_intent"] = named
        if mode == "subsample":
            out.update(r)  # the headline figures
        else:
            out["bootstrap"] = r
    return out


def flip_two(gold, champ_pred, base_pred, labels) -> tuple[list[str], dict]:
    """``base_pred`` with two texts it and the champion got right, in the smallest such intent, made wrong."""
    g, c, b = (np.asarray(x, dtype=object) for x in (gold, champ_pred, base_pred))
    both = (c == g) & (b == g)
    candidates = [(int((g == lab).sum()), lab) for lab in labels if int((both & (g == lab)).sum()) >= 2]
    n_intent, intent = min(candidates)
    idx = np.flatnonzero(both & (g == intent))[:2]
    wrong = labels[(labels.index(intent) + 1) % len(labels)]
    out = b.copy()
    out[idx] = wrong
    return out.tolist(), {"intent": intent, "intent_golden_texts": n_intent, "flipped_texts": idx.tolist(),
                          "flipped_to": wrong}


def bench(dataset: str, source: Path, work: Path, resamples: int, epochs: int | None, threads: int,
          drop: str | None, reuse: tuple[str, ...] = ()) -> dict:
    from data_contracts.datasets import load_dataset, split_dataset
    from data_contracts.lake import Lake
    from edgeloop.config import load_settings
    from models.evaluate import golden_texts
    from models.teacher_store import load_teacher, resolve_teacher

    over = dataset_overrides(dataset, quick=False)
    settings = load_settings(overrides={"home": str(work), "dataset": over})
    split = split_dataset(load_dataset(settings.dataset), settings.dataset)
    all_reused = set(reuse) >= {"champion", "seed", "drop", "longer"}
    want = source_param(source, "split_hash") if (source / "mlflow.db").exists() or not all_reused else None
    if want and want != split.split_hash:
        raise SystemExit(f"{source}'s lake was filled from split {want}, this configuration gives "
                         f"{split.split_hash}: pass the matching --source-home")
    work.mkdir(parents=True, exist_ok=True)
    if all_reused:  # only the students' predictions are needed: no teacher, no lake
        ref = teacher = lake = None
    else:
        for part in ("lake", "cache"):  # the source home stays untouched: training writes vectors to the lake
            if not (work / part).exists():
                shutil.copytree(source / part, work / part)
        ref = resolve_teacher(f"sqlite:///{source / 'mlflow.db'}", settings.teacher, work / "cache")
        teacher = load_teacher(settings.teacher, ref)
        lake = Lake(str(work / "lake"))
    labels = split.labels
    texts, gold = golden_texts(split)
    base = settings.student if epochs is None else settings.student.model_copy(update={"epochs": epochs})
    counts = {lab: gold.count(lab) for lab in labels}
    drop = drop or sorted(labels, key=lambda lab: (-counts[lab], lab))[0]  # a well-represented intent
    print(f"{dataset}: {len(labels)} intents, {len(gold)} golden texts, dropping '{drop}' for (b)", flush=True)
    models, preds = {}, {}
    plan = {"champion": (base, None), "seed": (base.model_copy(update={"seed": base.seed + 1}), None),
            "drop": (base, drop), "longer": (base.model_copy(update={"epochs": base.epochs * 2}), None)}
    for name, (cfg, without) in plan.items():
        edge, models[name] = train(name, cfg, lake, ref, teacher, labels, work / "students", threads, without,
                                   reuse=name in reuse)
        preds[name] = predict(edge, texts)
        models[name]["golden_accuracy"] = round(float(np.mean(np.asarray(preds[name]) == np.asarray(gold))), 4)
    gate_cfg = settings.gate
    champ = preds["champion"]
    res = {"dataset": dataset, "dataset_overrides": over, "source_home": str(source), "split_hash": split.split_hash,
           "teacher_version": ref.version if ref else teacher_of(work / "students" / "champion"), "n_intents": len(labels), "n_golden": len(gold),
           "golden_per_intent": [min(counts.values()), max(counts.values())],
           "gate": {k: getattr(gate_cfg, k) for k in ("alpha", "min_regression", "min_intent_regression",
                                                      "bootstrap_resamples")},
           "student": {k: getattr(base, k) for k in ("hidden_size", "num_layers", "epochs", "seed", "quantize",
                                                     "augment_copies")},
           "models": models}
    res["a_other_seed"] = scenario(gold, champ, preds["seed"], labels, gate_cfg, resamples, 1)
    res["b_missing_intent"] = {"intent": drop, **scenario(gold, champ, preds["drop"], labels, gate_cfg,
                                                          resamples, 2, expect_intent=drop)}
    better = models["longer"]["golden_accuracy"] > models["champion"]["golden_accuracy"]
    flipped, how = flip_two(gold, champ, preds["longer"], labels)
    res["c_better_but_worse_on_one_intent"] = {
        "base": "longer", "base_better_than_champion": better, **how,
        "note": "real predictions of the 2x-epochs student with 2 of its correct texts in one intent set wrong",
        **scenario(gold, champ, flipped, labels, gate_cfg, resamples, 3)}
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SOURCE_HOMES), default="bitext")
    ap.add_argument("--source-home", type=Path, help="home with a registered teacher and a filled lake (read only)")
    ap.add_argument("--work", type=Path, help="where the lake copy and students go (default /tmp/bench-gate-<dataset>)")
    ap.add_argument("--resamples", type=int, default=20)
    ap.add_argument("--epochs", type=int, help="student epochs of champion/seed/drop (default: StudentConfig's)")
    ap.add_argument("--drop", help="intent removed for (b) (default: the one with most golden texts)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", nargs="*", default=[], choices=["champion", "seed", "drop", "longer"],
                    help="students to take as an earlier run in --work trained them (same options), not retrain")
    args = ap.parse_args(argv)
    source = args.source_home or Path(SOURCE_HOMES[args.dataset])
    work = args.work or Path(f"/tmp/bench-gate-{args.dataset}")
    start = time.perf_counter()
    res = bench(args.dataset, source, work, args.resamples, args.epochs, args.threads, args.drop,
                tuple(args.reuse))
    res["wall_s"] = round(time.perf_counter() - start, 1)
    res["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "gate.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    out[args.dataset] = res
    path.write_text(json.dumps(out, indent=2) + "\n")
    for key in ("a_other_seed", "b_missing_intent", "c_better_but_worse_on_one_intent"):
        r = res[key]
        print(f"{args.dataset} {key}: full golden {'PASS' if r['full_golden']['passed'] else 'FAIL'} "
              f"{r['full_golden']['failed']} {r['full_golden']['regressed_intents']}; "
              f"{r['passes']}/{r['resamples']} subsamples pass "
              f"({r['bootstrap']['passes']}/{r['resamples']} bootstrap resamples)", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
