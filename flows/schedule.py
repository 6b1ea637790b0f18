"""Which night a flow run is: its scheduled date in the schedule's timezone, not the wall clock."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def night_of(scheduled: datetime | None, tz: str, now: datetime | None = None) -> str:
    """``YYYY-MM-DD`` of ``scheduled`` (else ``now``) in ``tz``.

    A run scheduled for 02:00 on the 26th that starts at 03:10, or the next morning after an
    outage, is still the night of the 26th; an ad-hoc run without a schedule is today's night.
    """
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"schedule timezone {tz!r} is not an IANA timezone name (e.g. Europe/Berlin, UTC)") from None
    moment = scheduled or now or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(zone).strftime("%Y-%m-%d")


def scheduled_start() -> datetime | None:
    """The current Prefect flow run's scheduled start time, or None outside a scheduled run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    # A run created by a schedule carries its slot in expected_start_time; ad-hoc runs have no
    # auto-scheduled marker and are named by the wall clock instead.
    if run is None or not getattr(run, "auto_scheduled", False):
        return None
    return run.expected_start_time


def import_night(night: str, input_file: str) -> str:
    """The ledger name of a one-off import on an already completed ``night``: ``<night>+import-<hash>``.

    Named by the file's content, so the same export imported twice is the same import (and is
    refused the second time), while another file on the same date gets its own entry.
    """
    import hashlib
    from pathlib import Path

    path = Path(input_file)
    if not path.is_file():
        raise ValueError(f"--input {input_file}: no such file")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"{night}+import-{digest.hexdigest()[:10]}"
