"""The night guard: one night at a time, and a night that completed is not run again.

Two guards, taken in this order by :func:`exclusive_night`:

1. a file lock (``fcntl.flock``) on ``<home>/run/night.lock`` — the guarantee. It holds with or
   without a Prefect server (ephemeral API in tests and ``make nightly``), and the kernel drops it
   when the holding process dies, so a killed night never blocks the rerun.
2. the Prefect global concurrency limit ``edgeloop-night`` (limit 1, created on the fly when
   missing) — the one people see in the UI. Its slots are leases: a killed run's slot stays taken
   until the lease expires, so when the file lock is ours and the slot is still busy, the night
   goes on and says so (on one host the file lock already proves nobody else runs a night).

A night is *completed* once :func:`mark_completed` wrote its outcome to the night ledger in the
lake (:meth:`data_contracts.lake.Lake.complete_night`); a later run for the same night is skipped
with a reason unless ``force`` is set.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from data_contracts.lake import Lake
from edgeloop.config import Settings
from edgeloop.runtime import library_log_levels

log = logging.getLogger(__name__)

NIGHT_LIMIT = "edgeloop-night"
SLOT_TIMEOUT_S = 5.0
LEASE_S = 120.0


def _logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow run
        return log


def lock_path(settings: Settings) -> Path:
    """The file whose lock is held while a night runs."""
    return settings.home_path() / "run" / "night.lock"


def mark_completed(settings: Settings, night: str, summary: dict) -> None:
    """Record in the night ledger that ``night`` ran to ``summary``; reruns of it are then skipped."""
    Lake(settings.lake_root()).complete_night(night, summary)


def ensure_night_limit(limit: int = 1) -> bool:
    """Create the ``edgeloop-night`` global concurrency limit when missing; False if no API answers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(NIGHT_LIMIT)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=NIGHT_LIMIT, limit=limit))
                except Exception:  # created concurrently
                    client.read_global_concurrency_limit_by_name(NIGHT_LIMIT)
        return True
    except Exception as exc:  # noqa: BLE001 — the file lock still guards the night
        log.warning("no Prefect concurrency limit %s (%s): the file lock alone guards the night", NIGHT_LIMIT, exc)
        return False


@contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": datetime.now(timezone.utc).isoformat()}).encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _prefect_slot():
    """Occupy the UI-visible slot; on timeout (a stale lease) go on under the file lock."""
    from prefect.concurrency.sync import concurrency

    try:
        ctx = concurrency(NIGHT_LIMIT, occupy=1, timeout_seconds=SLOT_TIMEOUT_S, lease_duration=LEASE_S,
                          strict=False, raise_on_lease_renewal_failure=False)
        ctx.__enter__()
    except TimeoutError:
        _logger().warning("Prefect limit %s is still taken (a killed run's lease?); the file lock is ours, "
                          "so the night goes on", NIGHT_LIMIT)
        yield
        return
    try:
        yield
    finally:
        ctx.__exit__(None, None, None)


@contextmanager
def exclusive_night(settings: Settings, night: str, force: bool = False, use_prefect: bool = True) -> Iterator[str | None]:
    """Yield None when this process may run ``night``, else the reason to skip it.

    The file lock and the Prefect slot are held until the block exits.
    """
    library_log_levels()
    logger = _logger()
    path = lock_path(settings)
    with _file_lock(path) as mine:
        if not mine:
            holder = path.read_text() if path.exists() else ""
            reason = f"another night is running (lock {path} held by {holder or 'another process'})"
            logger.warning("night %s skipped: %s", night, reason)
            yield reason
            return
        done = Lake(settings.lake_root()).completed_night(night)
        if done and not force:
            reason = (f"night {night} already completed at {done['completed_at']} "
                      f"(model v{done.get('model_version')}); pass force=True to run it again")
            logger.warning("night %s skipped: %s", night, reason)
            yield reason
            return
        slot = _prefect_slot() if use_prefect and ensure_night_limit() else nullcontext()
        with slot:
            yield None
