"""Resuming a night's ingest: a rerun of a night whose ingest finished reuses its saved report.

Finished means both: the lake's night ledger records the night (written only when the ingest
passed its contracts) for the same input, and the report was saved afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_contracts.lake import Lake


def finished_ingest(lake: Lake, saved: Path, night: str, input_file: str | None) -> dict | None:
    """The saved report of ``night`` when its ingest of ``input_file`` finished, marked ``resumed``;
    None when the night must be ingested (again)."""
    record = lake.night_record(night)
    if not (record and Path(saved).exists() and record.get("input_file") == input_file):
        return None
    return {**json.loads(Path(saved).read_text()), "resumed": True}


def save_report(saved: Path, report: dict) -> None:
    """Keep the ingest report where :func:`finished_ingest` finds it."""
    saved = Path(saved)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(report, default=str))
