"""The channel record: which bundle a device of a channel should run.

The night writes ``<bundles root>/channels/<channel>.json`` (:mod:`models.bundle`); devices read
it (:mod:`edge.device`). This module is the one definition of that file, as :mod:`edge.manifest`
is of the bundle it points at. Stdlib only: devices import this.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from edge.manifest import check_version_name, is_safe_name

CANARY: Literal["canary"] = "canary"
STABLE: Literal["stable"] = "stable"
Channel = Literal["canary", "stable"]
CHANNELS: tuple[str, ...] = (CANARY, STABLE)
CHANNELS_DIR = "channels"
HISTORY_FILE = "history.jsonl"
#: Fields of a channel record, in the order they are documented.
RECORD_FIELDS = ("channel", "model_version", "bundle", "manifest_sha256", "published_at", "reason")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


def check_channel(channel: str) -> str:
    """Return ``channel`` or raise ValueError when it is not one of :data:`CHANNELS`."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")
    return channel


def channel_file(channel: str) -> str:
    """Path of ``channel``'s record relative to the bundles root (``channels/stable.json``)."""
    return f"{CHANNELS_DIR}/{check_channel(channel)}.json"


def followed(channel: str) -> tuple[str, ...]:
    """Channels a device of ``channel`` reads, first found wins: a canary device follows stable
    until a canary is published."""
    return (CANARY, STABLE) if check_channel(channel) == CANARY else (STABLE,)


def check_move(channel: str, model_version: str, reason: str) -> None:
    """Raise ValueError naming what is wrong with moving ``channel`` to ``model_version``."""
    check_channel(channel)
    check_version_name(model_version)
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason must say why the channel moves")


def make_record(channel: str, model_version: str, manifest_sha256: str, reason: str) -> dict[str, Any]:
    """The record that points ``channel`` at bundle ``model_version`` (validated, timestamped now).

    ``manifest_sha256`` is the sha256 of the bundle's ``manifest.json``: a device refuses a bundle
    whose manifest differs from the one the channel named.
    """
    check_move(channel, model_version, reason)
    if not isinstance(manifest_sha256, str) or not _SHA256.match(manifest_sha256):
        raise ValueError(f"manifest_sha256 must be 64 lowercase hex characters, got {manifest_sha256!r}")
    return {"channel": channel, "model_version": model_version, "bundle": model_version,
            "manifest_sha256": manifest_sha256,
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "reason": reason.strip()}


def parse_record(raw: bytes | str, channel: str) -> dict[str, Any]:
    """Decode and check ``channel``'s record; ValueError names the file and the field at fault.

    Only what a device relies on is checked: ``model_version`` and ``bundle`` are plain names (they
    become paths) and ``manifest_sha256`` is a string.
    """
    name = channel_file(channel)
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{name} must be a JSON object")
    for field in ("model_version", "bundle"):
        if not is_safe_name(record.get(field)):
            raise ValueError(f"{name} field '{field}' is missing or not a plain name")
    if not isinstance(record.get("manifest_sha256"), str):
        raise ValueError(f"{name} field 'manifest_sha256' is missing")
    return record
