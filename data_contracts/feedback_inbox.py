"""Gather device feedback for the night: read, validate, re-redact, de-duplicate.

Server side only (the night's ingest calls it); the event format is the device's
(:mod:`edge.feedback`). Sources are device homes (their ``feedback/`` folder is read) or spool folders where devices
upload their ``*.jsonl`` files (read recursively). A malformed line is skipped and counted, never
fatal: one broken device must not stop the night.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge.feedback import FEEDBACK_DIR, FIELDS, message_id, validate_event
from edge.redact import redact

log = logging.getLogger(__name__)


def _files(source: Path) -> list[Path]:
    folder = source / FEEDBACK_DIR if (source / FEEDBACK_DIR).is_dir() else source
    return sorted(folder.rglob("*.jsonl")) if folder.is_dir() else []


def _read(path: Path) -> tuple[list[dict[str, Any]], int]:
    events, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("line is not a JSON object")
                validate_event(event)
            except ValueError as exc:  # JSONDecodeError is a ValueError
                bad += 1
                log.warning("skipping %s:%d: %s", path, lineno, exc)
                continue
            events.append(_redacted({k: event[k] for k in FIELDS}))
    return events, bad


def _redacted(event: dict[str, Any]) -> dict[str, Any]:
    # Devices redact already; redacting again guards against a device with an older redactor.
    if event["text"] is not None:
        text, _ = redact(event["text"])
        if text != event["text"]:
            event["text"], event["message_id"] = text, message_id(text)
    return event


def collect_feedback(sources: Path | Iterable[Path]) -> list[dict[str, Any]]:
    """Every valid feedback event under ``sources``, oldest first, each ``event_id`` once.

    ``sources`` is one folder or several: device homes or spool folders of ``*.jsonl`` files.
    Event fields: event_id, device_id, model_version, message_id, text (redacted, may be null),
    predicted, accepted, corrected_label, at (ISO UTC).
    """
    sources = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    seen: dict[str, dict[str, Any]] = {}
    bad = 0
    for source in sources:
        for path in _files(source):
            events, skipped = _read(path)
            bad += skipped
            for event in events:
                seen.setdefault(event["event_id"], event)
    if bad:
        log.warning("collect_feedback skipped %d malformed line(s)", bad)
    return sorted(seen.values(), key=lambda e: e["at"])  # stable: ties keep file order
