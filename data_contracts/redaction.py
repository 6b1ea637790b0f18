"""Redaction of whole frames for the lake, with the same rules the devices run (``edge.redact``)."""

from __future__ import annotations

import re

import pandas as pd

from edge.redact import PLACEHOLDERS, redact

# Format characters (zero-width space/joiners, word joiner, BOM, soft hyphen) can hide a number
# from the rules ("4111\u200b1111…"); the no-PII contract also looks at the text without them.
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]")


def redact_frame(df: pd.DataFrame, column: str = "text") -> tuple[pd.DataFrame, dict[str, int]]:
    """Return a copy of ``df`` with ``column`` redacted, and the total count per PII type.

    Every type in :data:`edge.redact.PLACEHOLDERS` is in the counts (0 when not found), so the
    figures log as a stable set of metrics. Values that are not strings (None, NaN) are left as
    they are: the raw contract quarantines them before redaction runs.
    """
    if column not in df.columns:
        raise KeyError(f"redact_frame: column {column!r} not found; the frame has {list(df.columns)}")
    totals = dict.fromkeys(PLACEHOLDERS, 0)
    out = df.copy()
    redacted = []
    for value in out[column].tolist():
        if isinstance(value, str):
            value, counts = redact(value)
            for kind, n in counts.items():
                totals[kind] += n
        redacted.append(value)
    out[column] = pd.Series(redacted, index=out.index, dtype=out[column].dtype
                            if isinstance(out[column].dtype, pd.StringDtype) else object)
    return out, totals


def find_pii(text: object) -> list[str]:
    """PII types still present in ``text`` (sorted; empty when clean or not a string)."""
    if not isinstance(text, str):
        return []
    found = set(redact(text)[1])
    visible = _INVISIBLE.sub("", text)
    if visible != text:
        found |= set(redact(visible)[1])
    return sorted(found)
