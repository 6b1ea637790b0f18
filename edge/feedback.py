"""Feedback events and deferral records: what a device sends home for the night.

One JSON line per event in ``<device home>/feedback/<UTC date>.jsonl``. Text is redacted before
it is hashed or stored, so the ``message_id`` a device writes is the one the lake computes for
the same (redacted) message. This module is the one definition of what a device sends: the event
fields (:data:`FIELDS`, plus the optional :data:`ROUTE_FIELDS` that say how the prediction was
answered; files written before them still validate), the device id (:data:`DEVICE_ID_REGEX`), the
content hash (:func:`message_id`) and the deferral record (:data:`DEFERRAL_FIELDS`): a message the
device was unsure of (its collab policy deferred it), with the answer it got, written to
``<date>.deferred.jsonl`` beside the events so it travels home the same way. The server side
(``data_contracts``) imports them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FEEDBACK_DIR = "feedback"
#: Fields of one event, in file order.
FIELDS = ("event_id", "device_id", "model_version", "message_id", "text", "predicted",
          "accepted", "corrected_label", "at")
#: Optional event fields (absent in older files): how the prediction the event is about was
#: answered (edge/cloud.py ``Answer``): ``route`` (device / cloud / rejected), ``deferred``,
#: ``latency_ms`` and ``cloud_ms``. Null when the device no longer knows.
ROUTE_FIELDS = ("route", "deferred", "latency_ms", "cloud_ms")
ROUTES = ("device", "cloud", "rejected")  # edge.collab.ROUTES; repeated here so this module stays stdlib-only
#: A deferral record (``kind`` = ``deferred``): a message the device's policy sent to the cloud (or,
#: without a cloud, answered with low confidence). ``label``/``confidence`` is the answer it gave
#: (the cloud's, or the device's own when the cloud failed: then ``flag`` says why), ``route`` who
#: gave it (cloud or device; rejections are not sent home), ``teacher_version`` the cloud teacher's.
DEFERRAL_FIELDS = ("event_id", "kind", "device_id", "model_version", "message_id", "text", "label", "confidence",
                   "route", "teacher_version", "local_label", "local_confidence", "latency_ms", "cloud_ms",
                   "flag", "at")
DEFERRED = "deferred"
DEFERRAL_SUFFIX = ".deferred.jsonl"
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")
#: Device ids: ``dev-`` + 4-32 lowercase letters/digits (a hash prefix in practice); anything else
#: is not one of our devices. Match the whole string (``fullmatch``): ``$`` alone lets "\n" through.
DEVICE_ID_REGEX = r"^dev-[a-z0-9]{4,32}$"
DEVICE_ID = re.compile(DEVICE_ID_REGEX)
_append_lock = threading.Lock()


def message_id(text: str) -> str:
    """Content hash of a message (stripped, UTF-8): the same text always gets the same id, on a
    device and in the lake."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:32]


def is_device_id(value: Any) -> bool:
    """True when ``value`` is a device id as :data:`DEVICE_ID_REGEX` defines it."""
    return isinstance(value, str) and DEVICE_ID.fullmatch(value) is not None


def looks_like_message_id(value: str) -> bool:
    """True for 32 lowercase hex characters, the shape of :func:`message_id`."""
    return bool(_MESSAGE_ID.match(value))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def make_event(*, device_id: str, model_version: str | None, message_id: str, text: str | None,
               predicted: str, accepted: bool, corrected_label: str | None,
               route: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build and validate one event; ValueError names the offending field.

    ``route`` holds the :data:`ROUTE_FIELDS` of the prediction (missing ones are null).
    """
    event = {"event_id": uuid.uuid4().hex, "device_id": device_id, "model_version": model_version,
             "message_id": message_id, "text": text, "predicted": predicted, "accepted": accepted,
             "corrected_label": corrected_label, "at": _now(),
             **{f: (route or {}).get(f) for f in ROUTE_FIELDS}}
    validate_event(event)
    return event


def _number(record: dict[str, Any], field: str, kind: str, high: float = math.inf) -> None:
    value = record.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= high:
        raise ValueError(f"{kind} field '{field}' must be a number in [0, {high:g}] or null, got {value!r}")


def _validate_route(record: dict[str, Any], kind: str, routes=ROUTES) -> None:
    if record.get("route") is not None and record["route"] not in routes:
        raise ValueError(f"{kind} field 'route' must be one of {list(routes)} or null, got {record['route']!r}")
    if record.get("deferred") is not None and not isinstance(record["deferred"], bool):
        raise ValueError(f"{kind} field 'deferred' must be true, false or null")
    for field in ("latency_ms", "cloud_ms"):
        _number(record, field, kind)


def validate_event(event: dict[str, Any]) -> None:
    """Raise ValueError naming the first field that does not fit the event schema."""
    missing = [f for f in FIELDS if f not in event]
    if missing:
        raise ValueError(f"feedback event lacks field(s) {missing}")
    for field in ("event_id", "device_id", "predicted", "at"):
        if not isinstance(event[field], str) or not event[field].strip():
            raise ValueError(f"feedback field '{field}' must be a non-empty string")
    if not isinstance(event["message_id"], str) or not looks_like_message_id(event["message_id"]):
        raise ValueError("feedback field 'message_id' must be 32 lowercase hex characters")
    if not isinstance(event["accepted"], bool):
        raise ValueError("feedback field 'accepted' must be true or false")
    for field in ("text", "corrected_label", "model_version"):
        if event[field] is not None and not isinstance(event[field], str):
            raise ValueError(f"feedback field '{field}' must be a string or null")
    if event["corrected_label"] is not None and (event["accepted"] or event["corrected_label"] == event["predicted"]):
        raise ValueError("feedback field 'corrected_label' is only for a rejected prediction and "
                         "must differ from 'predicted'")
    if not is_device_id(event["device_id"]):
        raise ValueError(f"feedback field 'device_id' {event['device_id']!r} is not dev-<4-32 lowercase letters/digits>")
    _validate_route(event, "feedback")
    _check_at(event["at"], "feedback")


def _check_at(at: str, kind: str) -> None:
    try:
        datetime.fromisoformat(at)
    except ValueError:
        raise ValueError(f"{kind} field 'at' is not an ISO timestamp: {at!r}") from None


def make_deferral(*, device_id: str, model_version: str | None, text: str, answer: dict[str, Any]) -> dict[str, Any]:
    """A deferral record for the redacted ``text`` and its ``answer`` (edge.cloud ``Answer.to_dict()``)."""
    record = {"event_id": uuid.uuid4().hex, "kind": DEFERRED, "device_id": device_id, "model_version": model_version,
              "message_id": message_id(text), "text": text, "at": _now(),
              **{f: answer.get(f) for f in DEFERRAL_FIELDS if f in answer}}
    validate_deferral(record)
    return record


def validate_deferral(record: dict[str, Any]) -> None:
    """Raise ValueError naming the first field of a deferral record that does not fit."""
    missing = [f for f in DEFERRAL_FIELDS if f not in record]
    if missing:
        raise ValueError(f"deferral record lacks field(s) {missing}")
    if record["kind"] != DEFERRED:
        raise ValueError(f"deferral field 'kind' must be {DEFERRED!r}, got {record['kind']!r}")
    for field in ("event_id", "device_id", "text", "label", "local_label", "at"):
        if not isinstance(record[field], str) or not record[field].strip():
            raise ValueError(f"deferral field '{field}' must be a non-empty string")
    if not is_device_id(record["device_id"]):
        raise ValueError(f"deferral field 'device_id' {record['device_id']!r} is not dev-<4-32 lowercase letters/digits>")
    if record["message_id"] != message_id(record["text"]):
        raise ValueError("deferral field 'message_id' must be the hash of its 'text' (edge.feedback.message_id)")
    for field in ("model_version", "teacher_version", "flag"):
        if record[field] is not None and not isinstance(record[field], str):
            raise ValueError(f"deferral field '{field}' must be a string or null")
    if record["route"] not in ("cloud", "device"):
        raise ValueError(f"deferral field 'route' must be 'cloud' or 'device', got {record['route']!r}")
    for field in ("confidence", "local_confidence"):
        if record[field] is None:
            raise ValueError(f"deferral field '{field}' must be a number in [0, 1]")
        _number(record, field, "deferral", 1.0)
    _validate_route(record, "deferral")
    _check_at(record["at"], "deferral")


def append_event(home: Path, event: dict[str, Any]) -> Path:
    """Append ``event`` (a feedback event or a deferral record) as one line to today's file under
    ``home/feedback`` (``<date>.jsonl``, or ``<date>.deferred.jsonl``); return the file."""
    folder = Path(home) / FEEDBACK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (event["at"][:10] + (DEFERRAL_SUFFIX if event.get("kind") == DEFERRED else ".jsonl"))
    line = json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n"
    # One write per line under a lock: concurrent HTTP requests never interleave half-lines.
    with _append_lock, open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
    return path
