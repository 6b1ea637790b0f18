"""Gather device feedback for the night: read, validate, re-redact, de-duplicate.

Server side only (the night's ingest calls it); the formats are the device's (:mod:`edge.feedback`):
feedback events and deferral records (``"kind": "deferred"``: messages the device was unsure of,
with the answer it got). Sources are device homes (their ``feedback/`` folder is read) or spool
folders where devices upload their ``*.jsonl`` files (read recursively). A malformed line is
skipped and counted, never fatal: one broken device must not stop the night.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge.feedback import (DEFERRAL_FIELDS, DEFERRED, FEEDBACK_DIR, FIELDS, ROUTE_FIELDS, message_id,
                           validate_deferral, validate_event)
from edge.redact import redact

log = logging.getLogger(__name__)


def _files(source: Path) -> list[Path]:
    folder = source / FEEDBACK_DIR if (source / FEEDBACK_DIR).is_dir() else source
    return sorted(folder.rglob("*.jsonl")) if folder.is_dir() else []


def _read(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    events, deferrals, bad = [], [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                if not isinstance(event, dict):
                    raise ValueError("line is not a JSON object")
                deferred = event.get("kind") == DEFERRED
                (validate_deferral if deferred else validate_event)(event)
            except ValueError as exc:  # JSONDecodeError is a ValueError
                bad += 1
                log.warning("skipping %s:%d: %s", path, lineno, exc)
                continue
            if deferred:
                deferrals.append(_redacted({k: event[k] for k in DEFERRAL_FIELDS}))
            else:  # events written before ROUTE_FIELDS existed get them as null
                events.append(_redacted({**{k: event[k] for k in FIELDS}, **{k: event.get(k) for k in ROUTE_FIELDS}}))
    return events, deferrals, bad


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
    predicted, accepted, corrected_label, at (ISO UTC), and route, deferred, latency_ms, cloud_ms
    (null in older files).
    """
    return collect(sources)[0]


def collect(sources: Path | Iterable[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(feedback events, deferral records) under ``sources``, each oldest first, each ``event_id`` once."""
    sources = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    seen: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]] = ({}, {})
    bad = 0
    for source in sources:
        for path in _files(source):
            *found, skipped = _read(path)
            bad += skipped
            for kind, records in zip(seen, found):
                for record in records:
                    kind.setdefault(record["event_id"], record)
    if bad:
        log.warning("collect_feedback skipped %d malformed line(s)", bad)
    # stable: ties keep file order
    return tuple(sorted(kind.values(), key=lambda e: e["at"]) for kind in seen)  # type: ignore[return-value]
