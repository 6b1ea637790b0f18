"""The edge bundle format, shared by the night that signs a bundle and the device that checks it.

A bundle is a flat folder: the predictor's files (``model.onnx``, ``tokenizer.json``,
``labels.json``, ``bundle.json``) and ``manifest.json``. The manifest lists the sha256 and size of
every file, the metrics and lineage of the model, and an ed25519 signature over its own canonical
JSON without the ``signature`` field. Stdlib and ``cryptography`` only: devices import this.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from edge.predictor import BUNDLE_CONFIG_FILE, LABELS_FILE, MODEL_FILE, TOKENIZER_FILE

MANIFEST_FILE = "manifest.json"
FORMAT = "edgeloop-bundle/1"
BUNDLE_FILES = (MODEL_FILE, TOKENIZER_FILE, LABELS_FILE, BUNDLE_CONFIG_FILE)
SIGNATURE_FIELD = "signature"
KEY_ID_FIELD = "key_id"
# Names that stay inside the bundle folder on every OS: no separators, no "..", no dotfiles.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def canonical_json(obj: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def signed_payload(manifest: dict[str, Any]) -> bytes:
    """Canonical JSON of ``manifest`` without its signature: what is signed and verified."""
    return canonical_json({k: v for k, v in manifest.items() if k != SIGNATURE_FIELD})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large models do not sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_safe_name(name: str) -> bool:
    """True when ``name`` is a plain file or version name that cannot escape its folder."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name)) and name not in (".", "..")


def check_version_name(model_version: str) -> str:
    """Return ``model_version`` or raise ValueError: it becomes a folder name on both sides."""
    if not is_safe_name(model_version):
        raise ValueError(f"model_version {model_version!r} must be 1-128 characters of "
                         "letters, digits, '.', '_' or '-' and must not start with '.'")
    return model_version


def raw_public_key(public_key) -> bytes:
    """The 32 raw bytes of an ed25519 public key object."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """Short id of a public key: the first 16 hex of sha256 over its raw bytes."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def load_public_key(path: str | Path):
    """Read an ed25519 public key from a PEM file; ValueError names the file when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"public key file {path} does not exist")
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"public key file {path} holds a {type(key).__name__}, expected ed25519")
    return key


def file_entry(path: Path) -> dict[str, Any]:
    """The manifest's record of one file."""
    return {"sha256": sha256_file(path), "size": path.stat().st_size}
