"""Creating and opening the TUF repository of :mod:`models.tuf_repository`: keys, thresholds, expiry policy."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from models.tuf_repository import CONFIG_FILE, DEFAULT_EXPIRY, ROLES, TufRepository, default_paths
from models.tuf_store import new_key, sign, write_atomic, writer_lock

log = logging.getLogger(__name__)


def _check_expiry(expiry: dict[str, Any] | None) -> dict[str, timedelta]:
    out = dict(DEFAULT_EXPIRY)
    for role, value in (expiry or {}).items():
        if role not in ROLES:
            raise ValueError(f"expiry: unknown role {role!r}; roles are {ROLES}")
        value = value if isinstance(value, timedelta) else timedelta(seconds=float(value))
        if value <= timedelta(0):
            raise ValueError(f"expiry.{role} must be positive, got {value}")
        out[role] = value
    return out


def open_repository(repo_dir: str | Path, keys_dir: str | Path, *,
                    expiry: dict[str, timedelta | float] | None = None) -> TufRepository:
    """Open the repository created by :func:`init_repository` in ``repo_dir``.

    ``expiry`` (as in :func:`init_repository`; roles left out keep their default) replaces the
    stored policy when it differs: the configuration is the source of truth, and the new lifetimes
    apply from the next version each role signs.
    """
    repo_dir = Path(repo_dir)
    config = repo_dir / CONFIG_FILE
    if not (repo_dir / "metadata" / "root.json").is_file() or not config.is_file():
        raise FileNotFoundError(f"no TUF repository in {repo_dir}; create it with init_repository")
    stored = _check_expiry(json.loads(config.read_text(encoding="utf-8"))["expiry_seconds"])
    if expiry is not None and _check_expiry(expiry) != stored:
        stored = _check_expiry(expiry)
        _write_config(repo_dir, stored)
        log.info("TUF: expiry policy of %s is now %s", repo_dir, {r: str(v) for r, v in stored.items()})
    return TufRepository(repo_dir, Path(keys_dir), stored)


def _write_config(repo_dir: Path, expiry: dict[str, timedelta]) -> None:
    write_atomic(repo_dir / CONFIG_FILE, json.dumps(
        {"expiry_seconds": {r: v.total_seconds() for r, v in expiry.items()}}, indent=2).encode())


def ensure_repository(home: str | Path, *, expiry: dict[str, timedelta | float] | None = None) -> TufRepository:
    """The repository of ``home`` (:func:`default_paths`), created with its keys on first use.

    ``expiry``: see :func:`open_repository`.
    """
    repo_dir, keys_dir = default_paths(home)
    try:
        return open_repository(repo_dir, keys_dir, expiry=expiry)
    except FileNotFoundError:
        try:
            return init_repository(repo_dir, keys_dir, expiry=expiry)
        except FileExistsError:  # another process created it meanwhile
            return open_repository(repo_dir, keys_dir, expiry=expiry)


def init_repository(repo_dir: str | Path, keys_dir: str | Path, *,
                    thresholds: dict[str, int] | None = None,
                    expiry: dict[str, timedelta | float] | None = None) -> TufRepository:
    """Create a repository: keys for every role, root/targets/snapshot/timestamp version 1.

    ``thresholds`` (default 1 for each role) sets how many signatures a role needs; that many
    ed25519 keys are generated for it. ``expiry`` overrides :data:`DEFAULT_EXPIRY` per role
    (timedelta or seconds) and is kept for every later change.
    """
    from tuf.api.metadata import Metadata, Root, Targets

    repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
    if (repo_dir / "metadata" / "root.json").exists():
        raise FileExistsError(f"{repo_dir} already holds a TUF repository")
    thresholds = {role: 1 for role in ROLES} | dict(thresholds or {})
    for role, n in thresholds.items():
        if role not in ROLES or not isinstance(n, int) or n < 1:
            raise ValueError(f"thresholds.{role} must be a role of {ROLES} with an integer >= 1, got {n!r}")
    expiry_td = _check_expiry(expiry)
    repo_dir.mkdir(parents=True, exist_ok=True)
    _write_config(repo_dir, expiry_td)
    repo = TufRepository(repo_dir, keys_dir, expiry_td)
    root = Root(consistent_snapshot=True)
    for role in ROLES:
        root.roles[role].threshold = thresholds[role]
        for _ in range(thresholds[role]):
            new_key(keys_dir, root, role)
    with writer_lock(repo_dir):
        md = Metadata(root)
        repo._bump(md, "root", first=True)
        sign(md, "root", md.signed, keys_dir)
        repo._write("root", md)
        repo._publish("targets", Metadata(Targets()), first=True)
    log.info("TUF repository created in %s (keys in %s)", repo_dir, keys_dir)
    return repo
