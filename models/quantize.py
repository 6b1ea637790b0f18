"""Turn a float student into what ships: ONNX, int8 for CPU devices.

The edge folder this writes (``model.onnx``, ``tokenizer.json``, ``labels.json``, ``bundle.json``)
is what :class:`edge.predictor.OnnxPredictor` loads and what the bundle signs. ONNX Runtime's
dynamic int8 is the CPU path: torch's ``quantize_dynamic`` is deprecated and its state dict needs
pickle, which nothing a device loads may use.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from edge.predictor import BUNDLE_CONFIG_FILE, LABELS_FILE, MODEL_FILE, TOKENIZER_FILE

log = logging.getLogger(__name__)


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model, out_path: str | Path, max_length: int) -> Path:
    """Export ``model`` to ONNX with dynamic batch and sequence axes (opset 18)."""
    out_path = Path(out_path)
    model = model.eval()
    # The wrapper must be in eval mode too: the exporter restores the wrapper's mode afterwards,
    # and a fresh module is in training mode, which would switch ``model``'s dropout back on.
    wrapper = _LogitsOnly(model).eval()
    ids = torch.ones((2, min(16, max_length)), dtype=torch.long)
    mask = torch.ones_like(ids)
    # The tracer warns that attention-mask shape checks become constants; the axes stay dynamic.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper, (ids, mask), str(out_path), input_names=["input_ids", "attention_mask"],
            output_names=["logits"], opset_version=18, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "logits": {0: "batch"}})
    return out_path


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger for every call
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(dst)


def write_tokenizer_json(tokenizer, path: str | Path) -> Path:
    """Save the fast tokenizer's ``tokenizer.json`` with no padding or truncation state.

    A transformers fast tokenizer called with ``padding=True`` (as training does) keeps that
    setting in its backend, and ``save_pretrained`` writes it out: a device would then pad every
    batch to its longest text *inside* ``encode_batch`` and count the pads as real tokens.
    """
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    backend.save(str(path))
    return Path(path)


def write_edge_folder(model, tokenizer, out_dir: str | Path, max_length: int,
                      backend: str = "onnx-int8") -> Path:
    """Write the device's files for ``model`` into ``out_dir`` and return it.

    The graph answers ``logits`` and ``pooled`` (the classifier's input, for device patches)."""
    from models.federated import add_pooled_output

    if backend not in ("onnx-int8", "onnx-fp32"):
        raise ValueError(f"unknown quantization backend {backend!r}; expected onnx-int8 or onnx-fp32")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", max_length)
        # The classifier's input as a second output, "pooled": devices fit their patches on it
        # (edge/patch.py); OnnxPredictor asks for "logits" only, so serving costs nothing more.
        add_pooled_output(fp32, fp32)
        if backend == "onnx-int8":
            quantize_int8(fp32, out / MODEL_FILE)
        else:
            shutil.copy(fp32, out / MODEL_FILE)
    write_tokenizer_json(tokenizer, out / TOKENIZER_FILE)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    (out / LABELS_FILE).write_text(json.dumps(labels))
    (out / BUNDLE_CONFIG_FILE).write_text(json.dumps({
        "max_length": max_length, "backend": backend, "format": "onnx", "opset": 18,
        "do_lower_case": True}, indent=2))
    return out


# ---- measured, never shipped: torch and bitsandbytes variants of the float model ---------------

class QuantizationUnavailable(RuntimeError):
    """A quantization backend cannot run here; the message says why."""


BNB_SKIP = ("classifier", "pooler")


def _import_bnb():
    """bitsandbytes, imported only when asked for (the import alone takes seconds)."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a native library that fails to load
        raise QuantizationUnavailable(f"bitsandbytes cannot be imported: {type(exc).__name__}: {exc}") from exc
    return bnb


def _bnb_linear(bnb, linear: torch.nn.Linear, bits: int, quant_type: str) -> torch.nn.Module:
    w = linear.weight.detach().float().clone()
    bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
    if bits == 8:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                    has_fp16_weights=False, threshold=0.0)
        layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                                  compute_dtype=torch.float32, quant_type=quant_type)
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=quant_type)
    if bias is not None:
        layer.bias = bias
    return layer.to("cpu")  # moving the parameters is what quantizes them


def quantize_bnb(model: torch.nn.Module, bits: int = 8, quant_type: str = "nf4",
                 skip: tuple[str, ...] = BNB_SKIP) -> torch.nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are bitsandbytes 8-bit or 4-bit layers.

    ``bits`` is 8 (LLM.int8 weights, ``Linear8bitLt``) or 4 (``Linear4bit`` with ``quant_type``
    nf4 or fp4). Layers whose name contains one of ``skip`` stay float (a sequence classifier's
    head and pooler, as transformers' ``llm_int8_skip_modules`` does). Embeddings stay float.
    Raises :class:`QuantizationUnavailable` when bitsandbytes cannot import or run a forward pass
    on this machine. For measurement: the result is a torch module, not an edge artifact.
    """
    import copy

    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if bits == 4 and quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be nf4 or fp4, got {quant_type!r}")
    bnb = _import_bnb()
    out = copy.deepcopy(model).float().eval()
    targets = [(name, mod) for name, mod in out.named_modules()
               if isinstance(mod, torch.nn.Linear) and not any(s in name for s in skip)]
    try:
        for name, mod in targets:
            parent_name, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, attr,
                    _bnb_linear(bnb, mod, bits, quant_type))
        if targets:  # one tiny forward, so an unsupported CPU fails here with the reason
            layer = out.get_submodule(targets[0][0])
            with torch.no_grad():
                layer(torch.zeros(1, targets[0][1].in_features))
    except QuantizationUnavailable:
        raise
    except Exception as exc:
        raise QuantizationUnavailable(f"bitsandbytes {bits}-bit layers do not run on this machine: "
                                      f"{type(exc).__name__}: {exc}") from exc
    return out


def quantize_torch_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """torch dynamic int8 of the ``nn.Linear`` layers (a copy). Measurement only: reloading its
    state dict needs pickle, which nothing a device loads may use."""
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).float().eval(), {torch.nn.Linear}, dtype=torch.qint8)


def serialized_mb(model: torch.nn.Module) -> float:
    """Size of ``model``'s state dict as ``torch.save`` writes it, in MB (10^6 bytes)."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell() / 1e6
