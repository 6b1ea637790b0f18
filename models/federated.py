"""Learning back from devices: federated averaging of uploaded patch deltas into the global student.

Each upload (edge/patch_upload.py) is one device's patch as a dense (d + 1, C) delta on the
classifier's input features, already clipped and noised on the device under the ``dp_delta``
policy. The server bounds every device's contribution again (it does not trust the device's
clip): each delta is clipped to ``clip_norm`` and weighted by ``min(weight, weight_cap)``, then
averaged (FedAvg: the example-weighted mean, with Flower's ``aggregate`` semantics). The averaged
delta folds exactly into the student's classifier, because both feature kinds are linear in the
pooled output: pooled ``W' = W + step * dW^T``; logits ``W' = (I + step*dW)^T W``.

Flower (``flwr``) is not used: every flwr 1.x that supports this Python pins ``fastapi<0.139``
(1.42.0: also protobuf<7, rich<15, packaging<26), while prefect 3.9.1 needs ``fastapi>=0.139``,
so the two cannot share an environment; and what its ``FedAvg`` strategy would contribute here
is one weighted mean (``flwr.server.strategy.aggregate.aggregate``) over arrays the night already
holds, with no client round-trips to orchestrate. :func:`fedavg` keeps its signature and semantics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from edge.patch_upload import clip, upload_matrix

NDArrays = list[np.ndarray]


def fedavg(results: list[tuple[NDArrays, int]]) -> NDArrays:
    """Weighted average of layer lists, weights = example counts (``flwr.server.strategy.aggregate.aggregate``)."""
    if not results:
        raise ValueError("fedavg: no results to aggregate")
    total = sum(n for _, n in results)
    if total <= 0:
        raise ValueError("fedavg: total weight must be positive")
    return [sum(layers[i] * n for layers, n in results) / total for i in range(len(results[0][0]))]


@dataclass
class Aggregate:
    """The averaged delta and how it was formed."""

    delta: np.ndarray | None
    features: str | None
    devices: int
    refused: list[str] = field(default_factory=list)
    max_share: float = 0.0  # the largest weight share one device had in the mean

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices, "features": self.features, "refused": self.refused,
                "max_share": round(self.max_share, 4),
                "delta_norm": None if self.delta is None else round(float(np.linalg.norm(self.delta)), 6)}


def aggregate_uploads(payloads: Iterable[dict[str, Any]], *, fingerprint: str, labels_sha256: str,
                      clip_norm: float, weight_cap: float = 1.0, noise_sigma: float = 0.0,
                      weights: Iterable[float] | None = None) -> Aggregate:
    """FedAvg of the uploads made against the base model ``fingerprint`` with bounded contributions.

    Each upload is clipped to ``clip_norm`` plus room for the noise the fleet's policy adds
    (``noise_sigma`` per value, from the server's own configuration, never from the payload):
    ``clip_norm + noise_sigma * (sqrt(size) + 4)``, which an honest noised upload passes with
    overwhelming probability and a rogue one cannot exceed. Uploads for another base model or
    label set, or of another feature kind than the first accepted one, are refused with a reason
    (their features mean something else). ``weights`` (default 1 per upload: a DP payload carries
    no example count) are capped at ``weight_cap``.
    """
    if clip_norm <= 0 or weight_cap <= 0 or noise_sigma < 0:
        raise ValueError("clip_norm and weight_cap must be positive, noise_sigma not negative")
    payloads = list(payloads)
    weights = [1.0] * len(payloads) if weights is None else list(weights)
    if len(weights) != len(payloads):
        raise ValueError(f"{len(weights)} weights for {len(payloads)} uploads")
    results: list[tuple[NDArrays, float]] = []
    refused: list[str] = []
    kind = shape = None
    for i, (p, w) in enumerate(zip(payloads, weights)):
        try:
            matrix = upload_matrix(p)
        except ValueError as exc:
            refused.append(f"upload {i}: {exc}")
            continue
        if p["base_fingerprint"] != fingerprint or p["labels_sha256"] != labels_sha256:
            refused.append(f"upload {i}: fitted on another base model or label set")
            continue
        if kind is not None and (p["features"] != kind or matrix.shape != shape):
            refused.append(f"upload {i}: {p['features']} {matrix.shape} features, the others {kind} {shape}")
            continue
        kind, shape = p["features"], matrix.shape
        bound = clip_norm + noise_sigma * (np.sqrt(matrix.size) + 4.0)
        results.append(([clip(matrix.ravel(), bound).reshape(shape)], min(float(w), weight_cap)))
    if not results:
        return Aggregate(None, None, 0, refused)
    total = sum(w for _, w in results)
    return Aggregate(fedavg(results)[0], kind, len(results), refused, max(w for _, w in results) / total)


def fold_delta(weight: np.ndarray, bias: np.ndarray, delta: np.ndarray, features: str,
               step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The classifier (``weight`` (C, h), ``bias`` (C,)) with ``step`` x the (d + 1, C) ``delta`` folded in."""
    dw, db = delta[:-1] * step, delta[-1] * step
    c, h = weight.shape
    if features == "pooled":
        if dw.shape != (h, c):
            raise ValueError(f"pooled delta is {dw.shape}, the classifier takes ({h}, {c})")
        return (weight + dw.T).astype(weight.dtype), (bias + db).astype(bias.dtype)
    if features == "logits":
        if dw.shape != (c, c):
            raise ValueError(f"logits delta is {dw.shape}, the classifier has {c} labels")
        mix = np.eye(c) + dw  # z' = z (I + dW) + db, with z = h W^T + b
        return (mix.T @ weight).astype(weight.dtype), (bias @ mix + db).astype(bias.dtype)
    raise ValueError(f"features must be pooled or logits, got {features!r}")


# ---- ONNX graph edits (server side: the ``onnx`` package is not a device dependency) ------------

_CLASSIFIER_OPS = {"Gemm", "MatMul", "MatMulInteger", "DynamicQuantizeMatMul"}
_PASS_THROUGH = {"Add", "Mul", "Cast", "Identity"}


def pooled_tensor(model) -> str:
    """Name of the classifier's float input (the pooled output) in a student graph, fp32 or int8."""
    producer = {o: n for n in model.graph.node for o in n.output}
    frontier, seen = ["logits"], set()
    while frontier:
        name = frontier.pop(0)
        node = producer.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in _CLASSIFIER_OPS:
            src = node.input[0]
            quant = producer.get(src)
            return quant.input[0] if quant is not None and quant.op_type == "DynamicQuantizeLinear" else src
        if node.op_type in _PASS_THROUGH:
            frontier.extend(node.input)
    raise ValueError("no classifier (Gemm/MatMul) found upstream of the 'logits' output")


def add_pooled_output(src: str | Path, dst: str | Path, name: str = "pooled") -> Path:
    """Copy an ONNX student, exporting its pooled output as graph output ``name`` (what a bundle
    needs for pooled-feature patches; edge/patch.py reads it)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    if name in {o.name for o in model.graph.output}:
        onnx.save(model, str(dst))
        return Path(dst)
    tensor = pooled_tensor(model)
    model.graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"{name}_output"))
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", None]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def apply_delta_onnx(src: str | Path, dst: str | Path, delta: np.ndarray, features: str,
                     step: float = 1.0) -> Path:
    """Copy an ONNX student with ``logits += step * (x @ dW + db)`` added as an fp32 branch.

    ``x`` is the pooled tensor or the base logits. Exact for int8 graphs too (their classifier
    weights stay as quantized; the branch is float), at (d + 1) x C extra floats.
    """
    import onnx
    from onnx import helper, numpy_helper

    if features not in ("pooled", "logits"):
        raise ValueError(f"features must be pooled or logits, got {features!r}")
    model = onnx.load(str(src))
    g = model.graph
    base = "logits_base"
    x = pooled_tensor(model) if features == "pooled" else base
    for node in g.node:
        node.output[:] = [base if o == "logits" else o for o in node.output]
        node.input[:] = [base if i == "logits" else i for i in node.input]
    g.initializer.extend([numpy_helper.from_array((delta[:-1] * step).astype(np.float32), "learned_back.dW"),
                          numpy_helper.from_array((delta[-1] * step).astype(np.float32), "learned_back.db")])
    g.node.extend([helper.make_node("MatMul", [x, "learned_back.dW"], ["learned_back.xdW"]),
                   helper.make_node("Add", ["learned_back.xdW", "learned_back.db"], ["learned_back.delta"]),
                   helper.make_node("Add", [base, "learned_back.delta"], ["logits"])])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def apply_delta_safetensors(folder: str | Path, delta: np.ndarray, features: str, step: float = 1.0,
                            prefix: str = "classifier") -> Path:
    """Fold the delta into ``<prefix>.weight`` / ``.bias`` of a float student's ``model.safetensors``
    in place (the warm start of the next night)."""
    from safetensors.numpy import load_file, save_file

    path = Path(folder) / "model.safetensors"
    tensors = load_file(str(path))
    w, b = tensors[f"{prefix}.weight"], tensors[f"{prefix}.bias"]
    tensors[f"{prefix}.weight"], tensors[f"{prefix}.bias"] = fold_delta(w, b, delta, features, step)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
