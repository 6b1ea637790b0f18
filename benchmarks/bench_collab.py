"""End-cloud collaboration, measured (issue 11): device alone, cloud alone, collaborative.

Usage: ``python -m benchmarks.bench_collab [--dataset bitext|clinc150|all] [--work DIR] [--quick]``

Every night already calibrates the candidate and chooses its policy (:mod:`models.collab_night`:
temperature on the calibration slice, deferral threshold on *golden* at
``collab.target_accuracy``, out-of-scope cut on ``oos_val``) and devices route with it
(:func:`edge.cloud.answer`). What this benchmark adds, per data set, on this CPU:

1. held-out thresholds: everything is chosen on a calibration slice (stream rows that are neither
   training nor golden: the next ``--n-cal`` after one night's batch) + ``oos_val`` and measured on
   golden + ``oos_test`` (the night chooses on golden itself, so its coverage is not held out);
2. the teacher: MiniLM fine-tuned on the seed (as ``bootstrap-teacher``), its ONNX fp32 export;
   two students distilled as the night does (KD + sentence vectors + augmentation, ONNX int8):
   ``kd`` and ``kd+oe`` (outlier exposure on CLINC150's ``oos_train``, :mod:`models.outliers`);
   trained once per ``--work`` folder and reused;
3. out-of-scope scores compared on both students (MSP, energy, Mahalanobis, relative
   Mahalanobis: cut at <= ``--oos-loss`` of in-scope accuracy on the slice, measured on the report
   set); the collaboration itself runs what the night ships: the ``kd+oe`` student and
   ``collab.oos_score`` (energy), its cut budgeted so that all rejection (the device's cut plus the
   cloud's own) costs at most ``--oos-loss`` of the collaboration's accuracy on the slice;
4. one measured run at ``--target`` (0.98, the default ``collab.target_accuracy``), one message
   at a time over golden + ``oos_test``: the device alone (:func:`edge.cloud.answer` with no
   cloud: it never defers; its own cut at ``--oos-loss`` of its own accuracy), the cloud alone
   (the teacher behind ``models.cloud_server`` on uvicorn, loopback, with its own temperature and
   cut at ``--oos-loss`` of its accuracy) and the collaboration (:func:`edge.cloud.answer` with
   that cloud); routes, answers and per-message latency;
5. a sweep over ``collab.target_accuracy`` (:data:`TARGETS`) computed offline from that run's
   per-message device logits and cloud replies (no more cloud round trips): thresholds chosen on
   the slice each time, routed with :func:`edge.collab.decide` as a device does; the sweep's row
   at ``--target`` reproduces the measured run (checked, ``replay_agreement``), and each row says
   whether the goals hold (:func:`goals`).

Bitext has no out-of-scope texts: CLINC150's oos lists serve both data sets (oos_train trains,
oos_val selects, oos_test measures). Results go to ``benchmarks/results/collab[-quick].json``; a
full run of both data sets also rewrites the generated part of benchmarks/README.md's collab
section (``--no-readme`` not to).
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
TARGETS = (0.95, 0.97, 0.98, 0.99, 0.995)
#: The goals (issue 11) each sweep row is checked against; "clear" in-scope messages are those the
#: cloud's teacher answers with calibrated confidence >= CLEAR_CONFIDENCE, and "stay on the device"
#: means the device answers at least CLEAR_ON_DEVICE of them itself (our reading of the goal).
MAX_CLOUD_SHARE = 0.30
MIN_OOS_RECALL = 0.9
MAX_REJECTION_COST = 0.01
CLEAR_CONFIDENCE = 0.9
CLEAR_ON_DEVICE = 0.95


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
    red = lambda s: [redact(t)[0] for t in s]  # the lake stores redacted text
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

SYSTEMS = ("device", "cloud", "collab")


def start_cloud(onnx_dir: Path, temperature: float, oos_threshold: float | None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "models.cloud_server", "--model-dir", str(onnx_dir), "--host", "127.0.0.1",
           "--port", str(port), "--teacher-version", "bench", "--threads", "1", "--max-wait-ms", "2",
           "--temperature", str(temperature)]
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


def run_systems(texts: list[str], device, labels: list[str], policy, device_policy, url: str) -> tuple[dict, dict]:
    """Each message once through each system, one message at a time (``device_policy``: the
    device alone's, whose out-of-scope cut is chosen for the device's own accuracy).

    Returns per system its routes, answers, whether the message went to the cloud and latency; and
    what the sweep replays: the device's logits for each message as the collaboration computed
    them, and the cloud's reply to each (label, calibrated confidence, out_of_scope).
    """
    from edge.cloud import CloudClient, answer
    from models.collab_night import edge_logits

    client = CloudClient(url, timeout_s=2.0, device_id="dev-bench0")
    runs = {k: {"routes": [], "answers": [], "sent": [], "ms": []} for k in SYSTEMS}
    logits = np.zeros((len(texts), len(labels)), np.float32)
    cloud = {"label": [], "confidence": [], "out_of_scope": []}

    def record(system: str, route: str, label: str | None, sent: bool, ms: float) -> None:
        for key, value in zip(("routes", "answers", "sent", "ms"), (route, label, sent, ms)):
            runs[system][key].append(value)

    for i, text in enumerate(texts):
        t0 = time.perf_counter()  # the device with no cloud: never defers (edge.cloud.answer, cloud=None)
        a = answer(text, edge_logits(device, [text])[0], labels, device_policy, None, started=t0)
        record("device", a.route, a.label, False, a.latency_ms)

        t0 = time.perf_counter()
        reply = client.classify([text])
        ms = (time.perf_counter() - t0) * 1e3
        if reply is None:
            raise RuntimeError(f"cloud failed during the benchmark: {client.last_error}")
        r = reply.results[0]
        for key, value in zip(("label", "confidence", "out_of_scope"), (r.label, r.confidence, r.out_of_scope)):
            cloud[key].append(value)
        record("cloud", "rejected" if r.out_of_scope else "cloud", None if r.out_of_scope else r.label, True, ms)

        t0 = time.perf_counter()
        z = edge_logits(device, [text])[0]
        a = answer(text, z, labels, policy, client, started=t0)
        if a.flag:
            raise RuntimeError(f"collaboration fell back locally during the benchmark: {a.flag}")
        logits[i] = z
        record("collab", a.route, a.label, a.deferred, a.latency_ms)
    return runs, {"logits": logits, **{k: np.array(v) for k, v in cloud.items()}}


# ---- figures, policies and the offline sweep ------------------------------------------------------

def figures(routes: list[str], answers: list, sent, gold: list, clear: np.ndarray, ms=None) -> dict:
    """:func:`models.deferral.collab_metrics` plus what went to the cloud (a deferred message the
    cloud rejects counts as sent; its route is ``rejected``), clear messages answered on the
    device, and latency percentiles."""
    from models.deferral import collab_metrics

    m = collab_metrics(routes, answers, gold)
    sent = np.asarray(sent, bool)
    in_scope = np.array([g is not None for g in gold])
    m["sent_to_cloud"] = float(sent.mean())
    m["in_scope_sent_to_cloud"] = float(sent[in_scope].mean())
    m["clear_on_device"] = float(np.mean(np.asarray(routes)[clear] == "device")) if clear.any() else None
    if ms is not None:
        m["p50_ms"], m["p95_ms"] = float(np.percentile(ms, 50)), float(np.percentile(ms, 95))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}


def simulate(logits: np.ndarray, labels: list[str], policy, cloud: dict, cloud_rejects: bool = True
             ) -> tuple[list[str], list, list[bool]]:
    """Routes, answers and cloud use of the collaboration replayed from recorded device logits and
    cloud replies, routed with :func:`edge.collab.decide` as :func:`edge.cloud.answer_many` routes."""
    from edge.collab import decide

    routes, answers, sent = [], [], []
    for i, d in enumerate(decide(logits, policy)):
        sent.append(d.route == "cloud")
        if d.route == "cloud" and cloud_rejects and cloud["out_of_scope"][i]:
            routes.append("rejected")
            answers.append(None)
        elif d.route == "cloud":
            routes.append("cloud")
            answers.append(str(cloud["label"][i]))
        else:
            routes.append(d.route)
            answers.append(None if d.route == "rejected" else labels[d.index])
    return routes, answers, sent


def choose_policy(target: float, sel: dict, temperature: float, score: str, oos_loss: float):
    """The collaboration's policy chosen on the selection set (calibration slice + ``oos_val``).

    Deferral threshold at ``target`` on the slice; the out-of-scope cut is budgeted so that all
    rejection, the cloud's own (on what is deferred) plus the device's cut, costs at most
    ``oos_loss`` of the collaboration's in-scope accuracy on the slice.
    """
    from dataclasses import replace

    from edge.collab import calibrated_probs, oos_score
    from models.deferral import choose_oos_threshold, choose_threshold, make_policy

    n = sel["n"]
    conf = calibrated_probs(sel["z"][:n], temperature).max(1)
    deferral = choose_threshold(conf, sel["device_ok"], target)
    on_device = conf >= (deferral.threshold if deferral.threshold is not None else np.inf)
    ok_no_reject = np.where(on_device, sel["device_ok"], sel["cloud_ok"])
    ok = np.where(on_device, sel["device_ok"], sel["cloud_ok"] & ~sel["cloud_rejects"])
    cloud_cost = float(ok_no_reject.mean() - ok.mean())
    budget = max(0.0, oos_loss - cloud_cost)
    s = oos_score(sel["z"], score, temperature)
    oos = choose_oos_threshold(s[:n], ok, s[n:], budget)
    policy = replace(make_policy(temperature, deferral, oos, score), oos_max_accuracy_loss=oos_loss)
    return policy, {"deferral": deferral.to_dict(), "oos": oos.to_dict(),
                    "cloud_rejection_cost_on_slice": round(cloud_cost, 4), "device_cut_budget": round(budget, 4)}


def goals(row: dict, teacher_in_scope_accuracy: float) -> dict:
    """Which of the goals hold for one sweep row (see the constants at the top)."""
    a_acc = row["in_scope_accuracy"] >= teacher_in_scope_accuracy - 1e-9
    a_share = row["in_scope_sent_to_cloud"] <= MAX_CLOUD_SHARE + 1e-9
    b_recall = row["oos_recall"] >= MIN_OOS_RECALL - 1e-9
    b_cost = row["rejection_cost"] <= MAX_REJECTION_COST + 1e-9
    c = row["clear_on_device"] is not None and row["clear_on_device"] >= CLEAR_ON_DEVICE - 1e-9
    return {"a_accuracy_at_least_teacher": a_acc, "a_cloud_share_at_most": a_share, "a": a_acc and a_share,
            "b_oos_recall_at_least": b_recall, "b_rejection_cost_at_most": b_cost, "b": b_recall and b_cost,
            "c_clear_on_device": c}


def sweep(sel: dict, rec: dict, labels: list[str], gold: list, clear: np.ndarray, temperature: float, score: str,
          oos_loss: float, teacher_in_scope_accuracy: float) -> list[dict]:
    """One row per :data:`TARGETS`: policy chosen on the slice, replayed on the measured run's records.
    Coverage (slice and golden) is the in-scope share at or above the deferral threshold, before
    any rejection; ``in_scope_coverage`` is what the device answered in the end."""
    from edge.collab import calibrated_probs

    rows = []
    for target in TARGETS:
        policy, choice = choose_policy(target, sel, temperature, score, oos_loss)
        f = figures(*simulate(rec["logits"], labels, policy, rec), gold, clear)
        plain = figures(*simulate(rec["logits"], labels, replace_oos(policy), rec, cloud_rejects=False), gold, clear)
        in_scope = np.array([g is not None for g in gold])
        conf = calibrated_probs(rec["logits"][in_scope], temperature).max(1)
        covered = conf >= (policy.threshold if policy.threshold is not None else np.inf)
        row = {"target": target, "threshold": policy.threshold, "oos_threshold": policy.oos_threshold,
               "coverage_calibration": round(choice["deferral"]["coverage"], 4),
               "coverage_golden": round(float(covered.mean()), 4),
               "answered_accuracy_calibration": choice["deferral"]["answered_accuracy"],
               "device_cut_budget": choice["device_cut_budget"],
               "in_scope_coverage": f["in_scope_coverage"], "in_scope_accuracy": f["in_scope_accuracy"],
               "in_scope_accuracy_without_rejection": plain["in_scope_accuracy"],
               "rejection_cost": round(plain["in_scope_accuracy"] - f["in_scope_accuracy"], 4),
               "teacher_in_scope_accuracy": teacher_in_scope_accuracy,
               "in_scope_sent_to_cloud": f["in_scope_sent_to_cloud"], "sent_to_cloud": f["sent_to_cloud"],
               "in_scope_rejected": f["in_scope_rejected"], "oos_recall": f["oos_recall"],
               "clear_on_device": f["clear_on_device"]}
        row["goals"] = goals(row, teacher_in_scope_accuracy)
        # For comparison, not judged: the cloud rejects nothing it is sent; the device's cut gets
        # the whole budget (the cloud's own cut above may use it less well than the device's score).
        alone = dict(sel, cloud_rejects=np.zeros_like(sel["cloud_rejects"]))
        alt_policy, _ = choose_policy(target, alone, temperature, score, oos_loss)
        alt = figures(*simulate(rec["logits"], labels, alt_policy, rec, cloud_rejects=False), gold, clear)
        row["device_rejects_only"] = {"oos_threshold": alt_policy.oos_threshold, "oos_recall": alt["oos_recall"],
                                      "in_scope_accuracy": alt["in_scope_accuracy"],
                                      "rejection_cost": round(plain["in_scope_accuracy"] - alt["in_scope_accuracy"], 4)}
        rows.append(row)
    return rows


def replace_oos(policy):
    """The same policy with nothing rejected by the device."""
    from dataclasses import replace

    return replace(policy, oos_threshold=None)


# ---- one data set ---------------------------------------------------------------------------------

def bench_dataset(name: str, work: Path, args) -> dict:
    from dataclasses import replace

    from edge.collab import calibrated_probs, oos_score
    from edge.predictor import OnnxPredictor
    from edgeloop.config import CollabConfig
    from models.calibration import calibrate, expected_calibration_error
    from models.collab_night import edge_logits
    from models.deferral import choose_oos_threshold

    started, load_start = time.perf_counter(), os.getloadavg()[0]
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
    # The cloud's own calibration and cut, as the server applies them (log-probabilities as logits).
    t_cal = calibrate(np.log(np.clip(tp["sel"][:n_sel], 1e-12, None)), y_cal)
    t_conf_sel = calibrated_probs(np.log(np.clip(tp["sel"], 1e-12, None)), t_cal.temperature).max(1)
    t_ok_sel = tp["sel"][:n_sel].argmax(1) == y_cal
    t_ok_rep = tp["rep"][:n_rep].argmax(1) == y_gold
    t_oos = choose_oos_threshold(t_conf_sel[:n_sel], t_ok_sel, t_conf_sel[n_sel:], args.oos_loss)
    res: dict = {"dataset": parts["dataset"], "split_hash": parts["split_hash"], "n_labels": len(labels),
                 "n_train": len(parts["train"]["text"]), "n_calibration": n_sel, "n_golden": n_rep,
                 "n_oos_train": len(parts["oos_train"]), "n_oos_val": len(parts["oos_val"]),
                 "n_oos_test": len(parts["oos_test"]), "students": infos,
                 "teacher": {"golden_accuracy": round(float(t_ok_rep.mean()), 4), "calibration": t_cal.to_dict(),
                             "oos_threshold_msp": t_oos.threshold}}

    per_variant = {}
    for variant, info in infos.items():
        pred = OnnxPredictor(Path(info["folder"]) / "edge", threads=1)
        z = {"sel": edge_logits(pred, sel_texts), "rep": edge_logits(pred, rep_texts),
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
            "_z": z, "_ok_sel": s_ok_sel, "_pred": pred}
        _log(f"[{name}] {variant}: acc {s_ok_rep.mean():.4f}, T {rep_cal.temperature:.3f}, "
             f"ECE {rep_cal.ece_before:.4f} -> {rep_cal.ece_after:.4f}; OOS " +
             ", ".join(f"{k} recall {v['oos_recall']:.3f} loss {v['in_scope_accuracy_loss']:.4f} auroc {v['auroc']:.3f}"
                       for k, v in per_variant[variant]["oos"].items()))

    # The collaboration runs what the night ships: the student trained with outlier exposure and
    # the configured device score (collab.oos_score), fixed before measuring, not picked on results.
    variant, score = "kd+oe", CollabConfig().oos_score
    pv = per_variant[variant]
    temp = pv["calibration"]["temperature"]
    sel = {"z": pv["_z"]["sel"], "n": n_sel, "device_ok": pv["_ok_sel"], "cloud_ok": t_ok_sel,
           "cloud_rejects": t_conf_sel[:n_sel] < t_oos.threshold}
    policy, choice = choose_policy(args.target, sel, temp, score, args.oos_loss)
    # The device alone gets its own cut, at the same budget of its own accuracy (as the night chooses it).
    s_sel = oos_score(sel["z"], score, temp)
    own = choose_oos_threshold(s_sel[:n_sel], sel["device_ok"], s_sel[n_sel:], args.oos_loss)
    device_policy = replace(policy, oos_threshold=own.threshold)
    _log(f"[{name}] policy: {policy.to_dict()}; device alone: oos_threshold {own.threshold}")

    idx = np.arange(len(rep_texts))
    if args.latency_rows and len(idx) > args.latency_rows:  # a random subset in smoke runs
        idx = np.sort(np.random.default_rng(0).choice(len(idx), args.latency_rows, replace=False))
    texts = [rep_texts[i] for i in idx]
    gold = [golden["label"][i] if i < n_rep else None for i in idx]
    proc, url = start_cloud(teacher_onnx_dir, t_cal.temperature, t_oos.threshold)
    try:
        runs, rec = run_systems(texts, pv["_pred"], labels, policy, device_policy, url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    in_scope = np.array([g is not None for g in gold])
    clear = in_scope & (rec["confidence"] >= CLEAR_CONFIDENCE)
    systems = {k: figures(r["routes"], r["answers"], r["sent"], gold, clear, np.array(r["ms"])) for k, r in runs.items()}
    teacher_acc = systems["cloud"]["in_scope_accuracy"]
    replay = simulate(rec["logits"], labels, policy, rec)
    agree = float(np.mean([a == b for a, b in zip(zip(*replay[:2]), zip(runs["collab"]["routes"],
                                                                          runs["collab"]["answers"]))]))
    plain = figures(*simulate(rec["logits"], labels, replace_oos(policy), rec, cloud_rejects=False), gold, clear)
    measured = {k: systems["collab"][k] for k in ("in_scope_accuracy", "in_scope_sent_to_cloud", "sent_to_cloud",
                                                  "oos_recall", "clear_on_device", "in_scope_coverage",
                                                  "in_scope_rejected")}
    measured.update(target=args.target, threshold=policy.threshold,
                    in_scope_accuracy_without_rejection=plain["in_scope_accuracy"],
                    rejection_cost=round(plain["in_scope_accuracy"] - systems["collab"]["in_scope_accuracy"], 4))
    res.update({
        "systems": systems, "policy": policy.to_dict(), "choice_on_calibration": choice,
        "device_alone_policy": device_policy.to_dict(), "device_alone_oos_choice": own.to_dict(),
        "collab_student": variant, "collab_oos_score": score,
        "goals_measured": {**measured, "teacher_in_scope_accuracy": teacher_acc, **goals(measured, teacher_acc)},
        "replay_agreement": round(agree, 4), "clear_in_scope_messages": int(clear.sum()),
        "target_sweep": sweep(sel, rec, labels, gold, clear, temp, score, args.oos_loss, teacher_acc),
        "variants": {v: {k: x for k, x in d.items() if not k.startswith("_")} for v, d in per_variant.items()},
        "n_systems_rows": len(texts), "wall_s": round(time.perf_counter() - started, 1),
        "load_avg_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}})
    return res


# ---- report ---------------------------------------------------------------------------------------

def _f(v, nd: int = 4) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def readme_lines(results: dict) -> list[str]:
    """The generated part of benchmarks/README.md's collab section."""
    ds = results["datasets"]
    loads = [x for d in ds.values() for x in d["load_avg_1m"].values()]
    lines = [(f"Measured {results['measured_at']} on {os.cpu_count()} CPUs (shared; load average "
              f"{min(loads):.1f}-{max(loads):.1f}), teachers and students cached (`--work`), "
              f"{sum(d['wall_s'] for d in ds.values()) / 60:.0f} min in all; measured run at target "
              f"{results['settings']['target']}, one message at a time, golden + `oos_test`."), "",
             ("| data set | system | in-scope acc | acc (all; a rejected oos text is right) | answered on device "
              "| sent to cloud (in scope / all) | rejected in scope | OOS recall | p50 / p95 ms |"),
             "|---|---|---|---|---|---|---|---|---|"]
    names = {"device": "device alone", "cloud": "cloud alone (teacher)", "collab": "collaborative"}
    for d in ds.values():
        for k in SYSTEMS:
            s = d["systems"][k]
            lines.append(f"| {d['dataset']['name']} | {names[k]} | {_f(s['in_scope_accuracy'])} | {_f(s['accuracy'])} "
                         f"| {_f(s['coverage'])} | {_f(s['in_scope_sent_to_cloud'])} / {_f(s['sent_to_cloud'])} "
                         f"| {_f(s['in_scope_rejected'])} | {_f(s['oos_recall'])} "
                         f"| {_f(s['p50_ms'], 2)} / {_f(s['p95_ms'], 2)} |")
    lines += ["", ("Target sweep (thresholds chosen on the calibration slice, replayed on the measured run's "
                   "device logits and cloud replies; coverage: in-scope share at or above the threshold, "
                   "before rejection; goals: (a) in-scope accuracy ≥ the cloud alone's and ≤ "
                   f"{MAX_CLOUD_SHARE:.0%} of in-scope messages sent, (b) OOS recall ≥ {MIN_OOS_RECALL} at ≤ "
                   f"{MAX_REJECTION_COST * 100:.0f} point of in-scope accuracy lost to rejection, (c) ≥ "
                   f"{CLEAR_ON_DEVICE:.0%} of clear in-scope messages answered on the device):"), "",
              ("| data set | target | threshold | coverage slice / golden | in-scope acc (cloud alone) "
               "| without rejection | rejection cost | sent in scope / all | OOS recall | clear on device | a / b / c |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    yes = {True: "yes", False: "no"}
    for d in ds.values():
        for r in d["target_sweep"]:
            g = r["goals"]
            lines.append(f"| {d['dataset']['name']} | {r['target']} | {_f(r['threshold'])} | "
                         f"{_f(r['coverage_calibration'], 3)} / {_f(r['coverage_golden'], 3)} | "
                         f"{_f(r['in_scope_accuracy'])} ({_f(r['teacher_in_scope_accuracy'])}) | "
                         f"{_f(r['in_scope_accuracy_without_rejection'])} | {_f(r['rejection_cost'])} | "
                         f"{_f(r['in_scope_sent_to_cloud'], 3)} / {_f(r['sent_to_cloud'], 3)} | {_f(r['oos_recall'], 3)} | "
                         f"{_f(r['clear_on_device'], 3)} | {yes[g['a']]} / {yes[g['b']]} / {yes[g['c_clear_on_device']]} |")
    lines.append("")
    for d in ds.values():
        lines.append(f"- {d['dataset']['name']}, the same but only the device rejects (the cloud answers all it is "
                     "sent, the device's cut gets the whole budget; not judged), target: OOS recall / rejection "
                     "cost / in-scope acc: " + "; ".join(
                         f"{r['target']}: {_f(r['device_rejects_only']['oos_recall'], 3)} / "
                         f"{_f(r['device_rejects_only']['rejection_cost'])} / "
                         f"{_f(r['device_rejects_only']['in_scope_accuracy'])}" for r in d["target_sweep"]))
    for d in ds.values():
        t, v = d["teacher"], d["variants"]
        lines.append(f"- {d['dataset']['name']}: {d['n_golden']} golden + {d['n_oos_test']} `oos_test`, "
                     f"{d['n_calibration']} slice + {d['n_oos_val']} `oos_val`; teacher golden accuracy "
                     f"{t['golden_accuracy']:.4f} (T {t['calibration']['temperature']:.2f}); students kd / kd+oe "
                     f"{v['kd']['golden_accuracy']:.4f} / {v['kd+oe']['golden_accuracy']:.4f} (golden ECE kd+oe "
                     f"{v['kd+oe']['golden_ece_before']:.3f} → {v['kd+oe']['golden_ece_after']:.3f}); replayed "
                     f"= measured on {d['replay_agreement']:.2%} of messages; {d['clear_in_scope_messages']} clear "
                     f"in-scope messages; the device alone's OOS scores, cut at ≤ {results['settings']['oos_loss']} "
                     "in-scope accuracy loss on the slice, OOS recall / loss on golden + `oos_test` (kd → kd+oe): "
                     + "; ".join(
                         f"{s} {v['kd']['oos'][s]['oos_recall']:.3f} / {v['kd']['oos'][s]['in_scope_accuracy_loss']:.3f}"
                         f" → {v['kd+oe']['oos'][s]['oos_recall']:.3f} / {v['kd+oe']['oos'][s]['in_scope_accuracy_loss']:.3f}"
                         for s in OOS_SCORES))
    return lines


def update_readme(lines: list[str]) -> None:
    """Replace the generated block inside benchmarks/README.md's collab section (or append one)."""
    readme = ROOT / "benchmarks" / "README.md"
    text = readme.read_text()
    start, end = "<!-- collab:results:start -->", "<!-- collab:results:end -->"
    block = "\n".join([start, *lines, end])
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = (text.rstrip() + "\n\n<!-- collab:start -->\n## End and cloud together (issue 11)\n\n" + block
                + "\n<!-- collab:end -->\n")
    readme.write_text(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=["bitext", "clinc150", "all"], default="all")
    ap.add_argument("--work", default=str(ROOT / "var" / "bench-collab"), help="cache of teachers and students")
    ap.add_argument("--quick", action="store_true", help="small subsets (smoke run)")
    ap.add_argument("--target", type=float, default=0.98, help="collab.target_accuracy of the measured run")
    ap.add_argument("--oos-loss", type=float, default=0.01, help="in-scope accuracy all rejection may cost")
    ap.add_argument("--oe-share", type=float, default=0.15, help="share of outlier rows in the transfer set")
    ap.add_argument("--n-cal", type=int, default=1500, help="calibration slice rows (from the unused stream)")
    ap.add_argument("--latency-rows", type=int, default=0, help="run the systems on this many rows (0 = all)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the README's generated collab block")
    args = ap.parse_args(argv)
    if args.target not in TARGETS:
        ap.error(f"--target must be one of the sweep's targets {TARGETS}")
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "edge.cloud"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    names = ["bitext", "clinc150"] if args.dataset == "all" else [args.dataset]
    out_path = RESULTS / ("collab-quick.json" if args.quick else "collab.json")
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results.setdefault("datasets", {})
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("work", "no_readme")}
    for name in names:
        results["datasets"][name] = bench_dataset(name, Path(args.work), args)
        results["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1, default=float))
        _log(f"[{name}] systems: " + json.dumps(results["datasets"][name]["systems"]))
        _log(f"[{name}] goals at {args.target}: " + json.dumps(results["datasets"][name]["goals_measured"]))
    _log(f"wrote {out_path}")
    if not (args.quick or args.no_readme or args.latency_rows) and set(results["datasets"]) >= {"bitext", "clinc150"}:
        update_readme(readme_lines(results))
        _log("updated benchmarks/README.md (collab section, generated block)")


if __name__ == "__main__":
    main()
