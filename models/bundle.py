"""Sign and publish edge bundles: the training side of the bundle format in :mod:`edge.manifest`.

``bundles/<model_version>/`` is written once, atomically, and never changed; devices find it
through ``bundles/channels/{canary,stable}.json`` (the record :mod:`edge.channels` defines). Every
channel move is appended to ``channels/history.jsonl`` with its reason, so a rollback is as visible
as a promotion. Devices enrolled with a TUF root follow the same moves through the TUF repository
instead (:mod:`models.tuf_repository`; :func:`publish_channel` writes both).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.channels import (CHANNELS_DIR, HISTORY_FILE, Channel, channel_file, check_move, make_record,
                           parse_record)
from edge.manifest import (BUNDLE_FILES, FORMAT, KEY_ID_FIELD, MANIFEST_FILE, SIGNATURE_FIELD,
                           check_version_name, file_entry, key_id, signed_payload)

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- keys ------------------------------------------------------------------------------------
def ensure_signing_key(private_path: str | Path, public_path: str | Path) -> str:
    """Create an ed25519 keypair (PEM; private key mode 0600) unless it exists; return its key id.

    An existing private key is reused and its public half (re)written when missing; a public
    key that does not match the private one is an error rather than silently replaced.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        private = load_signing_key(private_path)
    elif public_path.exists():
        raise FileExistsError(f"public key {public_path} exists without its private key "
                              f"{private_path}; move it away before generating a new pair")
    else:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        _write_private(private_path, pem)
    public = private.public_key()
    pub_pem = public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    if not public_path.exists():
        public_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.write_bytes(pub_pem)
    elif public_path.read_bytes().strip() != pub_pem.strip():
        raise ValueError(f"public key {public_path} does not match private key {private_path}")
    return key_id(public)


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL + mode at creation: the key is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def load_signing_key(private_path: str | Path):
    """Read the ed25519 private key from a PEM file (unencrypted)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(private_path)
    if not path.is_file():
        raise FileNotFoundError(f"signing key {path} does not exist; create it with ensure_signing_key")
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path} holds a {type(key).__name__}, expected ed25519")
    return key


def sign_manifest(manifest: dict[str, Any], private_key) -> dict[str, Any]:
    """Return a copy of ``manifest`` with ``key_id`` and an ed25519 ``signature`` (base64)."""
    out = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    out[KEY_ID_FIELD] = key_id(private_key.public_key())
    out[SIGNATURE_FIELD] = base64.b64encode(private_key.sign(signed_payload(out))).decode("ascii")
    return out


# ---- bundles -----------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """Metrics often hold numpy scalars; make them plain JSON so the signature is reproducible."""
    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):  # numpy scalars and arrays alike
            return o.tolist()
        raise TypeError(f"metrics value of type {type(o).__name__} is not JSON serialisable")
    return json.loads(json.dumps(obj, default=default, allow_nan=False))


def build_bundle(model_dir: Path, out_dir: Path, *, model_version: str, metrics: dict,
                 teacher_version: str, data_hash: str, backend: str,
                 signing_key: Path | None, overwrite: bool = False, collab: dict | None = None) -> dict:
    """Copy the edge files of ``model_dir`` into ``out_dir`` with a signed ``manifest.json``.

    The folder is assembled beside ``out_dir`` and renamed into place, so a reader sees either
    no bundle or a complete one. ``signing_key`` None writes an unsigned bundle (devices refuse
    it; useful only for local checks). ``overwrite`` replaces an existing ``out_dir``; without
    it an existing bundle is an error, because published versions must never change.
    ``collab``: the version's :class:`edge.collab.CollabPolicy` as a dict, signed in as the
    manifest's ``collab`` block (absent when None, as on bundles made before the night chose one).
    Returns the manifest.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_version_name(model_version)
    missing = [n for n in BUNDLE_FILES if not (model_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"model_dir {model_dir} lacks bundle file(s) {missing}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"bundle {out_dir} already exists; model versions are immutable")
    try:
        metrics = _jsonable(dict(metrics))
    except ValueError as exc:
        raise ValueError(f"metrics must be finite JSON values: {exc}") from None
    if collab is not None:
        from edge.collab import CollabPolicy

        collab = CollabPolicy.from_dict(collab).to_dict()  # ValueError names a bad field
    private = load_signing_key(signing_key) if signing_key is not None else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name in BUNDLE_FILES:
            shutil.copyfile(model_dir / name, tmp / name)
        manifest = {
            "format": FORMAT, "model_version": model_version, "teacher_version": teacher_version,
            "data_hash": data_hash, "backend": backend, "created_at": _now(), "metrics": metrics,
            "files": {n: file_entry(tmp / n) for n in BUNDLE_FILES},
        }
        manifest["size_bytes"] = sum(e["size"] for e in manifest["files"].values())
        if collab is not None:
            manifest["collab"] = _jsonable(collab)
        if private is not None:
            manifest = sign_manifest(manifest, private)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; devices fetching over file:// must read it
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle %s written to %s (%d bytes, signed=%s)", model_version, out_dir,
             manifest["size_bytes"], private is not None)
    return manifest


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if overwrite and out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


# ---- channels ----------------------------------------------------------------------------------
def _channel_path(bundles_root: Path, channel: str) -> Path:
    return Path(bundles_root) / channel_file(channel)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_channel(bundles_root: Path, channel: Channel, model_version: str, reason: str,
                    *, public_key: Path | None = None, tuf=None) -> dict:
    """Point ``channel`` at ``bundles_root/<model_version>`` and record why in the history.

    With ``public_key`` the bundle is verified first, so a broken bundle is never published.
    With ``tuf`` (a :class:`models.tuf_repository.TufRepository`) the bundle is added to that
    repository and its channel target moved first, then the plain file is written: a crash in
    between leaves the plain file behind, which :func:`models.rollout.reconcile` notices.
    Returns the channel record written to ``channels/<channel>.json``.
    """
    bundles_root = Path(bundles_root)
    path = _channel_path(bundles_root, channel)
    check_move(channel, model_version, reason)
    folder = bundles_root / model_version
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no bundle for model_version {model_version!r}: {manifest_path} is missing")
    if public_key is not None:
        from edge.verify import verify_bundle
        verify_bundle(folder, public_key)
    if tuf is not None:
        tuf.add_bundle(folder)
        tuf.set_channel(channel, model_version, reason)
    previous = read_channel(bundles_root, channel)
    record = make_record(channel, model_version, hashlib.sha256(manifest_path.read_bytes()).hexdigest(), reason)
    _write_atomic(path, json.dumps(record, indent=2, sort_keys=True))
    history = {**record, "previous_model_version": previous["model_version"] if previous else None}
    with open(path.parent / HISTORY_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(history, sort_keys=True) + "\n")
    log.info("channel %s -> %s (%s)", channel, model_version, reason)
    return record


def read_channel(bundles_root: Path, channel: Channel) -> dict | None:
    """The record of ``channel`` or None when it was never published."""
    path = _channel_path(bundles_root, channel)
    if not path.exists():
        return None
    return parse_record(path.read_bytes(), channel)


def channel_history(bundles_root: Path) -> list[dict]:
    """Every channel move, oldest first."""
    path = Path(bundles_root) / CHANNELS_DIR / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
