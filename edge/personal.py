"""On-device personalization: store a device's labelled feedback, fit and gate its patch, serve it.

Device home layout (next to edge/device.py's)::

    home/personal/examples.jsonl   one labelled example per line (redacted text, label); stays here
    home/personal/patch.npz        the active patch, if one passed the gate (edge/patch.py)
    home/personal/status.json      the last decision: kept or not, why, gate figures, what changed

The gate: a deterministic k-fold split of the examples by message id; a patch fitted without each
fold predicts that fold; the patch is kept only when, over all folds, it gets at least as many
held-out examples right as the base model does, and the answers it fixes outnumber those it breaks
beyond chance: exact one-sided McNemar (sign) test on the two, p <= ``gate_max_p``. A tie is no
evidence; in the benchmark patches kept on ties or one-answer wins lost up to 2.25 points on the
device's unseen messages. And only with ``min_examples`` examples and ``min_corrections``
corrections. The patch then kept is fitted on all examples.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from edge.feedback import FEEDBACK_DIR
from edge.personal_gate import GateResult, fold_of, gate_patch, sign_test_p  # noqa: F401 - re-exported
from edge.patch import (MAX_PATCH_BYTES, Patch, PatchError, base_outputs,
                        changes, estimate_bytes, fit_patch, labels_sha256, load_patch, save_patch,
                        softmax)

PERSONAL_DIR = "personal"
UPLOAD_POLICIES = ("none", "dp_delta")


@dataclass(frozen=True)
class PersonalConfig:
    """Device settings for personalization and what it may upload (docs/personalization.md)."""

    enabled: bool = True
    rank: int = 8
    l2: float = 1e-2
    steps: int = 300
    lr: float = 0.05
    max_patch_bytes: int = MAX_PATCH_BYTES
    min_examples: int = 20
    min_corrections: int = 3
    gate_folds: int = 4
    gate_max_p: float = 0.25
    max_examples: int = 2000
    refit_every: int = 10
    upload: str = "none"
    dp_epsilon: float = 1.0
    dp_delta: float = 1e-5
    dp_clip_norm: float = 5.0
    dp_epsilon_total: float = 8.0

    def __post_init__(self):
        checks = {"rank": self.rank >= 1, "steps": self.steps >= 1, "l2": self.l2 >= 0, "lr": self.lr > 0,
                  "max_patch_bytes": self.max_patch_bytes > 0, "min_examples": self.min_examples >= 2,
                  "min_corrections": self.min_corrections >= 0, "gate_folds": self.gate_folds >= 2,
                  "gate_max_p": 0 < self.gate_max_p <= 1,
                  "max_examples": self.max_examples >= self.min_examples, "refit_every": self.refit_every >= 0,
                  "upload": self.upload in UPLOAD_POLICIES, "dp_epsilon": 0 < self.dp_epsilon <= 100,
                  "dp_delta": 0 < self.dp_delta < 1, "dp_clip_norm": self.dp_clip_norm > 0,
                  "dp_epsilon_total": self.dp_epsilon_total >= self.dp_epsilon}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"personalization field '{bad[0]}' has an invalid value "
                             f"{getattr(self, bad[0])!r}" + (f" (one of {UPLOAD_POLICIES})" if bad[0] == "upload" else ""))


def example_from_event(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(message_id, redacted text, true label) of a feedback event, or None when it teaches nothing:
    no text (the device forgot it) or a rejection without a corrected label."""
    text = event.get("text")
    if not text:
        return None
    if event.get("corrected_label"):
        return event["message_id"], text, event["corrected_label"]
    if event.get("accepted"):
        return event["message_id"], text, event["predicted"]
    return None


class Personalizer:
    """The personalization state of one device home."""

    def __init__(self, home: str | Path, cfg: PersonalConfig | None = None):
        self.cfg = cfg or PersonalConfig()
        self.folder = Path(home) / PERSONAL_DIR
        self._lock = threading.Lock()
        self.patch: Patch | None = None

    @property
    def patch_path(self) -> Path:
        return self.folder / "patch.npz"

    # ---- examples ------------------------------------------------------------------------------
    def record(self, event: dict[str, Any]) -> bool:
        """Store the example a feedback event teaches, if any; True when stored."""
        ex = example_from_event(event)
        if ex is None:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"message_id": ex[0], "text": ex[1], "label": ex[2]}, ensure_ascii=False)
        with self._lock, open(self.folder / "examples.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return True

    def examples(self, labels: list[str]) -> tuple[list[str], list[str], np.ndarray]:
        """(message ids, texts, label indices): the latest label per message, newest ``max_examples``,
        labels the model does not know left out."""
        path = self.folder / "examples.jsonl"
        latest: dict[str, tuple[str, str]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    latest.pop(row["message_id"], None)  # re-insert: dict order is recency
                    latest[row["message_id"]] = (row["text"], row["label"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
        index = {label: i for i, label in enumerate(labels)}
        rows = [(m, t, index[lab]) for m, (t, lab) in latest.items() if lab in index][-self.cfg.max_examples:]
        return [r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], dtype=np.int64)

    # ---- the patch -----------------------------------------------------------------------------
    def refresh(self, predictor, *, model_version: str | None, fingerprint: str) -> dict[str, Any]:
        """Load the patch for this base model, or refit it from the stored examples (and gate it).

        No refit when this base model already has a decision (the gate refused, or the patch was
        reset): opening the same model again costs one file read, not a fit.
        """
        if not self.cfg.enabled:
            self.patch = None
            return self._write_status({"active": False, "reason": "personalization disabled"})
        why = "no patch yet"
        try:
            self.patch = load_patch(self.patch_path, fingerprint=fingerprint, labels=predictor.labels,
                                    max_bytes=self.cfg.max_patch_bytes)
            return self.status()
        except FileNotFoundError:
            self.patch = None
            if self._last().get("base_fingerprint") == fingerprint:
                return self.status()
            if self._last().get("base_fingerprint"):
                why = "refit: the base model changed"
        except PatchError as exc:  # IncompatiblePatch included: fitted on another base model
            self.patch = None
            self.patch_path.unlink(missing_ok=True)
            why = f"refit: {exc}"
        return self.fit(predictor, model_version=model_version, fingerprint=fingerprint, why=why)

    def fit(self, predictor, *, model_version: str | None, fingerprint: str, why: str = "asked") -> dict[str, Any]:
        """Fit a patch on every stored example, keep it if the gate passes; return the decision."""
        lines = self.example_lines()
        mids, texts, y = self.examples(predictor.labels)
        logits, feats, kind = base_outputs(predictor, texts)
        est = estimate_bytes(feats.shape[1] if len(texts) else len(predictor.labels), len(predictor.labels), self.cfg.rank)
        if est > self.cfg.max_patch_bytes:
            raise PatchError(f"a rank-{self.cfg.rank} patch would take about {est} bytes, above "
                             f"max_patch_bytes={self.cfg.max_patch_bytes}: lower personalization rank")
        gate = gate_patch(logits, feats, y, mids, self.cfg)
        decision: dict[str, Any] = {"why_fitted": why, "gate": gate.to_dict(), "features": kind,
                                    "model_version": model_version, "examples": len(y),
                                    "base_fingerprint": fingerprint, "example_lines": lines}
        if not gate.kept:
            self.patch = None
            self.patch_path.unlink(missing_ok=True)
            return self._write_status({"active": False, "reason": gate.reason, **decision})
        patch = fit_patch(logits, feats, y, rank=self.cfg.rank, l2=self.cfg.l2, steps=self.cfg.steps, lr=self.cfg.lr)
        patch.meta.update(base_fingerprint=fingerprint, model_version=model_version, features=kind,
                          labels_sha256=labels_sha256(predictor.labels),
                          fitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          gate=gate.to_dict(), changes=changes(patch, logits, feats, predictor.labels),
                          why_fitted=why)
        save_patch(patch, self.patch_path, self.cfg.max_patch_bytes)
        self.patch = patch
        return self._write_status(self.status() | {"base_fingerprint": fingerprint,
                                                   "example_lines": lines})

    def apply(self, logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Patched logits when a patch is active, else ``logits`` unchanged."""
        patch = self.patch
        return logits if patch is None else patch.apply(logits, feats)

    def predict(self, predictor, texts: list[str], patch: Patch | None | str = "active") -> list[dict[str, Any]]:
        """Label and confidence for each redacted text, with the base model's label beside it.

        ``patch`` defaults to the active one; a caller that swaps models passes the patch it
        loaded with ``predictor`` (or None), so a prediction never mixes one model with another's patch.
        """
        patch = self.patch if isinstance(patch, str) else patch
        logits, feats, _ = base_outputs(predictor, texts)
        base = logits.argmax(axis=1)
        probs = softmax(logits if patch is None else patch.apply(logits, feats))
        return [{"label": predictor.labels[i], "confidence": float(p[i]), "patched": patch is not None,
                 "base_label": predictor.labels[j]} for p, i, j in zip(probs, probs.argmax(axis=1), base)]

    def reset(self) -> None:
        """Drop the patch (the stored examples stay; ``forget`` drops them too). It stays dropped for
        this base model until ``fit`` is asked for or ``refit_every`` new examples arrive."""
        last = self._last()
        fingerprint = self.patch.meta.get("base_fingerprint") if self.patch else last.get("base_fingerprint")
        self.patch = None
        self.patch_path.unlink(missing_ok=True)
        self._write_status({"active": False, "reason": "reset", "base_fingerprint": fingerprint,
                            "example_lines": self.example_lines()})

    def example_lines(self) -> int:
        """Lines in the example store (a cheap count of what was recorded so far)."""
        path = self.folder / "examples.jsonl"
        if not path.is_file():
            return 0
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))

    def pending(self) -> int:
        """Examples recorded since the last decision (fit, refusal or reset)."""
        return max(0, self.example_lines() - int(self._last().get("example_lines", 0)))

    def _last(self) -> dict[str, Any]:
        path = self.folder / "status.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            return {}

    def forget(self) -> None:
        """Drop the patch and every stored example."""
        self.reset()
        (self.folder / "examples.jsonl").unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """Whether a patch is active and what it changed (no texts)."""
        p = self.patch
        if p is None:
            last = self._last()
            return {"active": False, "upload_policy": self.cfg.upload,
                    **{k: v for k, v in last.items() if k not in ("active", "base_fingerprint", "example_lines")}}
        return {"active": True, "upload_policy": self.cfg.upload, "bytes": p.nbytes,
                **{k: p.meta.get(k) for k in ("model_version", "features", "rank", "n_examples", "fit_ms",
                                             "fitted_at", "why_fitted", "gate", "changes")}}

    def _write_status(self, status: dict[str, Any]) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "status.json").write_text(json.dumps(status, indent=2, sort_keys=True))
        return {**status, "upload_policy": self.cfg.upload}


def record_all(personalizer: Personalizer, events: Iterable[dict[str, Any]]) -> int:
    """Store the examples of many feedback events (e.g. a device's existing feedback files)."""
    return sum(personalizer.record(e) for e in events)


def feedback_events(home: str | Path) -> Iterator[dict[str, Any]]:
    """The events of a device's feedback files (``home/feedback/*.jsonl``), oldest file first;
    lines that are not JSON objects (a torn write) are skipped."""
    for path in sorted((Path(home) / FEEDBACK_DIR).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event
