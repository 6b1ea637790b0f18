"""Resume, don't redo: a night killed during train-student is rerun without re-ingesting or
relabeling, finishes, and a further run of the completed night is skipped.

The kill uses the documented test hook ``EDGELOOP_TEST_CRASH_AT=train-student`` (tasks/hooks.py):
the night process SIGKILLs itself when train-student starts, as an OOM kill would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
# A small slice; the teacher's higher rates make 4 epochs on 300 seed rows enough to pass the
# teacher-label contract (the night stops on a teacher that has lost its footing).
QUICK = [arg for kv in ("dataset.max_rows=600", "dataset.seed_fraction=0.5", "teacher.epochs=4",
                        "teacher.lr_encoder=2e-4", "teacher.lr_head=5e-3", "teacher.warmup_ratio=0",
                        "student.epochs=2") for arg in ("--set", kv)]
NIGHT = "2026-11-01"


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP", "PREFECT_", "MLFLOW_"))}
    return {**env, "EDGELOOP_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **extra}


def _edgeloop(home: Path, *args: str, timeout: float = 480, **env) -> subprocess.CompletedProcess:
    """Run the CLI in its own process group; whatever it leaves behind (the ephemeral API server
    of a killed night, which would also hold a stdout pipe open) is killed with the group."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"cli-{len(list(home.glob('cli-*.log')))}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=_env(home, **env),
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def _labels(home: Path) -> int:
    import pandas as pd

    parts = list((home / "lake" / "labels").rglob("*.parquet"))
    return sum(len(pd.read_parquet(p, columns=["message_id"])) for p in parts)


def test_killed_night_resumes_without_relabeling_and_is_not_run_twice(tmp_path):
    home = tmp_path / "home"
    boot = _edgeloop(home, "bootstrap-teacher", *QUICK)
    assert boot.returncode == 0, boot.stdout[-3000:]

    killed = _edgeloop(home, "night", "--night", NIGHT, *QUICK, EDGELOOP_TEST_CRASH_AT="train-student")
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    labels_before = _labels(home)
    assert labels_before > 0  # relabeling finished before the kill
    ledger = json.loads((home / "lake" / "nights" / f"{NIGHT}.json").read_text())
    assert "completed_at" not in ledger
    assert not list((home / "bundles").glob("v*"))  # nothing half-promoted

    resumed = _edgeloop(home, "night", "--night", NIGHT, "--json", *QUICK)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "reusing its report, nothing re-ingested" in resumed.stdout
    assert "0 messages to label" in resumed.stdout
    assert _labels(home) == labels_before
    summary = _json_block(resumed.stdout)
    assert summary["rows_relabeled"] == 0 and summary["model_version"]
    assert json.loads((home / "lake" / "nights" / f"{NIGHT}.json").read_text())["completed_at"]

    again = _edgeloop(home, "night", "--night", NIGHT, "--json", *QUICK)
    assert again.returncode == 0, again.stdout[-3000:]
    skipped = _json_block(again.stdout)
    assert "already completed" in skipped["skipped"]


def _json_block(output: str) -> dict:
    """The CLI's --json object; log lines (stderr is merged in) may follow it."""
    return json.JSONDecoder().raw_decode(output[output.index("{\n"):])[0]
