"""The model card: why a version was or was not promoted, in Markdown."""

from __future__ import annotations

from models.evaluate import EvalResult
from models.gate import GateDecision


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def render_card(name: str, version: str, decision: GateDecision, results: dict[str, EvalResult],
                meta: dict, history: list[dict]) -> str:
    """Markdown: decision, every gate check, metrics side by side, lineage, promotion history."""
    lines = [f"# {name} v{version}", "",
             f"**Gate: {'PASS' if decision.passed else 'FAIL'}** — {decision.reason()}", "",
             "## Gate checks", "", "| check | value | threshold | verdict | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c.name} | {_fmt(c.value)} | {c.op} {_fmt(c.threshold)} | {'pass' if c.passed else 'FAIL'} "
              f"| {c.detail} |" for c in decision.checks]
    lines += comparison_lines(decision.comparison)
    lines += ["", "## Golden set", "", "| model | accuracy | macro-F1 | agreement w/ teacher | size MB | p50 ms | p95 ms |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(r.accuracy)} | {_fmt(r.macro_f1)} | {_fmt(r.agreement_with_teacher)} | "
              f"{_fmt(r.size_mb, 2)} | {_fmt(r.p50_ms, 2)} | {_fmt(r.p95_ms, 2)} |" for k, r in results.items()]
    lines += ["", "## Lineage", ""] + [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += ["", "## Promotion history", ""]
    lines += history_lines(history)
    return "\n".join(lines) + "\n"


def comparison_lines(rows: list[dict]) -> list[str]:
    """Markdown table of the paired candidate-vs-champion slices that changed (overall always)."""
    if not rows:
        return []
    out = ["", "## Candidate vs champion (paired, same golden texts)", "",
           "| slice | n | champion | candidate | effect | worse / better | p (Holm) | 95% CI |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["slice"] != "overall" and not (r["worse"] or r["better"]):
            continue
        out.append(f"| {r['slice']} | {r['n']} | {r['champion_acc']:.4f} | {r['candidate_acc']:.4f} | "
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
