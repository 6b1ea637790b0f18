"""Personalization benchmark: simulated devices, each with its own patch, against the global student.

Usage: ``python -m benchmarks.bench_personal [--dataset bitext|clinc150] [--home DIR] [--devices 24]``

The global student is a real trained one: the newest night candidate under ``--home``
(``work/<night>/candidate/{edge,student}``); with none there, ``edgeloop bootstrap-teacher`` and
``edgeloop night`` run first in that home (a few minutes on 2 cores).

Devices draw their messages from rows the student never trained on (the data set minus the
split's seed and golden parts and the stream batches its nights ingested); each device has
- a skewed intent mix, Dirichlet(``--alpha``) over the intents;
- personal phrasings: 0-4 synonyms of its own for common words ("order" -> "stuff"), a greeting
  or sign-off style, and, on some devices, a shop jargon phrase that stands for one of its top
  intents ("wheres my stuff" + a few of the message's words);
- ``--feedback`` labelled feedback events (the user accepts or corrects each answer) and
  ``--heldout`` other messages on which global and personalized accuracy are measured.
Texts are redacted as on a device. Each device runs edge/personal.py as a device would: record
the events, fit, gate, serve. Learning back: the kept patches are uploaded under the
``dp_delta`` policy at several epsilons (and once clipped without noise, as a reference that
no device policy allows), averaged by models/federated.py and folded into the ONNX student; its
golden accuracy is compared with the student's.

Writes ``benchmarks/results/personalization[-clinc150].json``; the README says what each figure
means and defines the long-tail devices.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from benchmarks.run import CLINC_MAX_ROWS, DATASETS, cli  # noqa: E402

# Personal synonyms: common words of customer messages (both data sets) and what one shop's
# customers say instead.
SYNONYMS = {
    "order": ["stuff", "parcel", "purchase", "goods", "thingy"], "refund": ["money back", "payback", "cash back"],
    "cancel": ["call off", "scrap", "kill"], "account": ["profile", "membership", "login"],
    "delivery": ["drop-off", "courier run", "shipment"], "password": ["passcode", "pin", "login code"],
    "invoice": ["bill", "receipt"], "payment": ["charge", "transaction"], "address": ["place", "location"],
    "shipping": ["postage", "courier"], "card": ["plastic", "bank card"], "money": ["cash", "dosh"],
    "help": ["assist", "sort out"], "want": ["wanna", "need"], "check": ["look up", "see"],
    "flight": ["plane ticket", "trip"], "bank": ["lender"], "balance": ["funds"], "book": ["reserve"],
    "change": ["swap", "switch"], "problem": ["issue", "trouble"], "track": ["follow", "trace"],
    "email": ["mail", "inbox"], "subscription": ["plan", "membership"], "number": ["no."],
}
STYLES = [("", ""), ("yo ", ""), ("hi there, ", " thanks"), ("", " pls"), ("hey ", " asap"), ("", " cheers mate")]
JARGON = ["wheres my stuff", "any news on the thing", "sort out the usual", "the thing from last week",
          "status pls", "whats up with it", "need the usual fix", "same as before", "do the thing",
          "that problem again"]


def find_student(home: Path) -> tuple[Path, Path] | None:
    """(edge folder, float student folder) of the newest night candidate under ``home``."""
    found = sorted(home.glob("work/*/candidate/edge/model.onnx"))
    if not found:
        return None
    edge = found[-1].parent
    return edge, edge.parent / "student"


def ensure_student(home: Path, overrides: dict) -> tuple[Path, Path]:
    got = find_student(home)
    if got is None:
        print(f"no trained student in {home}: bootstrap-teacher + one night (a few minutes)", flush=True)
        cli(home, ["bootstrap-teacher", "--if-missing"], overrides)
        cli(home, ["night", "--night", "2026-11-01"], overrides)
        got = find_student(home)
    if got is None:
        raise SystemExit(f"no night candidate under {home}/work after a night")
    return got


def device_pool(settings, home: Path):
    """(rows no night trained on, golden rows, labels)."""
    from data_contracts.datasets import load_dataset, split_dataset

    cfg = settings.dataset
    split = split_dataset(load_dataset(cfg), cfg)
    nights = max(1, len(list(home.glob("work/20*"))))
    used = set(split.seed["message_id"]) | set(split.golden["message_id"])
    used |= set(split.stream.iloc[:nights * cfg.stream_batch_size]["message_id"])
    full = load_dataset(cfg.model_copy(update={"max_rows": None}))
    pool = full[~full["message_id"].isin(used) & full["label"].isin(split.labels)].reset_index(drop=True)
    return pool, split.golden, split.labels


def make_device(i: int, labels: list[str], alpha: float, rng: np.random.Generator) -> dict:
    mix = rng.dirichlet(np.full(len(labels), alpha))
    words = rng.choice(sorted(SYNONYMS), size=int(rng.integers(0, 5)), replace=False)
    synonyms = {w: str(rng.choice(SYNONYMS[w])) for w in words}
    top = np.argsort(-mix)[:2]
    jargon = {}
    if rng.random() < 0.6:  # a shop whose customers have their own word for a top intent
        phrases = rng.choice(JARGON, size=len(top), replace=False)
        jargon = {labels[t]: str(p) for t, p in zip(top, phrases) if rng.random() < 0.8 or t == top[0]}
    return {"device_id": f"dev-sim{i:04d}", "mix": mix, "synonyms": synonyms,
            "style": STYLES[int(rng.integers(len(STYLES)))], "jargon": jargon,
            "jargon_share": float(rng.uniform(0.3, 0.6))}


def personal_text(text: str, label: str, dev: dict, rng: np.random.Generator) -> str:
    if label in dev["jargon"] and rng.random() < dev["jargon_share"]:
        words = text.split()
        k = int(rng.integers(0, 4))
        text = dev["jargon"][label] + (" " + " ".join(words[-k:]) if k else "")
    for word, alt in dev["synonyms"].items():
        text = re.sub(rf"\b{word}\b", alt, text, flags=re.IGNORECASE)
    pre, post = dev["style"]
    return f"{pre}{text}{post}"


def device_messages(pool, labels, dev, n: int, rng) -> tuple[list[str], list[str]]:
    """``n`` distinct pool rows drawn by the device's intent mix, in its phrasing, redacted."""
    from edge.redact import redact

    by_label = {lab: np.flatnonzero(pool["label"].to_numpy() == lab) for lab in labels}
    cap = np.array([len(by_label[lab]) for lab in labels])
    if n > cap.sum():
        raise SystemExit(f"a device needs {n} messages, the pool has {cap.sum()}: lower --feedback/--heldout")
    counts = np.minimum(rng.multinomial(n, dev["mix"]), cap)
    while counts.sum() < n:  # an intent ran out of rows: its overflow goes to the next by the mix
        room = (cap - counts) * (dev["mix"] + 1e-9)
        counts += np.minimum(rng.multinomial(n - counts.sum(), room / room.sum()), cap - counts)
    rows = []
    for lab, k in zip(labels, counts):
        rows.extend(rng.choice(by_label[lab], size=int(k), replace=False).tolist())
    rng.shuffle(rows)
    texts = [redact(personal_text(pool.at[r, "text"], pool.at[r, "label"], dev, rng))[0] for r in rows]
    return texts, [pool.at[r, "label"] for r in rows]


def run_device(dev, predictor, fingerprint, cfg, texts, y, n_feedback, home: Path) -> dict:
    from edge.feedback import make_event, message_id
    from edge.personal import Personalizer

    fb_t, fb_y, ho_t, ho_y = texts[:n_feedback], y[:n_feedback], texts[n_feedback:], y[n_feedback:]
    pers = Personalizer(home / dev["device_id"], cfg)
    corrections = 0
    for text, (pred, _), label in zip(fb_t, predictor.predict(fb_t), fb_y):
        ok = pred == label
        corrections += not ok
        pers.record(make_event(device_id=dev["device_id"], model_version="global", message_id=message_id(text),
                               text=text, predicted=pred, accepted=ok, corrected_label=None if ok else label))
    start = time.perf_counter()
    status = pers.fit(predictor, model_version="global", fingerprint=fingerprint)
    personalize_ms = (time.perf_counter() - start) * 1e3
    answers = pers.predict(predictor, ho_t)
    glob = float(np.mean([a["base_label"] == t for a, t in zip(answers, ho_y)]))
    pers_acc = float(np.mean([a["label"] == t for a, t in zip(answers, ho_y)]))
    return {"device_id": dev["device_id"], "feedback": len(fb_t), "corrections": corrections,
            "correction_rate": round(corrections / max(1, len(fb_t)), 4), "heldout": len(ho_t),
            "synonyms": dev["synonyms"], "jargon": dev["jargon"], "style": list(dev["style"]),
            "top_intents": [predictor.labels[i] for i in np.argsort(-dev["mix"])[:3]],
            "patch_kept": bool(status["active"]), "gate": status.get("gate"),
            "global_acc": round(glob, 4), "personal_acc": round(pers_acc, 4),
            "gain_pts": round(100 * (pers_acc - glob), 2),
            "patch_bytes": status.get("bytes", 0), "fit_ms": status.get("fit_ms"),
            "personalize_ms": round(personalize_ms, 1), "_patch": pers.patch, "_texts": fb_t}


def reference_payload(patch) -> dict:
    """The patch delta in the upload format, clipped by the server and not noised: a reference
    for what averaging could do, allowed by no device policy."""
    dense = patch.dense()
    return {"format": "edgeloop-patch-delta/1", "mechanism": "gaussian-analytic", "features": patch.meta["features"],
            "base_fingerprint": patch.meta["base_fingerprint"], "labels_sha256": patch.meta["labels_sha256"],
            "clip_norm": 0.0, "epsilon": 0.0, "delta": 0.0, "sigma": 0.0, "shape": list(dense.shape),
            "values": dense.ravel().astype(float).tolist()}


def learning_back(rows, edge_dir: Path, predictor, golden_t, golden_y, cfg, epsilons, rng, work: Path) -> dict:
    """Aggregate the kept patches' uploads and fold them into the student; golden accuracy each way."""
    from edge.patch import labels_sha256
    from edge.patch_upload import build_upload, gaussian_sigma
    from edge.personal import PersonalConfig
    from edge.predictor import OnnxPredictor
    from models.federated import aggregate_uploads, apply_delta_onnx

    kept = [r for r in rows if r["_patch"] is not None]
    base_acc = float(np.mean([lab == t for (lab, _), t in zip(predictor.predict(golden_t), golden_y)]))
    out = {"golden_texts": len(golden_t), "golden_acc_global": round(base_acc, 4), "uploading_devices": len(kept),
           "clip_norm": cfg.dp_clip_norm, "delta_norms_median": round(float(np.median(
               [np.linalg.norm(r["_patch"].dense()) for r in kept])), 3) if kept else None, "variants": []}
    if not kept:
        return out
    fp, lh = kept[0]["_patch"].meta["base_fingerprint"], labels_sha256(predictor.labels)
    text_bytes = 0
    variants = [("clipped, no noise (reference)", None)] + [(f"dp_delta epsilon={e:g}", e) for e in epsilons]
    for name, eps in variants:
        if eps is None:
            payloads, sigma = [reference_payload(r["_patch"]) for r in kept], 0.0
        else:
            dp = PersonalConfig(**{**cfg.__dict__, "upload": "dp_delta", "dp_epsilon": eps,
                                   "dp_epsilon_total": max(eps, cfg.dp_epsilon_total)})
            payloads = [build_upload(r["_patch"], dp, rng=rng, texts=r["_texts"])[0] for r in kept]
            sigma = gaussian_sigma(eps, dp.dp_delta, 2 * dp.dp_clip_norm)
            text_bytes += sum(sum(len(t.encode()) for t in r["_texts"] if t in json.dumps(p))
                              for r, p in zip(kept, payloads))
        agg = aggregate_uploads(payloads, fingerprint=fp, labels_sha256=lh, clip_norm=cfg.dp_clip_norm,
                                weight_cap=1.0, noise_sigma=sigma)
        size = int(np.prod(payloads[0]["shape"]))
        # Devices for the noise in the mean to fall to the clip norm: (sigma sqrt(size) / clip)^2.
        needed = int(np.ceil((sigma * np.sqrt(size) / cfg.dp_clip_norm) ** 2)) if sigma else None
        folder = work / f"learned-{len(out['variants'])}"
        shutil.copytree(edge_dir, folder, dirs_exist_ok=True)
        apply_delta_onnx(edge_dir / "model.onnx", folder / "model.onnx", agg.delta, agg.features)
        learned = OnnxPredictor(folder)
        acc = float(np.mean([lab == t for (lab, _), t in zip(learned.predict(golden_t), golden_y)]))
        fleet = float(np.mean([np.mean([lab == t for (lab, _), t in zip(learned.predict(r["_ho"][0]), r["_ho"][1])])
                               for r in rows]))
        out["variants"].append({"variant": name, **agg.to_dict(), "sigma": round(sigma, 4),
                                "devices_for_noise_at_clip": needed, "golden_acc": round(acc, 4),
                                "golden_gain_pts": round(100 * (acc - base_acc), 2),
                                "fleet_heldout_acc": round(fleet, 4),
                                "kept_by_gate": acc >= base_acc})
    out["fleet_heldout_acc_global"] = round(float(np.mean([r["global_acc"] for r in rows])), 4)
    out["text_bytes_in_uploads"] = text_bytes
    return out


def bench(args) -> dict:
    from edge.patch import base_fingerprint
    from edge.personal import PersonalConfig
    from edge.predictor import OnnxPredictor
    from edge.redact import redact
    from edgeloop.config import load_settings
    from models.federated import add_pooled_output

    overrides = dict(DATASETS[args.dataset])
    if args.dataset == "clinc150":
        overrides["max_rows"] = CLINC_MAX_ROWS
    home = Path(args.home).resolve()
    edge_dir, _ = ensure_student(home, overrides)
    settings = load_settings(overrides={"home": str(home), "dataset": overrides})
    pool, golden, labels = device_pool(settings, home)
    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-personal-"))
    kinds = {"logits": edge_dir}
    if args.features in ("pooled", "both"):  # the graph a night exporting its pooled output would ship
        pooled = work / "pooled-edge"
        shutil.copytree(edge_dir, pooled)
        add_pooled_output(edge_dir / "model.onnx", pooled / "model.onnx")
        kinds["pooled"] = pooled
    if args.features == "pooled":
        kinds.pop("logits")
    devices = [make_device(i, labels, args.alpha, rng) for i in range(args.devices)]
    messages = [device_messages(pool, labels, d, args.feedback + args.heldout, rng) for d in devices]
    golden_t = [redact(t)[0] for t in golden["text"]]
    golden_y = golden["label"].tolist()
    tuned = {k: v for k, v in (("dp_clip_norm", args.clip_norm), ("l2", args.l2), ("gate_max_p", args.gate_max_p))
             if v is not None}
    cfg = PersonalConfig(rank=args.rank, **tuned)
    result = {"dataset": args.dataset, "student": str(edge_dir), "pool_rows": len(pool), "labels": len(labels),
              "devices_n": args.devices, "feedback_per_device": args.feedback, "heldout_per_device": args.heldout,
              "alpha": args.alpha, "seed": args.seed, "config": {k: v for k, v in cfg.__dict__.items()},
              "by_features": {}}
    for kind, folder in kinds.items():
        predictor = OnnxPredictor(folder)
        fingerprint = base_fingerprint(folder)
        rows = []
        for dev, (texts, y) in zip(devices, messages):
            row = run_device(dev, predictor, fingerprint, cfg, texts, y, args.feedback, work / kind)
            row["_ho"] = (texts[args.feedback:], y[args.feedback:])
            rows.append(row)
        lb = learning_back(rows, folder, predictor, golden_t, golden_y, cfg, args.epsilons, rng, work / kind) \
            if args.learning_back else {"variants": [], "skipped": True}
        result["by_features"][kind] = summarize(rows) | {"learning_back": lb}
    shutil.rmtree(work, ignore_errors=True)
    head = result["by_features"]["logits" if "logits" in kinds else "pooled"]
    result.update({k: head[k] for k in ("devices", "share_not_worse", "mean_gain_longtail_pts", "worst_drop_pts",
                                        "patch_bytes_max", "text_bytes_uploaded")})
    result["headline_features"] = "logits" if "logits" in kinds else "pooled"
    return result


def summarize(rows: list[dict]) -> dict:
    gains = np.array([r["gain_pts"] for r in rows])
    rates = np.array([r["correction_rate"] for r in rows])
    # Long tail: the quarter of devices with the highest correction rate on their own feedback
    # (what a device can see about itself), not on the held-out messages the gains are measured on.
    cut = np.quantile(rates, 0.75)
    tail = rates >= cut
    for r, t in zip(rows, tail):
        r["long_tail"] = bool(t)
    fit = [r["fit_ms"] for r in rows if r["fit_ms"] is not None]
    return {
        "devices": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "share_not_worse": round(float(np.mean(gains >= 0)), 4),
        "mean_gain_pts": round(float(gains.mean()), 2),
        "mean_gain_longtail_pts": round(float(gains[tail].mean()), 2),
        "longtail_devices": int(tail.sum()), "longtail_min_correction_rate": round(float(cut), 4),
        "worst_drop_pts": round(float(max(0.0, -gains.min())), 2),
        "patches_kept": int(sum(r["patch_kept"] for r in rows)),
        "patch_bytes_max": int(max(r["patch_bytes"] for r in rows)),
        "fit_ms_median": round(float(np.median(fit)), 1) if fit else None,
        "fit_ms_max": round(float(max(fit)), 1) if fit else None,
        "personalize_ms_max": round(float(max(r["personalize_ms"] for r in rows)), 1),
        "mean_global_acc": round(float(np.mean([r["global_acc"] for r in rows])), 4),
        "mean_personal_acc": round(float(np.mean([r["personal_acc"] for r in rows])), 4),
        # Personalization itself uploads nothing; the learning-back uploads are checked for text.
        "text_bytes_uploaded": 0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="bitext")
    ap.add_argument("--home", default=None, help="EDGELOOP_HOME holding a trained student (default: var/bench-personal[-clinc150])")
    ap.add_argument("--devices", type=int, default=24)
    ap.add_argument("--feedback", type=int, default=150, help="labelled feedback events per device")
    ap.add_argument("--heldout", type=int, default=200, help="held-out messages per device")
    ap.add_argument("--alpha", type=float, default=0.3, help="Dirichlet concentration of intent mixes")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--clip-norm", type=float, default=None, help="dp_clip_norm (default: the device default)")
    ap.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 8.0])
    ap.add_argument("--l2", type=float, default=None, help="patch L2 (default: the device default)")
    ap.add_argument("--gate-max-p", type=float, default=None, help="gate_max_p (default: the device default)")
    ap.add_argument("--no-learning-back", dest="learning_back", action="store_false")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/personalization[-DATASET].json)")
    ap.add_argument("--features", choices=["logits", "pooled", "both"], default="both")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    suffix = "" if args.dataset == "bitext" else f"-{args.dataset}"
    args.home = args.home or str(ROOT / "var" / f"bench-personal{suffix}")
    start = time.perf_counter()
    result = bench(args)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for kind, block in result["by_features"].items():
        for lb in (block["learning_back"],):
            block["text_bytes_uploaded"] = lb.get("text_bytes_in_uploads", 0)
    result["text_bytes_uploaded"] = max(b["text_bytes_uploaded"] for b in result["by_features"].values())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"personalization{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"wrote {out} in {result['wall_s']} s")
    return 0


GOALS = (("share_not_worse", ">=", 0.9), ("mean_gain_longtail_pts", ">=", 2.0), ("worst_drop_pts", "<=", 1.0),
         ("text_bytes_uploaded", "==", 0))


def report(result: dict) -> None:
    ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}
    for kind, b in result["by_features"].items():
        print(f"[{result['dataset']} / {kind}] devices {len(b['devices'])}, kept {b['patches_kept']}, "
              f"global {b['mean_global_acc']:.4f} -> personal {b['mean_personal_acc']:.4f}, "
              f"gain {b['mean_gain_pts']:+.2f} pts (long tail {b['mean_gain_longtail_pts']:+.2f}, "
              f"{b['longtail_devices']} devices), worst drop {b['worst_drop_pts']:.2f}, "
              f"patch <= {b['patch_bytes_max']} B, fit median {b['fit_ms_median']} ms")
        for goal, op, thr in GOALS:
            print(f"    {goal} {b[goal]} {op} {thr}: {'met' if ops[op](b[goal], thr) else 'NOT met'}")
        lb = b["learning_back"]
        for v in lb.get("variants", []):
            print(f"    learning back [{v['variant']}]: golden {lb['golden_acc_global']:.4f} -> {v['golden_acc']:.4f} "
                  f"({v['golden_gain_pts']:+.2f} pts), fleet held-out {lb['fleet_heldout_acc_global']:.4f} -> "
                  f"{v['fleet_heldout_acc']:.4f}, {v['devices']} devices, kept by gate: {v['kept_by_gate']}")


if __name__ == "__main__":
    raise SystemExit(main())
