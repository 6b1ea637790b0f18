"""A month of nights on the bundled data, as a shop would run it: files land in an inbox every day.

Each day one export lands in ``$EDGELOOP_HOME/inbox`` (cut from the bundled stream, labels left
empty); some are bad: a file with the wrong columns, one that is not UTF-8, one with hostile rows,
one re-sent byte for byte. Some nights are missed (their files wait), one night is SIGKILLed in the
middle of training and run again. Every night runs through the CLI in its own process, and after
each one the ledger is checked:

* rows in = accepted + quarantined (the night's ingest report);
* nothing twice: message ids are unique in the lake, no file is ingested twice;
* nothing lost: every row of every ingested file is in the lake or in the quarantine, every file
  is in processed/ or rejected/ (with a reason file);
* the champion moves when a candidate passes the gate.

    python -m benchmarks.simulate_month --days 30 --missed 10,11 --killed 20   # writes results/month.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Small and quick: what the month checks is the bookkeeping, not the model's last point.
QUICK = {"dataset.max_rows": "1500", "dataset.seed_fraction": "0.4", "teacher.epochs": "5",
         "teacher.lr_encoder": "2e-4", "teacher.lr_head": "5e-3", "teacher.warmup_ratio": "0",
         "student.epochs": "10", "student.warm_start_epochs": "4", "student.augment_copies": "0",
         "evaluation.latency_runs": "40", "gate.max_p95_ms": "50", "gate.min_accuracy": "0.5",
         "gate.min_macro_f1": "0.4", "gate.min_teacher_retention": "0.6",
         # Behaviour floors for students of a small slice (measured 0.90-0.92 / 0.72-0.75 / 0.91-0.93).
         "gate.min_invariance": "0.8", "gate.min_functionality": "0.5", "gate.min_directional": "0.7",
         # Out-of-scope recall and coverage at 98% accuracy are measured and carded, not gated, here.
         "collab.min_oos_recall": "0.0", "collab.max_coverage_drop": "1.0"}


def _env(home: Path, inbox: bool = True, **extra: str) -> dict:
    """This home's environment only (none of the caller's EDGELOOP/PREFECT/MLFLOW settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGELOOP", "PREFECT_", "MLFLOW_"))}
    return {**env, "EDGELOOP_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            **({"EDGELOOP__ARRIVALS__INBOX": str(home / "inbox")} if inbox else {}), **extra}


def cli(home: Path, *args: str, settings: dict, timeout: float = 900, inbox: bool = True,
        **env: str) -> tuple[int, str]:
    """Run ``edgeloop`` in its own process group (killed whole afterwards); (exit code, output).
    ``inbox``: the home's inbox is the night's arrival source (else the configured sources)."""
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    log = home / f"cli-{len(list(home.glob('cli-*.log'))):03d}.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args, *sets], cwd=ROOT, env=_env(home, inbox, **env),
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
    return proc.returncode, log.read_text()


def _csv(rows: list[tuple[str, str]]) -> bytes:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["instruction", "intent"])
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def daily_files(stream_texts: list[str], days: int, bad: dict[int, str]) -> dict[int, tuple[str, bytes]]:
    """Day → (file name, bytes): the stream cut into one export a day, ``bad`` days spoiled."""
    per = max(1, len(stream_texts) // days)
    files = {}
    for d in range(1, days + 1):
        rows = [(t, "") for t in stream_texts[(d - 1) * per: d * per]]
        kind = bad.get(d)
        if kind == "columns":
            data = b"question,answer\nwhere is my order,thanks\n"
        elif kind == "encoding":
            data = "instruction,intent\ncommande livr\u00e9e,\n".encode("latin-1")
        elif kind == "hostile":
            data = _csv(rows + [("", ""), ("x" * 3000, ""), ("bad\x07bell", "")])
        elif kind == "resent":
            files[d] = (f"export-{d:02d}.csv", files[d - 1][1])
            continue
        else:
            data = _csv(rows)
        files[d] = (f"export-{d:02d}.csv", data)
    return files


def _file_ids(data: bytes) -> tuple[set[str], int]:
    """Redacted message ids of a good file's rows with text, and its number of rows without text."""
    import io

    import pandas as pd

    from edge.feedback import message_id
    from edge.redact import redact

    df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    texts = [t for t in df["instruction"] if t.strip()]
    return {message_id(redact(t)[0]) for t in texts}, len(df) - len(texts)


def check_ledger(home: Path, night: str, ingested: dict[str, bytes]) -> dict:
    """The invariants after ``night``; raises AssertionError naming the one that broke."""
    from data_contracts.lake import Lake

    lake = Lake(home / "lake")
    report = json.loads((home / "work" / night / "ingest_report.json").read_text())
    assert report["rows_in"] == report["rows_accepted"] + report["rows_quarantined"], report
    msgs = lake.messages()
    assert msgs["message_id"].is_unique, "a message is in the lake twice"
    quarantined = lake.quarantined()
    known = set(msgs["message_id"]) | set(quarantined.get("message_id", []))
    for name, data in ingested.items():
        ids, _ = _file_ids(data)
        lost = ids - known
        assert not lost, f"{len(lost)} row(s) of {name} are neither in the lake nor in the quarantine"
    inbox = home / "inbox"
    for name in ingested:
        assert (inbox / "processed" / name).exists(), f"{name} was ingested but not moved to processed/"
    return {"rows_in": report["rows_in"], "accepted": report["rows_accepted"],
            "quarantined": report["rows_quarantined"], "added": report["rows_added"],
            "files_rejected": [r["name"] for r in report.get("files_rejected", [])],
            "lake_messages": len(msgs)}


def simulate(home: Path, days: int, missed: set[int], killed: set[int], bad: dict[int, str],
             settings: dict | None = None, start: date = date(2026, 10, 1)) -> dict:
    """Run the month; returns per-night figures and the champion's history."""
    from data_contracts.datasets import load_split
    from edgeloop.config import load_settings

    settings = {**QUICK, **(settings or {})}
    home.mkdir(parents=True, exist_ok=True)
    cfg = load_settings(assignments=[f"{k}={v}" for k, v in settings.items()], environ={})
    split = load_split(cfg.dataset)
    files = daily_files(split.stream["text"].tolist(), days, bad)
    code, out = cli(home, "bootstrap-teacher", "--if-missing", settings=settings)
    assert code == 0, out[-3000:]
    nights, champions, ingested_all = [], [], {}
    waiting: list[str] = []
    for d in range(1, days + 1):
        name, data = files[d]
        (home / "inbox").mkdir(exist_ok=True)
        (home / "inbox" / name).write_bytes(data)
        waiting.append(name)
        if d in missed:
            nights.append({"day": d, "missed": True})
            continue
        night = (start + timedelta(days=d - 1)).isoformat()
        t0 = time.perf_counter()
        if d in killed:
            code, out = cli(home, "night", "--night", night, "--json", settings=settings,
                            EDGELOOP_TEST_CRASH_AT="train-student")
            assert code != 0, "the killed night exited 0"
        code, out = cli(home, "night", "--night", night, "--json", settings=settings)
        assert code == 0, out[-3000:]
        summary = json.loads(out[out.rindex("\n{\n") + 1:out.rindex("\n}\n") + 2])  # --json's object
        seen = {n: b for n, b in ((n, (home / "inbox" / "processed" / n)) for n in waiting) if b.exists()}
        for n, p in seen.items():
            if not any(n == k for k in ingested_all):
                ingested_all[n] = p.read_bytes()
        rejected = [n for n in waiting if (home / "inbox" / "rejected" / n).exists()]
        for n in rejected:
            assert (home / "inbox" / "rejected" / f"{n}.reason.txt").exists(), f"{n} rejected without a reason"
        assert set(seen) | set(rejected) == set(waiting), f"files left in the inbox: {set(waiting) - set(seen) - set(rejected)}"
        waiting = []
        facts = check_ledger(home, night, {n: b for n, b in ingested_all.items()})
        champions.append(summary.get("champion_version"))
        nights.append({"day": d, "night": night, "killed_first": d in killed, "seconds": round(time.perf_counter() - t0, 1),
                       "gate": summary.get("gate_decision"), "model_version": summary.get("model_version"),
                       "champion": summary.get("champion_version"), "student_accuracy": summary.get("student_accuracy"),
                       "files_rejected_tonight": rejected, **facts})
        print(json.dumps(nights[-1]), flush=True)
    moves = sum(1 for a, b in zip(champions, champions[1:]) if a != b)
    return {"days": days, "missed": sorted(missed), "killed": sorted(killed), "bad_files": bad,
            "nights": nights, "champion_moves": moves, "champions": champions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, default=ROOT / "var" / "month")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--missed", default="10,11")
    p.add_argument("--killed", default="20")
    p.add_argument("--bad", default="4:columns,9:hostile,15:encoding,23:resent",
                   help="DAY:KIND,... spoiled files (kinds: columns, encoding, hostile, resent)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "month.json")
    a = p.parse_args(argv)
    bad = {int(d): k for d, k in (x.split(":") for x in a.bad.split(",") if x)}
    result = simulate(a.home, a.days, {int(x) for x in a.missed.split(",") if x},
                      {int(x) for x in a.killed.split(",") if x}, {d: k for d, k in bad.items() if d <= a.days})
    a.out.write_text(json.dumps(result, indent=2))
    print(f"champion moved {result['champion_moves']} time(s); results in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
