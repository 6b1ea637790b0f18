"""The model card: why a version was or was not promoted, in Markdown.

The card is the registered version's description (the MLflow UI renders it), so a reviewer needs
no other page: the gate, the golden-set metrics, the lineage, the paired comparison and the
per-intent F1 against the champion, with links to the confusion matrix and the full card. The
sections run from most to least needed, so :func:`fit_description` cuts from the end.
"""

from __future__ import annotations

from models.evaluate import EvalResult
from models.gate import GateDecision

DESCRIPTION_LIMIT = 5000  # MLflow's SQL store keeps a model-version description in VARCHAR(5000)
F1_CHANGE = 0.01  # per-intent F1 changes smaller than this are left out of the card's table
LOWEST_INTENTS = 10  # with no champion to compare with, the card lists the lowest-F1 intents


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _cell(text: object) -> str:
    """A Markdown table cell: a label may hold any character, ``|`` and newlines included."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_card(name: str, version: str, decision: GateDecision, results: dict[str, EvalResult],
                meta: dict, history: list[dict], links: dict[str, str] | None = None,
                collab_lines: list[str] | None = None) -> str:
    """Markdown: decision, links, every gate check, golden-set metrics, the end-cloud collaboration
    (``collab_lines``: calibration, deferral, out of scope, policy), lineage, the paired comparison,
    per-intent F1 against the champion, promotion history.

    ``links`` (label -> Markdown, e.g. the confusion matrix) are listed under the decision.
    """
    lines = [f"# {name} v{version}", "",
             f"**Gate: {'PASS' if decision.passed else 'FAIL'}** — {_cell(decision.reason())}", ""]
    lines += [f"- {k}: {v}" for k, v in (links or {}).items()]
    lines += ["", "## Gate checks", "", "| check | value | threshold | verdict | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c.name} | {_fmt(c.value)} | {c.op} {_fmt(c.threshold)} | {'pass' if c.passed else '**FAIL**'} "
              f"| {_cell(c.detail)} |" for c in decision.checks]
    if results:
        lines += ["", "## Golden set", "",
                  "| model | accuracy | macro-F1 | agreement w/ teacher | size MB | p50 ms | p95 ms |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(r.accuracy)} | {_fmt(r.macro_f1)} | {_fmt(r.agreement_with_teacher)} | "
                  f"{_fmt(r.size_mb, 2)} | {_fmt(r.p50_ms, 2)} | {_fmt(r.p95_ms, 2)} |" for k, r in results.items()]
    lines += list(collab_lines or [])
    lines += ["", "## Lineage", ""] + [f"- {k}: `{_cell(v)}`" for k, v in meta.items() if k != "collab"]
    lines += comparison_lines(decision.comparison)
    lines += per_intent_lines(results)
    lines += ["", "## Promotion history", ""]
    lines += history_lines(history)
    return "\n".join(lines) + "\n"


def per_intent_lines(results: dict[str, EvalResult], min_change: float = F1_CHANGE) -> list[str]:
    """Per-intent F1, candidate against champion: the intents that changed by ``min_change`` or
    more, worst first; with no champion, the candidate's lowest intents."""
    cand, champ = results.get("candidate"), results.get("champion")
    if cand is None:
        return []
    if champ is None:
        low = sorted(cand.per_intent_f1.items(), key=lambda kv: kv[1])[:LOWEST_INTENTS]
        return ["", f"## Per-intent F1 (no champion at gate time: the lowest {len(low)})", "",
                "| intent | F1 |", "|---|---|"] + [f"| {_cell(k)} | {v:.3f} |" for k, v in low]
    deltas = {k: (champ.per_intent_f1.get(k), v) for k, v in cand.per_intent_f1.items()}
    changed = sorted(((k, old, new) for k, (old, new) in deltas.items()
                      if old is None or abs(new - old) >= min_change),
                     key=lambda row: row[2] - (row[1] or 0.0))
    out = ["", "## Per-intent F1 vs champion", "",
           f"{len(changed)} of {len(deltas)} intents changed by {min_change} or more (worst first); "
           "the others are within it.", ""]
    if changed:
        out += ["| intent | champion | candidate | change |", "|---|---|---|---|"]
        out += [f"| {_cell(k)} | {_fmt(old, 3)} | {new:.3f} | {'new' if old is None else f'{new - old:+.3f}'} |"
                for k, old, new in changed]
    return out


def comparison_lines(rows: list[dict]) -> list[str]:
    """Markdown table of the paired candidate-vs-champion slices that changed (overall always)."""
    if not rows:
        return []
    out = ["", "## Candidate vs champion (paired, same golden texts)", "",
           "| slice | n | champion | candidate | effect | worse / better | p (Tarone-adjusted) | 95% CI |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["slice"] != "overall" and not (r["worse"] or r["better"]):
            continue
        out.append(f"| {_cell(r['slice'])} | {r['n']} | {r['champion_acc']:.4f} | {r['candidate_acc']:.4f} | "
                   f"{r['effect']:+.4f} | {r['worse']} / {r['better']} | {r['p_adjusted']:.3g} | "
                   f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] |")
    return out


def history_lines(history: list[dict]) -> list[str]:
    """Markdown bullets, oldest first: when, what, from → to, who, why (and any gate override)."""
    def v(x) -> str:
        return f"v{x}" if x else "—"

    return [f"- {h.get('at')}: **{h.get('action')}** {v(h.get('from'))} → {v(h.get('to'))} by {h.get('by')}: "
            f"{h.get('why')}{' (**failed gate overridden**)' if h.get('override_failed_gate') else ''}"
            for h in history] or ["- none yet"]


def fit_description(card: str, full_card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``card`` when it fits in ``limit`` characters, else its first whole lines and a note that
    names ``full_card`` (where the whole card is)."""
    if len(card) <= limit:
        return card
    note = f"\n\n---\n*Cut to the registry's {limit}-character limit: the whole card is {full_card}.*\n"
    if len(note) >= limit:
        raise ValueError(f"the note alone is {len(note)} characters, over the limit of {limit}")
    head = card[:limit - len(note)]
    return head[:head.rfind("\n") + 1 if "\n" in head else len(head)].rstrip() + note
