"""Behaviour checks in the CheckList style: what a model does, beyond its accuracy on golden texts.

Three kinds, each a plain function of a ``predict_proba`` (texts → probabilities, one column per
label) and the golden texts with their labels; each returns pass rates:

* **invariance**: replacing the numbers in a message (order numbers, quantities), the amounts
  (``$120``, ``45 dollars``) or the name of the person who writes it must not change the intent;
* **minimum functionality**: for every intent, clear templated cases built from its shortest
  golden texts (wrapped in greetings and thanks) are predicted as that intent;
* **directional**: appending a clear text of another intent raises that intent's probability,
  and appending one of the text's own intent does not lower it (beyond a small tolerance).

Everything is derived from the label set and the golden data: no intent name of any data set is
written here. The perturbations are English (the shops' language) and seeded, so a check gives
the same cases for the same golden set.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

PredictProba = Callable[[list[str]], np.ndarray]

#: Writers' names for the name invariance, from several naming traditions.
NAMES = ("Anna Freeman", "Omar Haddad", "Li Wei", "Maria Garcia", "Kwame Mensah", "Priya Nair")
NAME_TEMPLATES = ("{text} - {name}", "Hi, this is {name}. {text}")
#: Wrappers of the minimum-functionality cases: a clear request stays clear with a greeting.
CASE_TEMPLATES = ("{text}", "hello, {text}", "{text}, thanks", "hi there! {text} please")
#: A clear text of the text's own intent may lower that intent's probability by at most this.
DIR_TOLERANCE = 0.05
MAX_EXAMPLES = 5

# A number: digits with optional thousands/decimal separators inside ("1,200.50", "4411-778").
_NUMBER = re.compile(r"\d(?:[\d,.\-]*\d)?")
_CURRENCY_BEFORE = re.compile(r"(?:[$€£¥]|\b(?:usd|eur|gbp)\s?)$", re.I)
_CURRENCY_AFTER = re.compile(r"^\s?(?:dollars?|usd|euros?|eur|pounds?|gbp|bucks|cents?)\b", re.I)


@dataclass
class BehaviourReport:
    """Pass rates per check (None: no case could be built), case counts and failing examples."""

    rates: dict[str, float | None] = field(default_factory=dict)
    cases: dict[str, int] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)

    def metrics(self, prefix: str = "behaviour.") -> dict[str, float]:
        """The measured rates as flat metrics (``behaviour.invariance``, ...)."""
        return {f"{prefix}{k}": float(v) for k, v in self.rates.items() if v is not None}

    def to_dict(self) -> dict:
        return asdict(self)


def _labels_of(predict_proba: PredictProba, labels: list[str], texts: list[str]) -> list[str]:
    if not texts:
        return []
    return [labels[i] for i in np.asarray(predict_proba(texts)).argmax(axis=1)]


def _sample(items: list, n: int, seed: int) -> list:
    return items if len(items) <= n else random.Random(seed).sample(items, n)


def _kind(text: str, m: re.Match) -> str:
    """``amounts`` when the number has a currency on either side, else ``numbers``."""
    if _CURRENCY_BEFORE.search(text[:m.start()]) or _CURRENCY_AFTER.search(text[m.end():]):
        return "amounts"
    return "numbers"


def _new_digits(number: str, rng: random.Random) -> str:
    """Every digit replaced (the first stays non-zero), separators kept: same shape, other value."""
    positions = [i for i, ch in enumerate(number) if ch.isdigit()]
    out = list(number)
    for j, i in enumerate(positions):
        out[i] = str(rng.randint(1 if j == 0 else 0, 9))
    if out == list(number):  # the same value by chance: change the last digit
        out[positions[-1]] = str((int(out[positions[-1]]) + 1) % 10)
    return "".join(out)


def _numbers_of(text: str, kind: str) -> list[re.Match]:
    return [m for m in _NUMBER.finditer(text) if _kind(text, m) == kind]


def replace_numbers(text: str, kind: str, rng: random.Random) -> str | None:
    """``text`` with every number of ``kind`` (``numbers``/``amounts``) given other digits; None if it has none."""
    found = _numbers_of(text, kind)
    if not found:
        return None
    out, last = [], 0
    for m in found:
        out += [text[last:m.start()], _new_digits(m.group(), rng)]
        last = m.end()
    return "".join(out + [text[last:]])


def invariance(predict_proba: PredictProba, labels: list[str], texts: list[str], *, max_texts: int = 200,
               variants: int = 3, seed: int = 0) -> BehaviourReport:
    """Share of texts whose predicted intent survives replaced numbers, amounts and names.

    A numbers/amounts case is a golden text holding one, with ``variants`` random replacements;
    a names case is a golden text signed (in each of :data:`NAME_TEMPLATES`) by each of ``variants``
    names. A case passes when all its variants get the label of the first text of the case.
    ``invariance`` is the pass rate over all cases; ``invariance.<kind>`` per kind.
    """
    rng = random.Random(seed)
    cases: dict[str, list[list[str]]] = {"numbers": [], "amounts": [], "names": []}
    for kind in ("numbers", "amounts"):
        holding = [t for t in texts if _numbers_of(t, kind)]
        for t in _sample(holding, max_texts, seed):
            cases[kind].append([t] + [replace_numbers(t, kind, rng) for _ in range(variants)])
    for t in _sample(list(texts), max_texts, seed):
        names = rng.sample(NAMES, min(variants, len(NAMES)))
        for template in NAME_TEMPLATES:
            cases["names"].append([template.format(text=t, name=n) for n in names])
    flat = [t for group in cases.values() for case in group for t in case]
    predicted = iter(_labels_of(predict_proba, labels, flat))
    report = BehaviourReport()
    passed_all = 0
    for kind, group in cases.items():
        passed = 0
        for case in group:
            got = [next(predicted) for _ in case]
            ok = all(g == got[0] for g in got)
            passed += ok
            if not ok and len(report.failures.setdefault(f"invariance.{kind}", [])) < MAX_EXAMPLES:
                report.failures[f"invariance.{kind}"].append(
                    " | ".join(f"{t!r} → {g}" for t, g in zip(case, got)))
        report.rates[f"invariance.{kind}"] = passed / len(group) if group else None
        report.cases[f"invariance.{kind}"] = len(group)
        passed_all += passed
    n = sum(len(g) for g in cases.values())
    report.rates["invariance"] = passed_all / n if n else None
    report.cases["invariance"] = n
    return report


def clear_cases(texts: list[str], gold: list[str], per_intent: int = 3) -> dict[str, list[str]]:
    """Per intent, its ``per_intent`` shortest distinct golden texts (at least two words when it has such)."""
    by_label: dict[str, list[str]] = {}
    for t, y in zip(texts, gold):
        by_label.setdefault(y, []).append(" ".join(t.split()))
    out = {}
    for y, ts in by_label.items():
        distinct = sorted(set(ts), key=lambda s: (len(s), s))
        worded = [s for s in distinct if len(s.split()) >= 2] or distinct
        out[y] = worded[:per_intent]
    return out


def min_functionality(predict_proba: PredictProba, labels: list[str], texts: list[str], gold: list[str],
                      *, per_intent: int = 3) -> BehaviourReport:
    """Mean over intents of the share of their clear templated cases predicted as that intent.

    ``functionality.worst`` is the lowest intent's share; the failures name the intents.
    """
    cases = [(template.format(text=t), y) for y, ts in clear_cases(texts, gold, per_intent).items()
             for t in ts for template in CASE_TEMPLATES if y in labels]
    got = _labels_of(predict_proba, labels, [c for c, _ in cases])
    per_label: dict[str, list[bool]] = {}
    report = BehaviourReport()
    for (case, y), g in zip(cases, got):
        per_label.setdefault(y, []).append(g == y)
        if g != y and len(report.failures.setdefault("functionality", [])) < MAX_EXAMPLES:
            report.failures["functionality"].append(f"{case!r}: expected {y}, got {g}")
    shares = {y: sum(v) / len(v) for y, v in per_label.items()}
    report.rates["functionality"] = float(np.mean(list(shares.values()))) if shares else None
    report.rates["functionality.worst"] = min(shares.values()) if shares else None
    report.cases["functionality"] = len(cases)
    return report


def directional(predict_proba: PredictProba, labels: list[str], texts: list[str], gold: list[str], *,
                max_texts: int = 200, seed: int = 0) -> BehaviourReport:
    """Share of cases where appending a clear text moves the probabilities the expected way.

    For a golden text of intent y: appending the clearest text of another intent z (picked at
    random) must raise P(z); appending the clearest text of y must not lower P(y) by more than
    :data:`DIR_TOLERANCE`.
    """
    clear = {y: ts[0] for y, ts in clear_cases(texts, gold, 1).items() if y in labels}
    index = {y: i for i, y in enumerate(labels)}
    rng = random.Random(seed)
    pairs = [(t, y) for t, y in zip(texts, gold) if y in clear]
    cases = []  # (base text, appended text, intent whose probability is watched, must rise)
    for t, y in _sample(pairs, max_texts, seed):
        others = [z for z in clear if z != y]
        if others:
            z = rng.choice(others)
            cases.append((t, f"{t}. {clear[z]}", z, True))
        cases.append((t, f"{t}. {clear[y]}", y, False))
    report = BehaviourReport()
    if cases:
        probs = np.asarray(predict_proba([c[0] for c in cases] + [c[1] for c in cases]))
        before, after = probs[:len(cases)], probs[len(cases):]
        passed = 0
        for i, (base, moved, target, rise) in enumerate(cases):
            b, a = float(before[i, index[target]]), float(after[i, index[target]])
            ok = a > b if rise else a >= b - DIR_TOLERANCE
            passed += ok
            if not ok and len(report.failures.setdefault("directional", [])) < MAX_EXAMPLES:
                report.failures["directional"].append(f"{moved!r}: P({target}) {b:.3f} → {a:.3f}")
        report.rates["directional"] = passed / len(cases)
    else:
        report.rates["directional"] = None
    report.cases["directional"] = len(cases)
    return report


def run_checks(predict_proba: PredictProba, labels: list[str], texts: list[str], gold: list[str], *,
               max_texts: int = 200, seed: int = 0) -> BehaviourReport:
    """All three checks on ``texts``/``gold`` (the golden set as the device sees it), one report."""
    if len(texts) != len(gold):
        raise ValueError(f"{len(texts)} texts but {len(gold)} labels")
    report = BehaviourReport()
    for part in (invariance(predict_proba, labels, texts, max_texts=max_texts, seed=seed),
                 min_functionality(predict_proba, labels, texts, gold),
                 directional(predict_proba, labels, texts, gold, max_texts=max_texts, seed=seed)):
        report.rates.update(part.rates)
        report.cases.update(part.cases)
        report.failures.update(part.failures)
    return report
