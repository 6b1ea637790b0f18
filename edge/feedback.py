"""Feedback events: what a device records when a user accepts or corrects a prediction.

One JSON line per event in ``<device home>/feedback/<UTC date>.jsonl``. Text is redacted before
it is hashed or stored, so the ``message_id`` a device writes is the one the lake computes for
the same (redacted) message. This module is the one definition of what a device sends: the event
fields (:data:`FIELDS`), the device id (:data:`DEVICE_ID_REGEX`) and the content hash
(:func:`message_id`); the server side (``data_contracts``) imports them.
"""

from __future__ import annotations

import hashlib
import json
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


def make_event(*, device_id: str, model_version: str | None, message_id: str, text: str | None,
               predicted: str, accepted: bool, corrected_label: str | None) -> dict[str, Any]:
    """Build and validate one event; ValueError names the offending field."""
    event = {"event_id": uuid.uuid4().hex, "device_id": device_id, "model_version": model_version,
             "message_id": message_id, "text": text, "predicted": predicted, "accepted": accepted,
             "corrected_label": corrected_label,
             "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    validate_event(event)
    return event


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
    try:
        datetime.fromisoformat(event["at"])
    except ValueError:
        raise ValueError(f"feedback field 'at' is not an ISO timestamp: {event['at']!r}") from None


def append_event(home: Path, event: dict[str, Any]) -> Path:
    """Append ``event`` as one line to today's file under ``home/feedback``; return the file."""
    folder = Path(home) / FEEDBACK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{event['at'][:10]}.jsonl"
    line = json.dumps(event, ensure_ascii=False, sort_keys=True) + "\n"
    # One write per line under a lock: concurrent HTTP requests never interleave half-lines.
    with _append_lock, open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
    return path
