"""The night's model steps as plain functions: relabel, train, evaluate, decide.

Prefect tasks in ``tasks/`` wrap these; they take settings and paths and return small dicts, so
they run and test without Prefect.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from data_contracts.datasets import Split, message_id
from data_contracts.lake import Lake
from edgeloop.config import Settings
from models import registry
from models.evaluate import EvalResult, evaluate_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherRef:
    """The registered teacher a night uses: its version (the label cache key) and local folder."""

    version: str
    folder: str

    @property
    def cache_key(self) -> str:
        return f"v{self.version}"


def resolve_teacher(settings: Settings) -> TeacherRef:
    """Download ``teacher@production`` (once per version) and return where it is."""
    name, alias = settings.teacher.registered_name, settings.teacher.alias
    version = registry.alias_version(settings.tracking_uri(), name, alias)
    if version is None:
        raise LookupError(f"no registered model '{name}@{alias}' in {settings.tracking_uri()}: "
                          f"run `edgeloop bootstrap-teacher` first")
    dst = settings.home_path() / "cache" / "teacher" / version
    if not (dst / "model" / "config.json").exists():
        tmp = dst.with_name(f"{version}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        registry.download_version(settings.tracking_uri(), name, version, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    return TeacherRef(version, str(dst / "model"))


@lru_cache(maxsize=2)
def _local_teacher(folder: str, max_length: int, batch_size: int):
    from models.teacher import LocalTeacher

    return LocalTeacher(folder, max_length=max_length, batch_size=batch_size)


def load_teacher(settings: Settings, ref: TeacherRef):
    """The teacher model for ``ref`` (cached per process)."""
    if settings.teacher.kind == "endpoint":
        from models.teacher import EndpointTeacher

        labels = json.loads((Path(ref.folder) / "config.json").read_text())["id2label"]
        return EndpointTeacher(settings.teacher.endpoint_url, settings.teacher.endpoint_model,
                               [labels[str(i)] for i in range(len(labels))])
    return _local_teacher(ref.folder, settings.teacher.max_length, settings.teacher.relabel_batch_size)


def relabel_teacher(settings: Settings, ref: TeacherRef):
    """The teacher that labels the lake: ONNX Runtime fp32 by default (exported once per version)."""
    if settings.teacher.kind == "endpoint" or settings.teacher.relabel_runtime == "torch":
        return load_teacher(settings, ref)
    return _onnx_teacher(ref.folder, settings.teacher.max_length)


_EXPORT_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def _onnx_teacher(folder: str, max_length: int):
    from edge.predictor import MODEL_FILE, OnnxPredictor
    from models.quantize import write_edge_folder

    onnx_dir = Path(folder).parent / f"onnx-fp32-{max_length}"
    with _EXPORT_LOCK:  # shards on threads share one export; on processes the rename decides
        if not (onnx_dir / MODEL_FILE).exists():
            teacher = _local_teacher(folder, max_length, 64)
            tmp = onnx_dir.with_name(f"{onnx_dir.name}.{uuid.uuid4().hex}.partial")
            write_edge_folder(teacher.model, teacher.tokenizer, tmp, max_length, backend="onnx-fp32")
            try:
                tmp.rename(onnx_dir)
            except OSError:  # another process finished the same export first
                shutil.rmtree(tmp, ignore_errors=True)
    return OnnxPredictor(onnx_dir, threads=1)


def pending_shards(lake: Lake, ref: TeacherRef, n_shards: int) -> list[list[str]]:
    """Ids of messages this teacher version has not labeled, split into ``n_shards`` lists."""
    ids = lake.unlabeled(ref.cache_key)["message_id"].tolist()
    return [s for s in (ids[i::n_shards] for i in range(n_shards)) if s]


def label_shard(settings: Settings, lake: Lake, ref: TeacherRef, ids: list[str]) -> dict:
    """Have the teacher label the messages ``ids``; store the rows the label contract accepts.

    Rows the row-level contract rejects (probabilities not summing to 1, ...) go to the quarantine,
    never to training. Returns the contract's accounting.
    """
    from data_contracts.contracts import validate_teacher_labels

    msgs = lake.messages().set_index("message_id").loc[ids]
    teacher = relabel_teacher(settings, ref)
    probs = teacher.predict_proba(msgs["text"].tolist())
    labels = np.array(teacher.labels)[probs.argmax(1)]
    out = pd.DataFrame({"message_id": ids, "probs": list(probs.astype(np.float32)),
                        "label": labels, "confidence": probs.max(1).astype(np.float32)})
    # Row checks only here; the batch checks (drift, mean confidence) run once on the whole night.
    result = validate_teacher_labels(out, teacher.labels, None, min_mean_confidence=0.0)
    lake.append_labels(ref.cache_key, result.accepted)
    lake.quarantine(result.quarantined)
    return result.summary()


def transfer_set(lake: Lake, ref: TeacherRef, label_names: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, teacher probabilities, gold ids or -1) for every labeled message in the lake."""
    msgs = lake.training_messages()
    soft = lake.labels(ref.cache_key)
    df = msgs.merge(soft[["message_id", "probs"]], on="message_id", how="inner")
    index = {n: i for i, n in enumerate(label_names)}
    gold = df["gold_label"].map(lambda v: index.get(v, -1) if isinstance(v, str) else -1).to_numpy()
    return df["text"].tolist(), np.stack(df["probs"].to_numpy()).astype(np.float32), gold.astype(np.int64)


def champion_folder(settings: Settings) -> tuple[str | None, Path | None]:
    """(version, local folder) of the current student champion, downloaded once."""
    name = settings.mlflow.student_model_name
    version = registry.alias_version(settings.tracking_uri(), name, registry.CHAMPION)
    if version is None:
        return None, None
    dst = settings.home_path() / "cache" / "student" / version
    if not (dst / "model" / "edge" / "model.onnx").exists():
        shutil.rmtree(dst, ignore_errors=True)
        registry.download_version(settings.tracking_uri(), name, version, dst)
    return version, dst / "model"


def train_candidate(settings: Settings, lake: Lake, ref: TeacherRef, label_names: list[str],
                    out_dir: Path, on_epoch=None) -> dict:
    """Distill a student from the lake's teacher labels; write ``out_dir/{student,edge}``."""
    from models.distill import distill, prepare_transfer, recipe
    from models.quantize import write_edge_folder
    from models.student import build_student, compatible, load_student, n_params, save_student
    from models.training import set_threads

    cfg = settings.student
    set_threads(settings.torch_threads)
    texts, probs, gold = transfer_set(lake, ref, label_names)
    if not texts:
        raise ValueError("the lake holds no teacher-labeled messages: nothing to train on")
    champ_version, champ = champion_folder(settings)
    warm = bool(cfg.warm_start and champ and compatible(champ / "student", label_names, cfg))
    if warm:
        model, tokenizer = load_student(champ / "student")
    else:
        model, tokenizer = build_student(ref.folder, texts, label_names, cfg)
    epochs = cfg.warm_start_epochs if warm else cfg.epochs
    n_source = len(texts)  # + teacher-labeled augmented copies and the teacher's sentence vectors
    texts, probs, gold, hidden = prepare_transfer(load_teacher(settings, ref), texts, probs, gold, cfg)
    history = distill(model, tokenizer, texts, probs, gold, cfg, epochs=epochs, on_epoch=on_epoch,
                      teacher_hidden=hidden)
    shutil.rmtree(out_dir, ignore_errors=True)
    save_student(model, tokenizer, out_dir / "student")
    write_edge_folder(model, tokenizer, out_dir / "edge", cfg.max_length, backend=cfg.quantize)
    return {"folder": str(out_dir), "warm_start_from": champ_version if warm else None,
            "epochs": epochs, "n_train": n_source, "n_augmented": len(texts) - n_source,
            "hidden_distillation": hidden is not None,
            "n_gold": int((gold >= 0).sum()), **recipe(cfg),
            "n_params": n_params(model), "vocab_size": int(model.config.vocab_size),
            "final_loss": history[-1]["loss"], "history": history}


def golden_texts(split: Split) -> tuple[list[str], list[str]]:
    """Golden texts as a device would see them (redacted), with their gold labels."""
    from edge.redact import redact

    return [redact(t)[0] for t in split.golden["text"]], split.golden["label"].tolist()


def teacher_stream_accuracy(split: Split, lake: Lake, ref: TeacherRef) -> float | None:
    """How often the teacher's labels match the stream's hidden gold labels (None if none yet)."""
    from edge.redact import redact

    hidden = {message_id(redact(t)[0]): y for t, y in zip(split.stream["text"], split.stream["label"])}
    soft = lake.labels(ref.cache_key)
    if soft.empty:
        return None
    known = soft[soft["message_id"].isin(hidden)]
    return float((known["label"] == known["message_id"].map(hidden)).mean()) if len(known) else None


def evaluate_all(settings: Settings, split: Split, ref: TeacherRef, candidate_dir: Path,
                 latency_runs: int = 200) -> dict[str, EvalResult]:
    """Teacher (torch fp32), candidate (as shipped) and champion (as shipped) on golden."""
    from edge.predictor import OnnxPredictor

    texts, y = golden_texts(split)
    teacher = load_teacher(settings, ref)
    t_res = evaluate_model(teacher.predict_proba, teacher.labels, texts, y, folder=ref.folder,
                           latency_runs=max(20, latency_runs // 4))
    teacher_pred = [teacher.labels[i] for i in teacher.predict_proba(texts).argmax(1)]
    results = {"teacher": t_res}
    cand = OnnxPredictor(candidate_dir / "edge")
    results["candidate"] = evaluate_model(cand.predict_proba, cand.labels, texts, y, teacher_pred,
                                          folder=candidate_dir / "edge", latency_runs=latency_runs)
    _, champ = champion_folder(settings)
    if champ is not None:
        cp = OnnxPredictor(champ / "edge")
        results["champion"] = evaluate_model(cp.predict_proba, cp.labels, texts, y, teacher_pred,
                                             folder=champ / "edge", latency_runs=latency_runs)
    return results


def bootstrap_teacher(settings: Settings, split: Split, out_dir: Path, on_epoch=None) -> tuple[dict, EvalResult]:
    """Fine-tune the base model on the seed's gold labels into ``out_dir/model``; evaluate on golden."""
    from edge.redact import redact
    from models.teacher import LocalTeacher, fine_tune_teacher
    from models.training import set_threads

    set_threads(settings.torch_threads)
    shutil.rmtree(out_dir, ignore_errors=True)
    texts = [redact(t)[0] for t in split.seed["text"]]  # the teacher sees what the lake stores
    history = fine_tune_teacher(texts, split.seed["label"].tolist(), split.labels, settings.teacher,
                                out_dir / "model", seed=settings.dataset.split_seed, on_epoch=on_epoch)
    teacher = LocalTeacher(out_dir / "model", settings.teacher.max_length, settings.teacher.relabel_batch_size)
    g_texts, g_y = golden_texts(split)
    result = evaluate_model(teacher.predict_proba, teacher.labels, g_texts, g_y, folder=out_dir / "model",
                            latency_runs=50)
    return {"history": history, "n_train": len(texts)}, result


def decide(settings: Settings, split: Split, results: dict[str, EvalResult], candidate_dir: Path,
           contracts_ok: bool):
    """Run the gate on the evaluation, including the fresh-process bundle check."""
    from edge.predictor import OnnxPredictor
    from models.gate import run_gate, smoke_in_fresh_process

    texts, _ = golden_texts(split)
    smoke = texts[:: max(1, len(texts) // 30)][:30]
    expected = [label for label, _ in OnnxPredictor(candidate_dir / "edge").predict(smoke)]
    mechanical = smoke_in_fresh_process(candidate_dir / "edge", smoke, expected)
    return run_gate(results["candidate"], results["teacher"], results.get("champion"), settings.gate,
                    contracts_ok=contracts_ok, mechanical=mechanical)


def register_candidate(settings: Settings, run_id: str, candidate_dir: Path, decision, results: dict,
                       meta: dict) -> str:
    """Log the candidate's folders to ``run_id``, register it, tag it, alias it ``candidate``."""
    from models.card import render_card

    name = settings.mlflow.student_model_name
    c = registry.client(settings.tracking_uri())
    c.log_artifacts(run_id, str(candidate_dir / "student"), "model/student")
    c.log_artifacts(run_id, str(candidate_dir / "edge"), "model/edge")
    version = registry.register_version(settings.tracking_uri(), name, run_id, "model",
                                        tags={**decision.tags(), **{f"meta.{k}": v for k, v in meta.items()}},
                                        description=f"gate {'pass' if decision.passed else 'fail'}: {decision.reason()}")
    c.set_registered_model_alias(name, registry.CANDIDATE, version)
    card = render_card(name, version, decision, results, meta, registry.read_history(settings.home_path(), name))
    c.log_text(run_id, card, f"model_card_v{version}.md")
    c.set_model_version_tag(name, version, "model_card", f"model_card_v{version}.md")
    return version


def promote_and_publish(settings: Settings, version: str, candidate_dir: Path, meta: dict, why: str,
                        by: str) -> dict:
    """Build the signed bundle from ``candidate_dir``, then promote ``version`` to champion + canary.

    Refuses (``models.rollout.PromotionRefused``) a version whose gate did not pass, before any
    file is written. The order (bundle → tags → alias → channel) and the invariant it keeps
    are documented in :mod:`models.rollout`.
    """
    from models import rollout
    from models.bundle import build_bundle, ensure_signing_key

    rollout.check_promotable(settings, version, why)
    ensure_signing_key(settings.signing_key_path(), settings.public_key_path())
    bundle_dir = settings.bundles_root() / f"v{version}"
    manifest = build_bundle(candidate_dir / "edge", bundle_dir, model_version=f"v{version}",
                            metrics=meta.get("metrics", {}), teacher_version=str(meta.get("teacher_version")),
                            data_hash=str(meta.get("split_hash")), backend=settings.student.quantize,
                            signing_key=settings.signing_key_path())
    result = rollout.promote_version(settings, version, why, by)
    return {"promotion": result["promotion"], "bundle": str(bundle_dir), "manifest_files": sorted(manifest.get("files", {}))}
