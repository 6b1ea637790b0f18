"""Real, tiny edge models for the edge, bundle and fleet tests.

A WordPiece tokenizer is trained on a few sentences and a randomly initialised one-layer BERT
(hidden 32, 3 labels) is exported to ONNX: the files are exactly what a device loads, only small.
Models are built once per test session, whichever test module asks first.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

LABELS = ["track_order", "get_refund", "cancel_order"]
CORPUS = [
    "where is my order", "track my package please", "when will my order arrive",
    "i want a refund", "give me my money back", "refund the payment please",
    "cancel my order", "please cancel the order now", "stop the order hello",
]
MAX_LENGTH = 24
_CACHE: dict[str, dict[str, Path]] = {}


def _tokenizer():
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece

    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


def build_model_dir(out: Path, seed: int) -> Path:
    """Write model.onnx, tokenizer.json, labels.json, bundle.json for a random tiny BERT."""
    import torch

    from models.quantize import export_onnx
    from transformers import BertConfig, BertForSequenceClassification

    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer()
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=len(LABELS))
    model = BertForSequenceClassification(config).eval()

    export_onnx(model, out / "model.onnx", MAX_LENGTH)  # the night's own export path
    (out / "labels.json").write_text(json.dumps(LABELS))
    (out / "bundle.json").write_text(json.dumps({"max_length": MAX_LENGTH, "backend": "onnx-fp32"}))
    return out


@pytest.fixture(scope="session")
def edge_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Three different tiny models, ``v1``..``v3`` (different seeds), built once per session."""
    if "dirs" not in _CACHE:
        root = tmp_path_factory.mktemp("edge_models")
        _CACHE["dirs"] = {f"v{i}": build_model_dir(root / f"v{i}", seed=i) for i in (1, 2, 3)}
    return _CACHE["dirs"]


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> dict[str, Path]:
    """A trusted keypair and an unrelated one, as PEM files."""
    from models.bundle import ensure_signing_key

    if "keys" not in _CACHE:
        root = tmp_path_factory.mktemp("keys")
        ensure_signing_key(root / "edge.pem", root / "edge.pub")
        ensure_signing_key(root / "other.pem", root / "other.pub")
        _CACHE["keys"] = {"private": root / "edge.pem", "public": root / "edge.pub",
                          "other_private": root / "other.pem", "other_public": root / "other.pub"}
    return _CACHE["keys"]


def make_bundle(model_dir: Path, bundles_root: Path, version: str, private_key: Path | None,
                **overrides) -> dict:
    """Build ``bundles_root/<version>`` with sensible lineage fields."""
    from models.bundle import build_bundle

    fields = dict(model_version=version, metrics={"accuracy": 0.9, "macro_f1": 0.88},
                  teacher_version="teacher-1", data_hash="abc123", backend="onnx-fp32",
                  signing_key=private_key)
    fields.update(overrides)
    return build_bundle(model_dir, bundles_root / version, **fields)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Corrupt one byte in place (the middle by default), keeping the size."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    """GET ``url`` and parse its JSON body (5 s timeout)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())
