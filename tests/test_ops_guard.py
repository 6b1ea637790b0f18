"""The night guard without Prefect: one night at a time, completed nights skipped, the crash hook."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from data_contracts.lake import Lake
from edgeloop.config import load_settings
from flows.guard import exclusive_night, lock_path, mark_completed
from tasks.hooks import CRASH_ENV

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(tmp_path):
    return load_settings(overrides={"home": str(tmp_path / "home")}, environ={})


def test_second_night_is_skipped_while_the_first_holds_the_lock(settings):
    with exclusive_night(settings, "2026-11-01", use_prefect=False) as first:
        assert first is None
        with exclusive_night(settings, "2026-11-02", use_prefect=False) as second:
            assert second and "another night is running" in second and str(os.getpid()) in second
    with exclusive_night(settings, "2026-11-02", use_prefect=False) as after:
        assert after is None  # released on exit


def test_lock_held_by_another_process_and_released_when_it_dies(settings):
    path = lock_path(settings)
    path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with exclusive_night(settings, "2026-11-01", use_prefect=False) as skipped:
            assert skipped and "another night is running" in skipped
    finally:
        holder.kill()
        holder.wait(10)
    with exclusive_night(settings, "2026-11-01", use_prefect=False) as skipped:
        assert skipped is None  # the kernel dropped the dead holder's lock: no stale lock to clean


def test_completed_night_is_skipped_unless_forced(settings):
    ledger = Lake(settings.lake_root())
    assert ledger.completed_night("2026-11-01") is None
    mark_completed(settings, "2026-11-01", {"mlflow_run_id": "r1", "model_version": "3", "gate_decision": "pass"})
    assert ledger.completed_night("2026-11-01")["model_version"] == "3"
    with exclusive_night(settings, "2026-11-01", use_prefect=False) as skipped:
        assert skipped and "already completed" in skipped and "v3" in skipped
    with exclusive_night(settings, "2026-11-01", force=True, use_prefect=False) as skipped:
        assert skipped is None
    with exclusive_night(settings, "2026-11-02", use_prefect=False) as skipped:
        assert skipped is None


def test_crash_hook_kills_only_when_named():
    code = "from tasks.hooks import crash_point as c; c('train-student'); print('alive')"
    env = {**os.environ, CRASH_ENV: "evaluate"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "alive"
    env[CRASH_ENV] = "train-student"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == -9
