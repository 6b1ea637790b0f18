"""Replace personal data in a customer message with typed placeholders, before it leaves a device.

Standard library only (``re``): this module ships to devices without pandas or Great Expectations,
and the nightly flow uses the very same code (``data_contracts.redaction``), so a message is
redacted the same way on the device and in the lake.

What is found, in the order the rules run (an earlier rule's placeholder is never re-matched):

=============  ===========================================================================
EMAIL          ``name@example.com``
IBAN           ``DE89 3704 0044 0532 0130 00``: country, check digits, 11-30 alphanumerics,
               optional spaces; only when the ISO 13616 mod-97 check passes.
TRACKING_ID    a token with digits after "tracking (number|no|#|id|code)", UPS ``1Z…`` (18
               chars) and UPU ``RR123456789US`` formats anywhere.
INVOICE_ID     an id after "invoice / bill / receipt" (``bill #85632``).
ORDER_ID       an id after "order / purchase / reference / confirmation" (``order #85632``,
               ``purchase 113542617735902``), a ``#`` followed by 4+ digits anywhere, and any
               other bare run of 6+ digits that is not an amount (``$150000``, ``150000 dollars``).
CARD           13-19 digits, optionally grouped by spaces or dashes, starting 2-6 (issuer
               ranges), only when Luhn-valid.
PHONE          ``+44 20 7946 0958``, ``(555) 123-4567``, ``555.123.4567``, ``07911 123456``;
               digits after "call / phone / mobile / tel / whatsapp / text me at".
ADDRESS        ``12 Main Street``, ``221B baker st.``, ``1600 Pennsylvania Avenue NW``,
               ``Hauptstraße 5``, ``P.O. Box 123``.
=============  ===========================================================================

Out of scope (documented, not attempted): names of people ("Mr. Jones", "Anna Freeman"), cities,
countries and postal codes alone, dates, and PII hidden with zero-width characters inside numbers.
Amounts ("$350", "1499 dollars", "$1,200.50"), years, quantities ("order 2 items") and the
placeholders themselves are left alone, so ``redact(redact(t)[0]) == (redact(t)[0], {})``.
"""

from __future__ import annotations

import re
from typing import Callable

PLACEHOLDERS: dict[str, str] = {
    "EMAIL": "{EMAIL}",
    "IBAN": "{IBAN}",
    "TRACKING_ID": "{TRACKING_ID}",
    "INVOICE_ID": "{INVOICE_ID}",
    "ORDER_ID": "{ORDER_ID}",
    "CARD": "{CARD}",
    "PHONE": "{PHONE}",
    "ADDRESS": "{ADDRESS}",
}

# A message with neither a digit nor an "@" holds nothing any rule can find: skip it cheaply.
_MAYBE_PII = re.compile(r"[\d@]")

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")

_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]){11,30}\b")

# An id token after a keyword: letters/digits/dashes, holding at least 4 digits in all.
_ID = r"(?P<id>#?\s?(?=[A-Za-z0-9-]*\d(?:-?[A-Za-z0-9]*\d){3})[A-Za-z0-9][A-Za-z0-9-]{3,39})"
_LABEL = r"(?:\s*(?:number|num|no\.?|nr\.?|id|code|#\s*:|:)\s*)*"
_TRACKING_CTX = re.compile(r"(?i)\btracking" + _LABEL + r"\s*" + _ID + r"\b")
_TRACKING_FMT = re.compile(r"\b(?:1Z[0-9A-Z]{16}|[A-Z]{2}\d{9}[A-Z]{2})\b")
_INVOICE_CTX = re.compile(r"(?i)\b(?:invoice|bill|receipt)s?" + _LABEL + r"\s*" + _ID + r"\b")
_ORDER_CTX = re.compile(
    r"(?i)(?:order|purchase|reference|ref|confirmation)s?" + _LABEL + r"\s*" + _ID + r"\b")
_HASH_ID = re.compile(r"(?<![\w#])#\s?\d{4,20}\b")

_CARD = re.compile(r"(?<![\d.,])(?:\d[ -]?){12,18}\d(?![\d.,]?\d)")

_PHONE_CTX = re.compile(
    r"(?i)\b(?:call(?:\s+me)?|phone|mobile|cell|tel|telephone|whatsapp|text\s+me)"
    r"(?:\s+(?:number|no\.?|at|on|is))*\s*:?\s*(?P<id>\+?\d[\d\s().-]{5,20}\d)")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){1,4}"
    r"|\(\d{3}\)\s?\d{3}[\s.-]?\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4}"
    r"|\d{3}\s\d{3}\s\d{4}"
    r"|0\d{3,4}\s\d{6,7})(?!\w)")

_STREET_SUFFIX_ANY_CASE = (r"street|st\.?|avenue|ave\.?|road|rd\.?|boulevard|blvd\.?|highway|hwy\.?"
                           r"|parkway|pkwy\.?")
_STREET_SUFFIX_CAPITAL = r"Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?|Way|Place|Pl\.?|Terrace|Square|Sq\.?"
_STOPWORDS = {"the", "a", "an", "my", "your", "our", "on", "in", "to", "of", "for", "and", "by",
              "is", "at", "from", "with", "this", "that", "it", "i", "me", "or", "items", "days",
              "times", "weeks", "months", "years", "hours", "minutes", "dollars", "euros"}
_ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?,?\s+(?P<name>(?:[A-Za-z][A-Za-z'.-]*\s+){1,4})"
    r"(?:(?i:" + _STREET_SUFFIX_ANY_CASE + r")|(?:" + _STREET_SUFFIX_CAPITAL + r"))"
    r"(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?(?![A-Za-z])"
    r"(?:,?\s*(?i:apt|apartment|suite|unit|flat)\.?\s*#?\s*[A-Za-z0-9-]{1,6}\b)?")
_ADDRESS_EU = re.compile(
    r"(?i)\b[A-ZÄÖÜa-zäöüß-]{2,40}(?:straße|strasse|str\.|weg|gasse|platz|allee)\s+\d{1,4}[a-z]?\b")
_PO_BOX = re.compile(r"(?i)\bP\.?\s?O\.?\s?Box\s+\d{1,8}\b")

_AMOUNT_AFTER = re.compile(r"\s*(?:dollars?|usd|euros?|eur|pounds?|gbp|bucks|cents?)\b", re.I)
_CURRENCY_BEFORE = "$€£¥"
_CURRENCY_WORD_BEFORE = re.compile(r"(?i)\b(?:usd|eur|gbp|chf|us\$)\s*$")


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum (payment card numbers do)."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """True when ``candidate`` (spaces allowed) passes the ISO 13616 mod-97 check."""
    s = re.sub(r"[\s-]", "", candidate).upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit() or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:  # a non-ASCII digit or letter
        return False
    return number % 97 == 1


def _is_amount(text: str, start: int, end: int) -> bool:
    before = text[max(0, start - 8):start].rstrip()
    return (bool(before) and before[-1] in _CURRENCY_BEFORE) or bool(_CURRENCY_WORD_BEFORE.search(before)) \
        or bool(_AMOUNT_AFTER.match(text, end))


def _sub(pattern: re.Pattern, kind: str, text: str, counts: dict[str, int],
         accept: Callable[[re.Match], tuple[int, int] | None] | None = None) -> str:
    """Replace each match (or the span ``accept`` picks inside it) with ``kind``'s placeholder."""
    out, last = [], 0
    for m in pattern.finditer(text):
        span = accept(m) if accept else m.span()
        if span is None or span[0] < last:
            continue
        out.append(text[last:span[0]])
        out.append(PLACEHOLDERS[kind])
        last = span[1]
        counts[kind] = counts.get(kind, 0) + 1
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _accept_iban(m: re.Match) -> tuple[int, int] | None:
    # The match can run into following words ("... 3000 please" is not part of it): take the
    # longest prefix that passes mod-97.
    text = m.group(0)
    for end in range(len(text), 14, -1):
        at_boundary = end == len(text) or not (text[end].isalnum() and text[end - 1].isalnum())
        if at_boundary and text[end - 1].isalnum() and iban_ok(text[:end]):
            return m.start(), m.start() + end
    return None


def _accept_card(m: re.Match) -> tuple[int, int] | None:
    digits = re.sub(r"\D", "", m.group(0))
    # Issuers' numbers start with 2-6 (Mastercard 2-series, Amex/Diners/JCB, Visa, Mastercard,
    # Discover/UnionPay): a Luhn-valid order number such as 113542617735902 is not a card.
    return m.span() if (13 <= len(digits) <= 19 and digits[0] in "23456"
                        and luhn_ok(digits)) else None


def _accept_phone(m: re.Match) -> tuple[int, int] | None:
    group = "id" if "id" in m.re.groupindex else 0  # after "call me at", only the number goes
    digits = re.sub(r"\D", "", m.group(group))
    return m.span(group) if 7 <= len(digits) <= 15 else None


def _accept_id(m: re.Match) -> tuple[int, int] | None:
    start, end = m.start("id"), m.end("id")
    return None if _is_amount(m.string, start, end) else (start, end)


def _accept_bare_number(m: re.Match) -> tuple[int, int] | None:
    return None if _is_amount(m.string, m.start(), m.end()) else m.span()


def _accept_address(m: re.Match) -> tuple[int, int] | None:
    words = m.group("name").lower().split()
    return None if any(w.strip(".,'") in _STOPWORDS for w in words) else m.span()


_BARE_NUMBER = re.compile(r"(?<![\d.,])\d{6,}(?![\d]|[.,]\d)")

_RULES: list[tuple[re.Pattern, str, Callable | None]] = [
    (_EMAIL, "EMAIL", None),
    (_IBAN, "IBAN", _accept_iban),
    (_TRACKING_CTX, "TRACKING_ID", _accept_id),
    (_TRACKING_FMT, "TRACKING_ID", None),
    (_INVOICE_CTX, "INVOICE_ID", _accept_id),
    (_ORDER_CTX, "ORDER_ID", _accept_id),
    (_HASH_ID, "ORDER_ID", None),
    (_CARD, "CARD", _accept_card),
    (_PHONE_CTX, "PHONE", _accept_phone),
    (_PHONE, "PHONE", _accept_phone),
    (_ADDRESS, "ADDRESS", _accept_address),
    (_ADDRESS_EU, "ADDRESS", None),
    (_PO_BOX, "ADDRESS", None),
    (_BARE_NUMBER, "ORDER_ID", _accept_bare_number),
]


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Return ``text`` with personal data replaced by placeholders, and the count per type.

    Idempotent: placeholders hold no digits or ``@``, so redacting twice changes nothing.
    Non-string input raises ``TypeError`` (the contracts quarantine such rows before this runs).
    """
    if not isinstance(text, str):
        raise TypeError(f"redact() expects a str, got {type(text).__name__}")
    counts: dict[str, int] = {}
    if not _MAYBE_PII.search(text):
        return text, counts
    for pattern, kind, accept in _RULES:
        text = _sub(pattern, kind, text, counts, accept)
    return text, counts
