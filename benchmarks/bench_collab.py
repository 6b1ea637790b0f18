"""End-cloud collaboration, measured (issue 11): device alone, cloud alone, collaborative.

Usage: ``python -m benchmarks.bench_collab [--dataset bitext|clinc150|all] [--work DIR] [--quick]``

Per data set, with the night's own functions but outside the flow (the flow does not calibrate
or route yet), on this CPU:

1. split as configured; train = seed + the first stream batch (one night's data), calibration
   slice = the next stream rows (neither training nor golden), report = golden;
2. the teacher: MiniLM fine-tuned on the seed (as ``bootstrap-teacher``), its ONNX fp32 export;
3. two students, distilled as the night does (KD + sentence vectors + augmentation, ONNX int8):
   ``kd`` and ``kd+oe`` (outlier exposure on CLINC150's ``oos_train``, :mod:`models.outliers`);
4. out-of-scope scores (MSP, energy, Mahalanobis, relative Mahalanobis): thresholds chosen on
   the calibration slice + ``oos_val`` at <= 1 point of in-scope accuracy, measured on golden +
   ``oos_test``; temperature fitted on the calibration slice (ECE before/after);
5. the systems on golden + ``oos_test``, one message at a time: the device (ONNX int8 student),
   the cloud (the teacher behind ``models.cloud_server`` on uvicorn, loopback), and the
   collaboration (:func:`edge.cloud.answer`), with per-message latency and routes.

Bitext has no out-of-scope texts: CLINC150's oos lists serve both data sets (oos_train trains,
oos_val selects, oos_test measures). Teachers and students are cached in ``--work`` (default
``var/bench-collab``); results go to ``benchmarks/results/collab[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {
    "bitext": {"name": "bitext"},
    "clinc150": {"name": "clinc150", "path": "data/clinc150/data_full.json", "format": "json_splits",
                 "json_keys": ["train", "val", "test"], "text_column": "text", "label_column": "intent",
                 "max_rows": 9000},  # as benchmarks/run.py: 60 texts per intent
}
NIGHT_BATCH = 400
OOS_SCORES = ("msp", "energy", "mahalanobis", "rel_mahalanobis")
TARGETS = (0.9, 0.95, 0.97, 0.98, 0.99)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- data -----------------------------------------------------------------------------------------

def load_parts(name: str, quick: bool, n_cal: int) -> dict:
    """Redacted texts and labels of train / calibration / golden, and the CLINC150 oos lists."""
    from data_contracts.datasets import load_dataset, split_dataset
    from edge.redact import redact
    from edgeloop.config import DatasetConfig
    from models.outliers import load_outlier_texts

    over = dict(DATASETS[name])
    if quick:
        over["max_rows"] = 3000 if name == "bitext" else 4500
    cfg = DatasetConfig(**over)
    split = split_dataset(load_dataset(cfg), cfg)
    red = lambda s: [redact(t)[0] for t in s]  # noqa: E731 - the lake stores redacted text
    stream = split.stream
    train = {"text": red(list(split.seed["text"]) + list(stream["text"][:NIGHT_BATCH])),
             "gold": list(split.seed["label"]) + [None] * min(NIGHT_BATCH, len(stream))}
    cal = stream.iloc[NIGHT_BATCH:NIGHT_BATCH + n_cal]
    oos_train = load_outlier_texts(keys=("oos_train",))
    oos_val = load_outlier_texts(keys=("oos_val",), exclude=set(oos_train))
    oos_test = load_outlier_texts(keys=("oos_test",), exclude=set(oos_train) | set(oos_val))
    return {"labels": split.labels, "split_hash": split.split_hash, "train": train,
            "seed_text": red(split.seed["text"]), "seed_label": list(split.seed["label"]),
            "cal": {"text": red(cal["text"]), "label": list(cal["label"])},
            "golden": {"text": red(split.golden["text"]), "label": list(split.golden["label"])},
            "oos_train": oos_train, "oos_val": oos_val, "oos_test": oos_test, "dataset": over}


# ---- models ---------------------------------------------------------------------------------------

def teacher(parts: dict, work: Path) -> tuple[Path, Path]:
    """(torch teacher folder, its ONNX fp32 edge folder), trained and exported once per work dir."""
    from edgeloop.config import TeacherConfig
    from models.quantize import write_edge_folder
    from models.teacher import LocalTeacher, fine_tune_teacher

    cfg = TeacherConfig()
    model_dir, onnx_dir = work / "teacher" / "model", work / "teacher" / "onnx-fp32"
    if not (model_dir / "config.json").exists():
        _log(f"fine-tuning the teacher on {len(parts['seed_text'])} seed texts")
        fine_tune_teacher(parts["seed_text"], parts["seed_label"], parts["labels"], cfg, model_dir)
    if not (onnx_dir / "model.onnx").exists():
        t = LocalTeacher(model_dir, cfg.max_length)
        write_edge_folder(t.model, t.tokenizer, onnx_dir, cfg.max_length, backend="onnx-fp32")
    return model_dir, onnx_dir


def student(parts: dict, work: Path, teacher_dir: Path, teacher_onnx, variant: str, oe_share: float) -> dict:
    """Distil (or reuse) the ``kd`` or ``kd+oe`` student; returns its folders and OE settings."""
    from edgeloop.config import StudentConfig
    from models.distill import distill, prepare_transfer, teacher_outputs
    from models.outliers import with_outliers
    from models.quantize import write_edge_folder
    from models.student import build_student, save_student
    from models.teacher import LocalTeacher

    out = work / f"student-{variant}"
    info_path = out / "info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    cfg = StudentConfig()
    labels = parts["labels"]
    texts = parts["train"]["text"]
    gold = np.array([labels.index(g) if g is not None else -1 for g in parts["train"]["gold"]])
    probs = teacher_onnx.predict_proba(texts)
    oos = parts["oos_train"] if variant == "kd+oe" else []
    model, tokenizer = build_student(teacher_dir, texts + oos, labels, cfg)
    t = LocalTeacher(teacher_dir, 48)
    texts_t, probs_t, gold_t, hidden = prepare_transfer(t, texts, probs, gold, cfg)
    repeat = 0
    if oos:
        repeat = max(1, round(oe_share * len(texts_t) / ((1 - oe_share) * len(oos))))
        oos_hidden = teacher_outputs(t.model, t.tokenizer, oos, 48)[1] if hidden is not None else None
        texts_t, probs_t, gold_t, hidden = with_outliers(texts_t, probs_t, gold_t, hidden, oos, oos_hidden, repeat)
    _log(f"distilling student {variant}: {len(texts_t)} transfer rows (outlier rows: {len(oos) * repeat})")
    start = time.perf_counter()
    distill(model, tokenizer, texts_t, probs_t, gold_t, cfg, teacher_hidden=hidden)
    save_student(model, tokenizer, out / "student")
    write_edge_folder(model, tokenizer, out / "edge", cfg.max_length, backend=cfg.quantize)
    info = {"folder": str(out), "variant": variant, "n_transfer": len(texts_t), "oe_repeat": repeat,
            "n_outlier_rows": len(oos) * repeat, "train_s": round(time.perf_counter() - start, 1)}
    info_path.write_text(json.dumps(info, indent=1))
    return info


def onnx_logits(pred, texts: list[str], batch: int = 64) -> np.ndarray:
    """Raw logits of an edge folder's model (OnnxPredictor gives softmax; energy needs logits)."""
    out = np.zeros((len(texts), len(pred.labels)), np.float32)
    for s in range(0, len(texts), batch):
        encs = pred.tokenizer.encode_batch(texts[s:s + batch])
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), np.int64)
        mask = np.zeros_like(ids)
        for r, e in enumerate(encs):
            ids[r, :len(e.ids)], mask[r, :len(e.ids)] = e.ids, 1
        out[s:s + batch] = pred.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    return out


def torch_features(student_dir: Path, texts: list[str], batch: int = 128) -> np.ndarray:
    """Mean-pooled last hidden states of the float student (for the Mahalanobis scores)."""
    import torch

    from models.distill import mean_pool
    from models.student import load_student
    from models.training import tokenize

    model, tok = load_student(student_dir)
    feats = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            enc = tokenize(tok, texts[s:s + batch], 48)
            h = model(**enc, output_hidden_states=True).hidden_states[-1]
            feats.append(mean_pool(h, enc["attention_mask"]).numpy())
    return np.concatenate(feats)


# ---- scores and thresholds ------------------------------------------------------------------------

def score_sets(info: dict, parts: dict, temperature: float, logits: dict) -> dict[str, dict[str, np.ndarray]]:
    """Out-of-scope score of every method on the selection and report sets (higher = in scope)."""
    from edge.collab import oos_score
    from models.deferral import Mahalanobis

    student_dir = Path(info["folder"]) / "student"
    # Fitted on the training texts the teacher is sure of, under the teacher's label.
    train_feats = torch_features(student_dir, parts["train"]["text"])
    y_train = logits["train_teacher"].argmax(axis=1)
    sure = logits["train_teacher"].max(axis=1) >= 0.5
    maha = Mahalanobis().fit(train_feats[sure], y_train[sure])
    rel = Mahalanobis(relative=True).fit(train_feats[sure], y_train[sure])
    out = {}
    for part in ("sel", "rep"):
        z = logits[part]
        feats = torch_features(student_dir, logits[f"{part}_texts"])
        out[part] = {"msp": oos_score(z, "msp", temperature), "energy": oos_score(z, "energy"),
                     "mahalanobis": maha.score(feats), "rel_mahalanobis": rel.score(feats)}
    return out


def compare_oos(scores: dict, sel_in_ok: np.ndarray, rep_in_ok: np.ndarray, n_sel_in: int, n_rep_in: int,
                loss: float) -> dict:
    """Per score: threshold chosen on selection, recall / accuracy loss / AUROC on report."""
    from models.deferral import auroc, choose_oos_threshold

    res = {}
    for name in OOS_SCORES:
        s, r = scores["sel"][name], scores["rep"][name]
        c = choose_oos_threshold(s[:n_sel_in], sel_in_ok, s[n_sel_in:], loss)
        r_in, r_oos = r[:n_rep_in], r[n_rep_in:]
        kept_ok = rep_in_ok & (r_in >= c.threshold)
        res[name] = {"threshold": c.threshold, "sel_oos_recall": round(c.oos_recall, 4),
                     "oos_recall": round(float(np.mean(r_oos < c.threshold)), 4),
                     "in_scope_accuracy_loss": round(float(rep_in_ok.mean() - kept_ok.mean()), 4),
                     "auroc": round(auroc(r_in, r_oos), 4)}
    return res


# ---- the systems over HTTP ------------------------------------------------------------------------

def start_cloud(onnx_dir: Path, temperature: float, oos_threshold: float | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "models.cloud_server", "--model-dir", str(onnx_dir), "--port", str(port),
           "--teacher-version", "bench", "--threads", "1", "--max-wait-ms", "2", "--temperature", str(temperature)]
    if oos_threshold is not None:
        cmd += ["--oos-threshold", str(oos_threshold)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("cloud server did not start")


def run_systems(texts: list[str], gold: list[str | None], device, labels: list[str], policy, url: str) -> dict:
    """Each message once through each system; routes, answers and per-message latency."""
    from dataclasses import replace

    from edge.cloud import CloudClient, answer
    from edge.collab import decide
    from models.deferral import collab_metrics

    client = CloudClient(url, timeout_s=2.0, device_id="dev-bench0")
    device_policy = replace(policy, threshold=0.0)  # the device answers all it does not reject
    runs: dict[str, dict] = {k: {"routes": [], "answers": [], "ms": []} for k in ("device", "cloud", "collab")}
    for text in texts:
        t0 = time.perf_counter()
        d = decide(onnx_logits(device, [text]), device_policy)[0]
        runs["device"]["ms"].append((time.perf_counter() - t0) * 1e3)
        runs["device"]["routes"].append(d.route)
        runs["device"]["answers"].append(None if d.route == "rejected" else labels[d.index])

        t0 = time.perf_counter()
        reply = client.classify([text])
        runs["cloud"]["ms"].append((time.perf_counter() - t0) * 1e3)
        if reply is None:
            raise RuntimeError(f"cloud failed during the benchmark: {client.last_error}")
        r = reply.results[0]
        runs["cloud"]["routes"].append("rejected" if r.out_of_scope else "cloud")
        runs["cloud"]["answers"].append(None if r.out_of_scope else r.label)

        t0 = time.perf_counter()
        a = answer(text, onnx_logits(device, [text])[0], labels, policy, client, started=t0)
        runs["collab"]["ms"].append(a.latency_ms)
        runs["collab"]["routes"].append(a.route)
        runs["collab"]["answers"].append(a.label)
        if a.flag:
            raise RuntimeError(f"collaboration fell back locally during the benchmark: {a.flag}")
    out = {}
    for name, run in runs.items():
        m = collab_metrics(run["routes"], run["answers"], gold)
        ms = np.array(run["ms"])
        m.update(p50_ms=round(float(np.percentile(ms, 50)), 3), p95_ms=round(float(np.percentile(ms, 95)), 3))
        out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        out[name]["_routes"], out[name]["_answers"] = run["routes"], run["answers"]
    return out


# ---- one data set ---------------------------------------------------------------------------------

def bench_dataset(name: str, work: Path, args) -> dict:
    from edge.collab import calibrated_probs
    from edge.predictor import OnnxPredictor
    from models.calibration import calibrate, expected_calibration_error
    from models.deferral import choose_oos_threshold, choose_threshold, make_policy

    started = time.perf_counter()
    parts = load_parts(name, args.quick, args.n_cal)
    labels = parts["labels"]
    work = work / (name + ("-quick" if args.quick else ""))
    teacher_dir, teacher_onnx_dir = teacher(parts, work)
    t_pred = OnnxPredictor(teacher_onnx_dir, threads=2)
    infos = {v: student(parts, work, teacher_dir, t_pred, v, args.oe_share) for v in ("kd", "kd+oe")}

    cal, golden = parts["cal"], parts["golden"]
    y_cal = np.array([labels.index(x) for x in cal["label"]])
    y_gold = np.array([labels.index(x) for x in golden["label"]])
    sel_texts, rep_texts = cal["text"] + parts["oos_val"], golden["text"] + parts["oos_test"]
    n_sel, n_rep = len(cal["text"]), len(golden["text"])
    tp = {"sel": t_pred.predict_proba(sel_texts), "rep": t_pred.predict_proba(rep_texts),
          "train": t_pred.predict_proba(parts["train"]["text"])}
    t_cal = calibrate(np.log(np.clip(tp["sel"][:n_sel], 1e-12, None)), y_cal)
    t_conf = {k: calibrated_probs(np.log(np.clip(v, 1e-12, None)), t_cal.temperature) for k, v in tp.items()}
    t_ok_sel = tp["sel"][:n_sel].argmax(1) == y_cal
    t_ok_rep = tp["rep"][:n_rep].argmax(1) == y_gold
    t_oos = choose_oos_threshold(t_conf["sel"].max(1)[:n_sel], t_ok_sel, t_conf["sel"].max(1)[n_sel:], args.oos_loss)
    res: dict = {"dataset": parts["dataset"], "split_hash": parts["split_hash"], "n_labels": len(labels),
                 "n_train": len(parts["train"]["text"]), "n_calibration": n_sel, "n_golden": n_rep,
                 "n_oos_train": len(parts["oos_train"]), "n_oos_val": len(parts["oos_val"]),
                 "n_oos_test": len(parts["oos_test"]), "students": infos,
                 "teacher": {"golden_accuracy": round(float(t_ok_rep.mean()), 4), "calibration": t_cal.to_dict(),
                             "oos_threshold_msp": t_oos.threshold}}

    per_variant = {}
    for variant, info in infos.items():
        pred = OnnxPredictor(Path(info["folder"]) / "edge", threads=1)
        z = {"sel": onnx_logits(pred, sel_texts), "rep": onnx_logits(pred, rep_texts),
             "sel_texts": sel_texts, "rep_texts": rep_texts, "train_teacher": tp["train"]}
        rep_cal = calibrate(z["sel"][:n_sel], y_cal)
        s_ok_sel, s_ok_rep = z["sel"][:n_sel].argmax(1) == y_cal, z["rep"][:n_rep].argmax(1) == y_gold
        scores = score_sets(info, parts, rep_cal.temperature, z)
        per_variant[variant] = {
            "golden_accuracy": round(float(s_ok_rep.mean()), 4), "calibration": rep_cal.to_dict(),
            "golden_ece_before": round(expected_calibration_error(calibrated_probs(z["rep"][:n_rep], 1.0), y_gold), 4),
            "golden_ece_after": round(expected_calibration_error(
                calibrated_probs(z["rep"][:n_rep], rep_cal.temperature), y_gold), 4),
            "oos": compare_oos(scores, s_ok_sel, s_ok_rep, n_sel, n_rep, args.oos_loss),
            "_z": z, "_scores": scores, "_ok_sel": s_ok_sel, "_ok_rep": s_ok_rep, "_pred": pred}
        _log(f"[{name}] {variant}: acc {s_ok_rep.mean():.4f}, T {rep_cal.temperature:.3f}, "
             f"ECE {rep_cal.ece_before:.4f} -> {rep_cal.ece_after:.4f}; OOS " +
             ", ".join(f"{k} recall {v['oos_recall']:.3f} loss {v['in_scope_accuracy_loss']:.4f} auroc {v['auroc']:.3f}"
                       for k, v in per_variant[variant]["oos"].items()))
    # The shipped choice: the best device-computable score by recall on the selection set.
    best = max(((v, s) for v in per_variant for s in ("msp", "energy")),
               key=lambda vs: (per_variant[vs[0]]["oos"][vs[1]]["sel_oos_recall"], per_variant[vs[0]]["oos"][vs[1]]["auroc"]))
    variant, score = best
    pv = per_variant[variant]
    temp = pv["calibration"]["temperature"]
    conf_sel = calibrated_probs(pv["_z"]["sel"][:n_sel], temp).max(1)
    deferral = choose_threshold(conf_sel, pv["_ok_sel"], args.target)
    # Out-of-scope threshold for the collaboration: costs at most oos_loss of what the device+cloud gets right.
    sys_ok_sel = np.where(conf_sel >= (deferral.threshold if deferral.threshold is not None else 2.0),
                          pv["_ok_sel"], t_ok_sel & (t_conf["sel"][:n_sel].max(1) >= t_oos.threshold))
    s_sel = pv["_scores"]["sel"][score]
    oos_choice = choose_oos_threshold(s_sel[:n_sel], sys_ok_sel, s_sel[n_sel:], args.oos_loss)
    policy = make_policy(temp, deferral, oos_choice, score)
    _log(f"[{name}] policy: {policy.to_dict()}")

    proc, url = start_cloud(teacher_onnx_dir, t_cal.temperature, t_oos.threshold)
    try:
        idx = np.arange(len(rep_texts))
        if args.latency_rows and len(idx) > args.latency_rows:  # a stratified subset in quick runs
            idx = np.sort(np.random.default_rng(0).choice(len(idx), args.latency_rows, replace=False))
        texts = [rep_texts[i] for i in idx]
        gold = [golden["label"][i] if i < n_rep else None for i in idx]
        systems = run_systems(texts, gold, pv["_pred"], labels, policy, url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    p_rep = calibrated_probs(pv["_z"]["rep"][idx], temp)
    on_device = p_rep.max(1) >= (deferral.threshold if deferral.threshold is not None else 2.0)
    no_reject = [labels[i] for i in np.where(on_device, p_rep.argmax(1), tp["rep"][idx].argmax(1))]
    clear = np.array([y is not None for y in gold]) & (t_conf["rep"][idx].max(1) >= 0.9)
    res.update(systems_extra(systems, gold, clear, no_reject))
    res["systems"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in systems.items()}
    res["policy"] = policy.to_dict()
    res["deferral_on_calibration"] = deferral.to_dict()
    res["oos_choice"] = {"variant": variant, "score": score, **oos_choice.to_dict()}
    res["variants"] = {v: {k: x for k, x in d.items() if not k.startswith("_")} for v, d in per_variant.items()}
    res["target_sweep"] = target_sweep(pv, conf_sel, t_ok_rep, t_conf["rep"][:n_rep], n_rep, y_gold, temp)
    res["n_systems_rows"] = len(texts)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    return res


def systems_extra(systems: dict, gold: list, clear: np.ndarray, no_reject: list[str]) -> dict:
    """Goal figures: collaboration vs teacher, what rejection costs, clear messages kept on the device.

    ``no_reject``: the collaboration's answer had nothing been rejected (device intent above the
    threshold, else the teacher's); ``clear``: in-scope messages the teacher is sure of (>= 0.9).
    """
    g = np.array([x is not None for x in gold])
    collab, cloud = systems["collab"], systems["cloud"]
    in_acc_no_reject = float(np.mean([a == y for a, y, m in zip(no_reject, gold, g) if m]))
    kept = np.array(collab["_routes"]) == "device"
    return {"goals": {
        "collab_in_scope_accuracy": collab.get("in_scope_accuracy"),
        "teacher_in_scope_accuracy": cloud.get("in_scope_accuracy"),
        "collab_at_least_teacher": collab.get("in_scope_accuracy", 0) >= cloud.get("in_scope_accuracy", 1),
        "collab_cloud_share": collab["cloud_share"], "cloud_share_at_most_0.30": collab["cloud_share"] <= 0.30,
        "collab_oos_recall": collab.get("oos_recall"),
        "collab_in_scope_accuracy_without_rejection": round(in_acc_no_reject, 4),
        "collab_rejection_cost": round(in_acc_no_reject - collab.get("in_scope_accuracy", 0), 4),
        "device_oos_recall": systems["device"].get("oos_recall"),
        "clear_in_scope_messages": int(clear.sum()),
        "clear_kept_on_device": round(float(kept[clear].mean()), 4) if clear.any() else None}}


def target_sweep(pv: dict, conf_sel: np.ndarray, t_ok_rep: np.ndarray, t_conf_rep: np.ndarray, n_rep: int,
                 y_gold: np.ndarray, temp: float) -> list[dict]:
    """In scope, no rejection: thresholds chosen on calibration for several targets, measured on golden."""
    from edge.collab import calibrated_probs
    from models.deferral import choose_threshold

    p = calibrated_probs(pv["_z"]["rep"][:n_rep], temp)
    conf, ok = p.max(1), p.argmax(1) == y_gold
    rows = []
    for target in TARGETS:
        c = choose_threshold(conf_sel, pv["_ok_sel"], target)
        dev = conf >= (c.threshold if c.threshold is not None else 2.0)
        system_ok = np.where(dev, ok, t_ok_rep)
        rows.append({"target": target, "threshold": c.threshold, "coverage_calibration": round(c.coverage, 4),
                     "coverage_golden": round(float(dev.mean()), 4),
                     "device_accuracy_answered": round(float(ok[dev].mean()), 4) if dev.any() else None,
                     "system_accuracy": round(float(system_ok.mean()), 4),
                     "teacher_accuracy": round(float(t_ok_rep.mean()), 4), "cloud_share": round(float(1 - dev.mean()), 4)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["bitext", "clinc150", "all"], default="all")
    ap.add_argument("--work", default=str(ROOT / "var" / "bench-collab"), help="cache of teachers and students")
    ap.add_argument("--quick", action="store_true", help="small subsets (smoke run)")
    ap.add_argument("--target", type=float, default=0.98, help="collab.target_accuracy")
    ap.add_argument("--oos-loss", type=float, default=0.01, help="in-scope accuracy the rejection may cost")
    ap.add_argument("--oe-share", type=float, default=0.15, help="share of outlier rows in the transfer set")
    ap.add_argument("--n-cal", type=int, default=1500, help="calibration slice rows (from the unused stream)")
    ap.add_argument("--latency-rows", type=int, default=0, help="run the systems on this many rows (0 = all)")
    args = ap.parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    names = ["bitext", "clinc150"] if args.dataset == "all" else [args.dataset]
    out_path = RESULTS / ("collab-quick.json" if args.quick else "collab.json")
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("datasets", {})
    results["settings"] = {k: v for k, v in vars(args).items() if k != "work"}
    for name in names:
        results["datasets"][name] = bench_dataset(name, Path(args.work), args)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1, default=float))
        _log(f"[{name}] systems: " + json.dumps(results["datasets"][name]["systems"]))
        _log(f"[{name}] goals: " + json.dumps(results["datasets"][name]["goals"]))
    _log(f"wrote {out_path}")


if __name__ == "__main__":
    main()
