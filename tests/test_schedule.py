"""A night is named by its scheduled date in the schedule's timezone."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flows.schedule import night_of


def test_late_run_keeps_its_scheduled_date():
    scheduled = datetime(2026, 11, 26, 1, 0, tzinfo=timezone.utc)  # 02:00 in Berlin
    late_start = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
    assert night_of(scheduled, "Europe/Berlin", now=late_start) == "2026-11-26"


def test_timezone_decides_the_date():
    scheduled = datetime(2026, 11, 26, 23, 30, tzinfo=timezone.utc)
    assert night_of(scheduled, "UTC") == "2026-11-26"
    assert night_of(scheduled, "Asia/Tokyo") == "2026-11-27"
    assert night_of(scheduled, "America/New_York") == "2026-11-26"


def test_adhoc_run_is_tonight():
    now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    assert night_of(None, "UTC", now=now) == "2026-11-26"


def test_bad_timezone_is_named():
    with pytest.raises(ValueError, match="'Mars/Olympus' is not an IANA timezone"):
        night_of(None, "Mars/Olympus")
