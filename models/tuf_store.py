"""Storage of the TUF repository (:mod:`models.tuf_repository`): private keys, files, the writer lock.

Private keys are ed25519 PEM files ``<keyid>.pem`` in one folder (``<home>/keys/tuf``), never
served and never committed, created 0600. Signing uses every key of a role found there and checks
the role's threshold afterwards, so a role whose threshold needs keys kept elsewhere (offline
root keys) fails loudly, not silently.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class ThresholdNotMet(RuntimeError):
    """Fewer private keys of a role are at hand than its threshold requires."""


def new_key(keys_dir: Path, root, role: str) -> str:
    """Generate an ed25519 key, store it in ``keys_dir``, list it for ``role`` in ``root``; return its id."""
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner.generate_ed25519()
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL + mode at creation: the key is never readable by others, not even for an instant.
    fd = os.open(keys_dir / f"{signer.public_key.keyid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.private_bytes)
    root.add_key(signer.public_key, role)
    return signer.public_key.keyid


def delete_keys(keys_dir: Path, keyids: list[str], root=None) -> None:
    """Delete the private keys of ``keyids``; with ``root``, only those it no longer lists for any role."""
    for keyid in keyids:
        if root is None or keyid not in root.keys:
            (keys_dir / f"{keyid}.pem").unlink(missing_ok=True)


def signers(keys_dir: Path, role: str, root) -> list:
    """Signers for every key of ``role`` (as ``root`` lists them) whose private key is in ``keys_dir``."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    out = []
    for keyid in root.roles[role].keyids:
        path = keys_dir / f"{keyid}.pem"
        if path.is_file():
            out.append(CryptoSigner(load_pem_private_key(path.read_bytes(), None), root.keys[keyid]))
    return out


def sign(md, role: str, root, keys_dir: Path) -> None:
    """Add signatures of every ``role`` key at hand to ``md``; raise unless ``root``'s threshold is met."""
    from tuf.api.exceptions import UnsignedMetadataError

    for signer in signers(keys_dir, role, root):
        md.sign(signer, append=True)
    try:
        root.verify_delegate(role, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as exc:
        raise ThresholdNotMet(f"cannot sign {role} v{md.signed.version}: {exc}; "
                              f"its keys must be in {keys_dir}") from None


@contextmanager
def writer_lock(repo_dir: Path) -> Iterator[None]:
    """One writer at a time: two nights publishing at once would fork the version chain."""
    with open(repo_dir / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (mode 0644) so that a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
