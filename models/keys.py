"""Labels as names in other systems (MLflow metric and tag keys, file names), reversibly.

Intent labels are the shop's own strings: ``reverted_card_payment?``, ``billing / invoices``,
``réclamation``. MLflow accepts only letters, digits and ``_ - . space : /`` in keys, and ``/``
makes folders in artifact paths. :func:`label_key` keeps the safe characters and writes every
other byte of the UTF-8 text as ``:XX`` (``:`` itself included), so distinct labels get distinct
keys and :func:`label_from_key` gives the exact original back. labels.json keeps the originals.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"[A-Za-z0-9_.\- ]")
_ESCAPE = re.compile(r":([0-9A-F]{2})")


def label_key(label: str) -> str:
    """A key-safe, reversible spelling of ``label`` (``refund?`` → ``refund:3F``)."""
    return "".join(ch if _SAFE.fullmatch(ch) else "".join(f":{b:02X}" for b in ch.encode("utf-8"))
                   for ch in label)


def label_from_key(key: str) -> str:
    """The label :func:`label_key` encoded."""
    out, i = bytearray(), 0
    while i < len(key):
        m = _ESCAPE.match(key, i)
        if m:
            out.append(int(m.group(1), 16))
            i = m.end()
        else:
            out += key[i].encode("utf-8")
            i += 1
    return out.decode("utf-8")
