"""Teacher-labeled augmentation of the transfer set: more texts for the student to match.

On a cold start the student sees only the seed and one night's stream: a few texts per intent.
Perturbed copies (typos, dropped or swapped words, other numbers and placeholders, halves of two
messages spliced together) show it the neighbourhood of each text, and the *teacher* labels every
copy (soft labels, no gold): a copy whose meaning changed gets the label its new text deserves,
never the label copied from its source.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable


_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NUMBER = re.compile(r"\d+")
_PLACEHOLDER = re.compile(r"\{[A-Z_]+\}")


def _neighbours(ch: str) -> str:
    for row in _KEYBOARD:
        i = row.find(ch)
        if i >= 0:
            return row[max(0, i - 1):i] + row[i + 1:i + 2]
    return ""


def typo(text: str, rng: random.Random) -> str:
    """One keyboard slip in one word of 4+ letters: swap, drop, double or hit a neighbour key."""
    words = text.split(" ")
    cands = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not cands:
        return text
    i = rng.choice(cands)
    w = words[i]
    j = rng.randrange(1, len(w) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == 1:
        w = w[:j] + w[j + 1:]
    elif kind == 2:
        w = w[:j] + w[j] + w[j:]
    else:
        near = _neighbours(w[j].lower())
        w = w[:j] + (rng.choice(near) if near else w[j]) + w[j + 1:]
    words[i] = w
    return " ".join(words)


def drop_word(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 4:
        return text
    del words[rng.randrange(len(words))]
    return " ".join(words)


def swap_words(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) < 3:
        return text
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def swap_entities(text: str, rng: random.Random, placeholders: list[str]) -> str:
    """Other numbers (same digit count) and other redaction placeholders."""
    out = _NUMBER.sub(lambda m: str(rng.randrange(10 ** (len(m.group()) - 1), 10 ** len(m.group())))
                      if len(m.group()) > 1 else str(rng.randrange(10)), text)
    if placeholders:
        out = _PLACEHOLDER.sub(lambda m: rng.choice(placeholders), out)
    return out


def splice(text: str, other: str, rng: random.Random) -> str:
    """The first half of one message and the second half of another."""
    a, b = text.split(), other.split()
    if len(a) < 2 or len(b) < 2:
        return text
    return " ".join(a[:rng.randrange(1, len(a))] + b[rng.randrange(1, len(b)):])


def augment_texts(texts: list[str], copies: int, seed: int = 13, max_rows: int | None = None) -> list[str]:
    """``copies`` perturbed versions of each text (at most ``max_rows`` in all), new texts only.

    Deterministic for a given ``seed`` and input order. Copies equal to a source text or to an
    earlier copy are dropped.
    """
    return [text for _, text in augment_pairs(texts, copies, seed, max_rows)]


def augment_pairs(texts: list[str], copies: int, seed: int = 13, max_rows: int | None = None) -> list[tuple[int, str]]:
    """Like :func:`augment_texts`, each copy with the index of the text it was made from."""
    if copies <= 0 or not texts:
        return []
    rng = random.Random(seed)
    placeholders = sorted({p for t in texts for p in _PLACEHOLDER.findall(t)})
    ops: list[Callable[[str], str]] = [
        lambda t: typo(t, rng), lambda t: drop_word(t, rng), lambda t: swap_words(t, rng),
        lambda t: swap_entities(t, rng, placeholders), lambda t: typo(drop_word(t, rng), rng),
        lambda t: splice(t, texts[rng.randrange(len(texts))], rng)]
    seen = set(texts)
    order = list(range(len(texts)))
    rng.shuffle(order)
    out: list[tuple[int, str]] = []
    limit = max_rows if max_rows is not None else copies * len(texts)
    for _ in range(copies):
        for i in order:
            if len(out) >= limit:
                return out
            new = rng.choice(ops)(texts[i]).strip()
            if new and new not in seen:
                seen.add(new)
                out.append((i, new))
    return out
