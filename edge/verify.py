"""Check a bundle folder before anything in it is loaded: signature first, then every file.

The signature is checked before any file hash so that a device never trusts a checksum that an
attacker could have rewritten together with the file.
"""

from __future__ import annotations

import base64
import binascii
import json
import stat
from pathlib import Path
from typing import Any

from edge.manifest import (BUNDLE_FILES, FORMAT, KEY_ID_FIELD, MANIFEST_FILE, SIGNATURE_FIELD,
                           is_safe_name, key_id, load_public_key, sha256_file, signed_payload)

# Files a bundle must never carry unless its manifest signs them: anything a loader might run.
_CODE_SUFFIXES = {".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".exe", ".sh", ".bat", ".cmd",
                  ".ps1", ".pkl", ".pickle", ".pt", ".bin", ".jar", ".js"}


class BundleVerificationError(Exception):
    """A bundle failed verification; the message says which check and which file."""


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Parse ``manifest.json`` in ``folder`` without trusting it yet."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise BundleVerificationError(f"missing manifest: {path} does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleVerificationError(f"manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleVerificationError(f"manifest {path} must be a JSON object")
    return manifest


def verify_signature(manifest: dict[str, Any], public_key) -> None:
    """Raise unless ``manifest`` carries a valid ed25519 signature by ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    signature = manifest.get(SIGNATURE_FIELD)
    if not signature:
        raise BundleVerificationError("unsigned bundle: manifest has no 'signature' field")
    expected_id = key_id(public_key)
    if manifest.get(KEY_ID_FIELD) != expected_id:
        raise BundleVerificationError(
            f"wrong key: bundle is signed by key_id {manifest.get(KEY_ID_FIELD)!r}, "
            f"this device trusts key_id {expected_id!r}")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BundleVerificationError("bad signature: 'signature' is not valid base64") from None
    try:
        public_key.verify(raw, signed_payload(manifest))
    except InvalidSignature:
        raise BundleVerificationError(
            f"bad signature: manifest of {manifest.get('model_version')!r} was altered "
            "after signing or signed by another key") from None
    except ValueError as exc:  # canonical JSON refuses NaN: such a manifest cannot be signed
        raise BundleVerificationError(f"bad signature: manifest cannot be canonicalised: {exc}") from None


def check_manifest_shape(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the manifest's ``files`` table after checking names and required entries."""
    if manifest.get("format") != FORMAT:
        raise BundleVerificationError(f"manifest format is {manifest.get('format')!r}, expected {FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleVerificationError("manifest field 'files' must be a non-empty object")
    for name, entry in files.items():
        if not is_safe_name(name) or name == MANIFEST_FILE:
            raise BundleVerificationError(f"manifest lists an unsafe file name {name!r}")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("size"), int) and entry["size"] >= 0):
            raise BundleVerificationError(f"manifest entry for {name!r} needs 'sha256' (str) and 'size' (int >= 0)")
    missing = [n for n in BUNDLE_FILES if n not in files]
    if missing:
        raise BundleVerificationError(f"manifest does not list required file(s) {missing}")
    return files


def verify_files(folder: str | Path, files: dict[str, dict[str, Any]]) -> None:
    """Raise unless every listed file is present with its size and sha256, and no code is added."""
    folder = Path(folder)
    for name, entry in sorted(files.items()):
        path = folder / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise BundleVerificationError(f"file {name} is not a regular file")
        if not path.exists():
            raise BundleVerificationError(f"file missing: {name} is listed in the manifest but absent")
        size = path.stat().st_size
        if size != entry["size"]:
            raise BundleVerificationError(f"size mismatch: {name} has {size} bytes, manifest says {entry['size']}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise BundleVerificationError(
                f"checksum mismatch: {name} sha256 {digest[:16]}…, manifest says {entry['sha256'][:16]}…")
    for extra in _unlisted(folder, files):
        if _looks_executable(folder / extra):
            raise BundleVerificationError(f"unexpected executable file {extra} is not in the manifest")


def _unlisted(folder: Path, files: dict[str, Any]) -> list[str]:
    return sorted(e.name for e in folder.iterdir() if e.name not in files and e.name != MANIFEST_FILE)


def _looks_executable(path: Path) -> bool:
    if path.is_dir() or path.is_symlink():
        return True  # a bundle is flat: a folder or link is never expected
    mode = path.stat().st_mode
    return bool(mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)) or path.suffix.lower() in _CODE_SUFFIXES


def verify_bundle(folder: str | Path, public_key_path: str | Path) -> dict[str, Any]:
    """Verify the bundle in ``folder`` against the ed25519 key in ``public_key_path``.

    Returns the manifest. Raises :class:`BundleVerificationError` naming the failed check:
    missing manifest, unsigned, wrong key, bad signature, file missing, size or checksum
    mismatch, or an unexpected executable file.
    """
    manifest = read_manifest(folder)
    verify_signature(manifest, load_public_key(public_key_path))
    verify_files(folder, check_manifest_shape(manifest))
    return manifest
