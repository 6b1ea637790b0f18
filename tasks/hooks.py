"""Test hooks the tasks call at fixed points; each is a no-op unless a test sets its variable."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

CRASH_ENV = "EDGELOOP_TEST_CRASH_AT"


def crash_point(step: str) -> None:
    """TEST HOOK, never set in production: ``EDGELOOP_TEST_CRASH_AT=<step>`` SIGKILLs this process
    when the night reaches ``step`` (as an OOM kill or a power cut would), so tests can show
    that the rerun resumes. Only ``train-student`` calls it."""
    if os.environ.get(CRASH_ENV) == step:
        log.warning("%s=%s: killing this process (pid %d) now", CRASH_ENV, step, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
