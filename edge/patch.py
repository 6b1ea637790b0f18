"""A per-device patch: a small low-rank + bias correction of the student's logits, numpy only.

The patched logits are ``logits + ((x - mu) / sd) @ u @ v + b``, where ``x`` is the student's
*pooled* output (``[CLS]`` through the pooler, the classifier's input) when the bundle's graph
exports it as an output named :data:`POOLED_OUTPUT`, else the logits themselves. Both are linear
in the pooled output, so either patch folds exactly into the global classifier (models/federated.py).
Pooled features carry more than the logits (hidden 128 vs one score per intent) and are preferred;
today's bundles export only ``logits``, and a device cannot add a graph output without the
``onnx`` package, so the feature kind is whatever the graph gives.

Fitting is L2-regularised (toward the zero patch) softmax regression by Adam, a few hundred steps:
tens of milliseconds for a few hundred examples. A patch is saved as ``.npz`` (no pickle) with its
lineage: the sha256 of the base ``model.onnx`` and of its label list. A patch for another base
model is refused at load (:class:`IncompatiblePatch`), and the caller refits it from the stored
examples (edge/personal.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.predictor import LABELS_FILE, MODEL_FILE

POOLED_OUTPUT = "pooled"
FEATURES = ("pooled", "logits")
FORMAT = "edgeloop-patch/1"
MAX_PATCH_BYTES = 16 * 1024
ARRAYS = ("u", "v", "b", "mu", "sd")


class PatchError(ValueError):
    """A patch that cannot be built, saved or loaded; the message names the field."""


class IncompatiblePatch(PatchError):
    """A stored patch was fitted on another base model or label set."""


def labels_sha256(labels: list[str]) -> str:
    """Hash of the label list in order: a patch's columns mean these labels."""
    return hashlib.sha256(json.dumps(list(labels)).encode("utf-8")).hexdigest()


def base_fingerprint(folder: str | Path) -> str:
    """sha256 of the bundle's ``model.onnx``: the base a patch was fitted on.

    A re-published bundle with the same weights keeps its patches; any new weights do not.
    """
    h = hashlib.sha256()
    with open(Path(folder) / MODEL_FILE, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_labels(folder: str | Path) -> list[str]:
    return json.loads((Path(folder) / LABELS_FILE).read_text(encoding="utf-8"))


def feature_kind(predictor) -> str:
    """``pooled`` when the predictor's graph exports the pooled output, else ``logits``."""
    names = {o.name for o in predictor.session.get_outputs()}
    return "pooled" if POOLED_OUTPUT in names else "logits"


def base_outputs(predictor, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, str]:
    """(logits, features, feature kind) of the unpatched student for already-redacted ``texts``."""
    kind = feature_kind(predictor)
    names = ["logits"] + ([POOLED_OUTPUT] if kind == "pooled" else [])
    n, c = len(texts), len(predictor.labels)
    logits = np.zeros((n, c), dtype=np.float32)
    feats = None
    if n:
        encs = predictor.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            # _feeds is the predictor's one definition of the model inputs (our own padding).
            out = predictor.session.run(names, predictor._feeds([encs[i] for i in idx]))
            logits[idx] = out[0]
            if kind == "pooled":
                if feats is None:
                    feats = np.zeros((n, out[1].shape[1]), dtype=np.float32)
                feats[idx] = out[1]
    if kind == "logits":
        feats = logits
    elif feats is None:
        feats = np.zeros((0, 0), dtype=np.float32)
    return logits, feats, kind


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class Patch:
    """Low-rank ``u`` (d, r) @ ``v`` (r, C) plus bias ``b`` (C) over features standardized by the
    fitting data's per-feature ``mu`` and ``sd`` (d each)."""

    u: np.ndarray
    v: np.ndarray
    b: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def delta(self, feats: np.ndarray) -> np.ndarray:
        return ((np.asarray(feats, np.float32) - self.mu) / self.sd) @ self.u @ self.v + self.b

    def apply(self, logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Patched logits for base ``logits`` and their ``feats``."""
        return np.asarray(logits, np.float32) + self.delta(feats)

    def dense(self) -> np.ndarray:
        """The patch as one (d + 1, C) matrix on raw features: rows 0..d-1 the weight, row d the bias."""
        uv = self.u.astype(np.float64) @ self.v
        w = uv / self.sd[:, None]
        return np.vstack([w, (self.b - self.mu @ w)[None, :]]).astype(np.float32)

    def to_bytes(self) -> bytes:
        meta = json.dumps({**self.meta, "format": FORMAT}, sort_keys=True)
        buf = io.BytesIO()
        arrays = {k: getattr(self, k).astype(np.float32) for k in ARRAYS}
        np.savez(buf, **arrays, meta=np.frombuffer(meta.encode("utf-8"), dtype=np.uint8))
        return buf.getvalue()

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Patch":
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                arrays = {k: z[k] for k in (*ARRAYS, "meta")}
        except (KeyError, ValueError, OSError) as exc:
            raise PatchError(f"not a patch file: {exc}") from None
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        if meta.get("format") != FORMAT:
            raise PatchError(f"patch field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
        u, v, b, mu, sd = (arrays[k] for k in ARRAYS)
        if (u.ndim != 2 or v.ndim != 2 or b.ndim != 1 or u.shape[1] != v.shape[0] or v.shape[1] != b.shape[0]
                or mu.shape != (u.shape[0],) or sd.shape != (u.shape[0],)):
            raise PatchError(f"patch arrays do not fit together: u {u.shape}, v {v.shape}, b {b.shape}, "
                             f"mu {mu.shape}, sd {sd.shape}")
        if not all(np.isfinite(a).all() for a in (u, v, b, mu, sd)) or (sd <= 0).any():
            raise PatchError("patch arrays hold NaN or infinite values, or a non-positive sd")
        meta.pop("format")
        return cls(u, v, b, mu, sd, meta)


def save_patch(patch: Patch, path: str | Path, max_bytes: int = MAX_PATCH_BYTES) -> int:
    """Write ``patch`` atomically; refuse (PatchError) one above ``max_bytes``. Returns its size."""
    raw = patch.to_bytes()
    if len(raw) > max_bytes:
        raise PatchError(f"patch is {len(raw)} bytes, above the budget of {max_bytes} "
                         f"(rank {patch.u.shape[1]}, {patch.u.shape[0]} features, {patch.v.shape[1]} labels): "
                         f"lower personalization rank")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return len(raw)


def load_patch(path: str | Path, *, fingerprint: str, labels: list[str],
               max_bytes: int = MAX_PATCH_BYTES) -> Patch:
    """Read a patch and check that it belongs to this base model; IncompatiblePatch otherwise."""
    raw = Path(path).read_bytes()
    if len(raw) > max_bytes:
        raise PatchError(f"patch file is {len(raw)} bytes, above the budget of {max_bytes}")
    patch = Patch.from_bytes(raw)
    if patch.meta.get("labels_sha256") != labels_sha256(labels):
        raise IncompatiblePatch("patch was fitted for another label set")
    if patch.meta.get("base_fingerprint") != fingerprint:
        raise IncompatiblePatch(f"patch was fitted on base model {patch.meta.get('model_version')!r} "
                                f"(model.onnx {str(patch.meta.get('base_fingerprint'))[:12]}…), not this one")
    if patch.v.shape[1] != len(labels):
        raise IncompatiblePatch(f"patch has {patch.v.shape[1]} label columns, the model {len(labels)}")
    return patch


def estimate_bytes(n_features: int, n_labels: int, rank: int) -> int:
    """Upper estimate of a saved patch's size (arrays + npz/zip headers + metadata)."""
    return 4 * (rank * (n_features + n_labels) + n_labels + 2 * n_features) + len(ARRAYS) * 200 + 2048


def fit_patch(logits: np.ndarray, feats: np.ndarray, y: np.ndarray, *, rank: int = 8, l2: float = 1e-2,
              steps: int = 300, lr: float = 0.05, seed: int = 0) -> Patch:
    """Fit a patch by Adam on mean cross-entropy + ``l2``/2 * (|u|^2 + |v|^2 + |b|^2).

    ``logits`` (n, C) and ``feats`` (n, d) are the base model's outputs for the examples,
    ``y`` (n,) their label indices. The L2 term pulls toward the zero patch (the base model);
    on ``u`` and ``v`` together it is a nuclear-norm prior, which keeps the patch low-rank.
    """
    logits = np.asarray(logits, np.float64)
    feats = np.asarray(feats, np.float64)
    y = np.asarray(y, np.int64)
    n, c = logits.shape
    if feats.shape[0] != n or y.shape != (n,):
        raise PatchError(f"fit_patch: {n} logit rows, {feats.shape[0]} feature rows, {y.shape[0]} labels")
    if n == 0:
        raise PatchError("fit_patch: no examples")
    if y.min() < 0 or y.max() >= c:
        raise PatchError(f"fit_patch: label index out of range 0..{c - 1}")
    if rank < 1:
        raise PatchError(f"personalization rank must be >= 1, got {rank}")
    start = time.perf_counter()
    # Standardize each feature on the fitting data, so one step size and one L2 fit every model;
    # the floor keeps a feature that barely varies here from being blown up.
    mu = feats.mean(axis=0)
    sd = feats.std(axis=0)
    sd = np.maximum(sd, 1e-3 * (float(sd.mean()) or 1.0))
    x = (feats - mu) / sd
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    # One flat parameter vector with views u, v, b: Adam updates it in a few whole-array
    # operations per step (at these sizes the per-call overhead, not the arithmetic, is the cost).
    sizes = (d * rank, rank * c, c)
    flat, grad = np.zeros(sum(sizes)), np.zeros(sum(sizes))
    cuts = np.cumsum((0,) + sizes)
    u, v, b = (flat[cuts[i]:cuts[i + 1]] for i in range(3))
    gu, gv, gb = (grad[cuts[i]:cuts[i + 1]] for i in range(3))
    u, v, gu, gv = u.reshape(d, rank), v.reshape(rank, c), gu.reshape(d, rank), gv.reshape(rank, c)
    u[:] = rng.normal(0.0, 1.0 / np.sqrt(d), (d, rank))  # LoRA-style start: v = 0, so the patch is 0
    m, s = np.zeros_like(flat), np.zeros_like(flat)
    onehot = np.eye(c)[y]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        xu = x @ u
        z = logits + xu @ v + b
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        g = (z - onehot) / n
        gu[:] = x.T @ (g @ v.T)
        gv[:] = xu.T @ g
        gb[:] = g.sum(axis=0)
        grad += l2 * flat
        m *= b1
        m += (1 - b1) * grad
        s *= b2
        s += (1 - b2) * grad * grad
        flat -= (lr / (1 - b1 ** t)) * m / (np.sqrt(s / (1 - b2 ** t)) + eps)
    params = (u, v, b)
    u, v, b = (p.astype(np.float32) for p in params)
    patch = Patch(u, v, b, mu.astype(np.float32), sd.astype(np.float32))
    patch.meta.update(n_examples=int(n), rank=int(rank), fit_ms=round((time.perf_counter() - start) * 1e3, 2))
    return patch


def changes(patch: Patch, logits: np.ndarray, feats: np.ndarray, labels: list[str],
            limit: int = 10) -> list[dict[str, Any]]:
    """What the patch changes on ``(logits, feats)``: the most frequent base → patched label moves."""
    before = np.asarray(logits).argmax(axis=1)
    after = patch.apply(logits, feats).argmax(axis=1)
    moves: dict[tuple[int, int], int] = {}
    for a, b in zip(before.tolist(), after.tolist()):
        if a != b:
            moves[(a, b)] = moves.get((a, b), 0) + 1
    top = sorted(moves.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"from": labels[a], "to": labels[b], "count": n} for (a, b), n in top]
