"""The night's learning back: uploaded patch deltas averaged into a second candidate (option, default off).

Devices leave upload payloads (edge/patch_upload.py) that a sync moves into the server's inbox
(``federated.uploads_dir``). :func:`learn_back` reads every ``*.json`` at the inbox's top level:

- an unreadable or invalid payload, one fitted on another base model or label set, or one of
  another feature kind or shape than the candidate takes is moved to ``rejected/`` with a
  ``<name>.reason.txt`` beside it (never silently dropped);
- the accepted ones are averaged with bounded contributions (models/federated.py: each delta
  clipped again on the server, each weight capped) and the mean is applied to a copy of tonight's
  candidate: into its ONNX graph as an fp32 branch and into its float student's classifier (so a
  kept learned-back candidate also warm-starts the next night); then they move to ``processed/``;
- with fewer than ``min_devices`` accepted, nothing is built and the accepted uploads stay in the
  inbox for a later night.

The uploads are fitted on the model the devices run (the champion's ``model.onnx``), tonight's
candidate is a new model: the delta is exact on it only when both are the same weights
(``exact`` in the report); otherwise it is an approximation (logit deltas keep their meaning
across models with the same labels, pooled ones less so), which is why :func:`choose` keeps the
learned-back candidate only when it is no worse on golden than the plain one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.patch import base_fingerprint, base_outputs, labels_sha256
from edge.patch_upload import validate_upload
from models.federated import aggregate_uploads, apply_delta_onnx, apply_delta_safetensors

REJECTED, PROCESSED = "rejected", "processed"


@dataclass
class LearnBackReport:
    """What one learn-back pass read, refused and built."""

    devices: int = 0  # upload files read (one per device upload; payloads carry no device id)
    accepted: int = 0
    rejected: int = 0
    waiting: int = 0  # accepted but left in the inbox (fewer than min_devices)
    features: str | None = None
    delta_norm: float | None = None
    max_share: float = 0.0
    clipped: int = 0  # accepted uploads the server's bound shortened
    exact: bool = False  # the uploads' base model is the candidate itself
    folder: str | None = None  # the learned-back candidate, when built
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pending_uploads(inbox: str | Path) -> list[Path]:
    """The ``*.json`` payloads waiting at the inbox's top level, oldest name first."""
    folder = Path(inbox)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _quarantine(path: Path, inbox: Path, reason: str) -> None:
    dest = inbox / REJECTED
    dest.mkdir(parents=True, exist_ok=True)
    path.replace(dest / path.name)
    (dest / f"{path.stem}.reason.txt").write_text(reason + "\n")


def _target(edge: Path) -> tuple[str, tuple[int, int], str]:
    """(feature kind, delta shape, labels hash) that the edge folder's model takes."""
    from edge.predictor import OnnxPredictor

    predictor = OnnxPredictor(edge)
    _, feats, kind = base_outputs(predictor, ["hello"])
    return kind, (feats.shape[1] + 1, len(predictor.labels)), labels_sha256(predictor.labels)


def learn_back(inbox: str | Path, candidate_folder: str | Path, out_folder: str | Path, *,
               fitted_on: str | None, clip_norm: float, max_weight: float = 1.0, min_devices: int = 1,
               noise_sigma: float = 0.0, batch: str = "night") -> LearnBackReport:
    """Average the inbox's uploads into ``out_folder``, a copy of ``candidate_folder`` (``edge/`` and,
    when present, ``student/``) with the mean delta applied; see the module docstring.

    ``fitted_on``: sha256 of the ``model.onnx`` the devices run (None: the candidate's own). Accepted
    uploads move to ``processed/<batch>/`` once the folder is built. Returns the report
    (``folder`` None when nothing was built).
    """
    if min_devices < 1:
        raise ValueError(f"min_devices must be at least 1, got {min_devices}")
    inbox, candidate = Path(inbox), Path(candidate_folder)
    kind, shape, labels_hash = _target(candidate / "edge")
    own = base_fingerprint(candidate / "edge")
    fitted_on = fitted_on or own
    report = LearnBackReport(exact=fitted_on == own)
    accepted: list[tuple[Path, dict]] = []
    for path in pending_uploads(inbox):
        report.devices += 1
        try:
            payload = validate_upload(json.loads(path.read_text()))
            if payload["base_fingerprint"] != fitted_on:
                raise ValueError(f"fitted on base model {payload['base_fingerprint'][:12]}, the devices' "
                                 f"model is {fitted_on[:12]}")
            if payload["labels_sha256"] != labels_hash:
                raise ValueError("fitted on another label set")
            if payload["features"] != kind or tuple(payload["shape"]) != shape:
                raise ValueError(f"{payload['features']} delta of shape {payload['shape']}, the candidate "
                                 f"takes {kind} of shape {list(shape)}")
        except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
            reason = f"{path.name}: {exc}"
            _quarantine(path, inbox, reason)
            report.rejected += 1
            report.reasons.append(reason)
            continue
        accepted.append((path, payload))
    report.accepted = len(accepted)
    if report.accepted < min_devices:
        report.waiting = report.accepted
        if accepted:
            report.reasons.append(f"{report.accepted} accepted upload(s), min_devices is {min_devices}: "
                                  "they wait in the inbox")
        return report
    payloads = [p for _, p in accepted]
    agg = aggregate_uploads(payloads, fingerprint=fitted_on, labels_sha256=labels_hash, clip_norm=clip_norm,
                            weight_cap=max_weight, noise_sigma=noise_sigma)
    if agg.refused or agg.delta is None:  # every payload was checked above: this is a bug, not input
        raise RuntimeError(f"aggregation refused checked uploads: {agg.refused}")
    bound = clip_norm + noise_sigma * (np.sqrt(shape[0] * shape[1]) + 4.0)
    report.clipped = sum(bool(np.linalg.norm(p["values"]) > bound) for p in payloads)
    report.features, report.max_share = agg.features, round(agg.max_share, 4)
    report.delta_norm = round(float(np.linalg.norm(agg.delta)), 6)
    out = Path(out_folder)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(candidate, out)
    apply_delta_onnx(candidate / "edge" / "model.onnx", out / "edge" / "model.onnx", agg.delta, agg.features)
    if (out / "student" / "model.safetensors").is_file():
        apply_delta_safetensors(out / "student", agg.delta, agg.features)
    report.folder = str(out)
    done = inbox / PROCESSED / batch
    done.mkdir(parents=True, exist_ok=True)
    for path, _ in accepted:
        path.replace(done / path.name)
    return report


def choose(golden: tuple[list[str], list[str]], candidate_edge: str | Path,
           learned_edge: str | Path) -> dict[str, Any]:
    """Golden accuracy of the plain and the learned-back candidate (as shipped, no latency runs)
    and the paired comparison (models/significance.py); ``keep`` when the learned-back one is not
    worse: its accuracy on the same texts is at least the plain one's."""
    from models.evaluate import evaluate_model, shipped_predictor
    from models.significance import compare_paired

    texts, y = golden
    res = {}
    for name, edge in (("plain", candidate_edge), ("learned_back", learned_edge)):
        labels = json.loads((Path(edge) / "labels.json").read_text())
        res[name] = evaluate_model(shipped_predictor(edge), labels, texts, y, latency_runs=0)
    overall, _ = compare_paired(y, res["plain"].predictions, res["learned_back"].predictions, resamples=200)
    return {"accuracy_plain": res["plain"].accuracy, "accuracy_learned_back": res["learned_back"].accuracy,
            "fixed": overall.better, "broken": overall.worse, "p_worse": overall.p_value,
            "keep": res["learned_back"].accuracy >= res["plain"].accuracy}
