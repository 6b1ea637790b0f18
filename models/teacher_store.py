"""The registered teacher: fine-tuned once (bootstrap), then found, cached and loaded every night.

``teacher@production`` is downloaded once per version into a cache folder; the model loads once
per process; the ONNX Runtime export that relabels the lake is written once per version.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from data_contracts.datasets import Split
from edgeloop.config import TeacherConfig
from models import registry
from models.evaluate import EvalResult, evaluate_model, golden_texts


@dataclass(frozen=True)
class TeacherRef:
    """The registered teacher a night uses: its version (the label cache key) and local folder."""

    version: str
    folder: str

    @property
    def cache_key(self) -> str:
        return f"v{self.version}"


def resolve_teacher(tracking_uri: str, cfg: TeacherConfig, cache_dir: Path) -> TeacherRef:
    """Download ``<cfg.registered_name>@<cfg.alias>`` into ``cache_dir/teacher`` (once per version)."""
    name, alias = cfg.registered_name, cfg.alias
    version = registry.alias_version(tracking_uri, name, alias)
    if version is None:
        raise LookupError(f"no registered model '{name}@{alias}' in {tracking_uri}: "
                          f"run `edgeloop bootstrap-teacher` first")
    dst = Path(cache_dir) / "teacher" / version
    files = registry.downloaded_files(dst)
    if files is None or not (files / "config.json").exists():
        tmp = dst.with_name(f"{version}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        files = dst / registry.download_version(tracking_uri, name, version, tmp).relative_to(tmp)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    return TeacherRef(version, str(files))


@lru_cache(maxsize=2)
def _local_teacher(folder: str, max_length: int, batch_size: int):
    from models.teacher import LocalTeacher

    return LocalTeacher(folder, max_length=max_length, batch_size=batch_size)


def load_teacher(cfg: TeacherConfig, ref: TeacherRef):
    """The teacher model for ``ref`` (cached per process), or its endpoint client."""
    if cfg.kind == "endpoint":
        from models.teacher import EndpointTeacher

        labels = json.loads((Path(ref.folder) / "config.json").read_text())["id2label"]
        return EndpointTeacher(cfg.endpoint_url, cfg.endpoint_model, [labels[str(i)] for i in range(len(labels))])
    return _local_teacher(ref.folder, cfg.max_length, cfg.relabel_batch_size)


def relabel_teacher(cfg: TeacherConfig, ref: TeacherRef):
    """The teacher that labels the lake: ONNX Runtime fp32 by default (exported once per version)."""
    if cfg.kind == "endpoint" or cfg.relabel_runtime == "torch":
        return load_teacher(cfg, ref)
    return _onnx_teacher(ref.folder, cfg.max_length)


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


def bootstrap_teacher(cfg: TeacherConfig, split: Split, out_dir: Path, *, seed: int, latency_runs: int,
                      threads: int = 0, on_epoch=None) -> tuple[dict, EvalResult]:
    """Fine-tune the base model on the seed's gold labels into ``out_dir/model``; evaluate on golden.

    Returns (``{"history", "n_train"}``, the golden evaluation).
    """
    from edge.redact import redact
    from models.teacher import LocalTeacher, fine_tune_teacher
    from models.training import set_threads

    set_threads(threads)
    shutil.rmtree(out_dir, ignore_errors=True)
    texts = [redact(t)[0] for t in split.seed["text"]]  # the teacher sees what the lake stores
    history = fine_tune_teacher(texts, split.seed["label"].tolist(), split.labels, cfg, out_dir / "model",
                                seed=seed, on_epoch=on_epoch)
    teacher = LocalTeacher(out_dir / "model", cfg.max_length, cfg.relabel_batch_size)
    g_texts, g_y = golden_texts(split)
    result = evaluate_model(teacher.predict_proba, teacher.labels, g_texts, g_y, folder=out_dir / "model",
                            latency_runs=latency_runs)
    return {"history": history, "n_train": len(texts)}, result
