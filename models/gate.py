"""The promotion gate: every check with its value, threshold and verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeloop.config import GateConfig
from models.evaluate import EvalResult


@dataclass
class Check:
    """One gate check: ``value <op> threshold`` must hold."""

    name: str
    value: float | None
    threshold: float | None
    op: str  # ">=" or "<="
    passed: bool
    detail: str = ""

    def line(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4f}"
        t = "n/a" if self.threshold is None else f"{self.threshold:.4f}"
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {v} {self.op} {t} {self.detail}".rstrip()


@dataclass
class GateDecision:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    #: Candidate vs champion per slice (overall, then each intent): effect, p, adjusted p, CI, one-sided bound.
    comparison: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def reason(self) -> str:
        if self.passed:
            return "all checks passed"
        return "; ".join(f"{c.name} {c.value if c.value is None else round(c.value, 4)} "
                         f"{'<' if c.op == '>=' else '>'} {c.threshold}{' (' + c.detail + ')' if c.detail else ''}"
                         for c in self.failed)

    def tags(self) -> dict[str, str]:
        """Model-version tags: the decision and every check's value, threshold and verdict."""
        out = {"gate.decision": "pass" if self.passed else "fail", "gate.reason": self.reason()[:5000]}
        for c in self.checks:
            out[f"gate.{c.name}"] = (f"{'pass' if c.passed else 'fail'} value={c.value} {c.op} "
                                     f"threshold={c.threshold}{' ' + c.detail if c.detail else ''}")[:5000]
        return out

    def to_dict(self) -> dict:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks], "comparison": self.comparison}


def _check(name: str, value: float | None, threshold: float | None, op: str, detail: str = "") -> Check:
    if value is None or threshold is None:
        return Check(name, value, threshold, op, False, detail or "not measured")
    ok = value >= threshold if op == ">=" else value <= threshold
    return Check(name, float(value), float(threshold), op, bool(ok), detail)


def champion_checks(candidate: EvalResult, champion: EvalResult, cfg: GateConfig) -> tuple[list[Check], list[dict]]:
    """No regression vs the champion, paired on the same golden texts, overall and per intent.

    Overall, a check fails only when the one-sided upper confidence bound of the accuracy
    difference lies below ``-min_regression`` (the data show a drop larger than that); per
    intent, for a drop that is significant (exact McNemar, Tarone-corrected across intents) and at
    least ``min_intent_regression``. Noise between equally good models passes
    (:mod:`models.significance`). Returns the two checks and the per-slice rows for the card.
    """
    from models.significance import compare_paired, material_drop, regressions

    if candidate.gold != champion.gold or not candidate.gold:
        return [Check("no_regression_vs_champion", None, None, ">=", False,
                      "candidate and champion were not evaluated on the same golden texts")], []
    overall, intents = compare_paired(candidate.gold, champion.predictions, candidate.predictions,
                                      resamples=cfg.bootstrap_resamples, alpha=cfg.alpha)
    level = round(100 * (1 - cfg.alpha))
    checks = [Check("no_regression_overall", overall.bound_high, -cfg.min_regression, ">=",
                    not material_drop(overall, cfg.min_regression),
                    f"one-sided {level}% upper bound of the accuracy change (observed {overall.effect:+.4f}, "
                    f"95% CI [{overall.ci_low:+.4f}, {overall.ci_high:+.4f}], McNemar p={overall.p_value:.3g}, "
                    f"{overall.worse} worse / {overall.better} better of {overall.n})")]
    bad = regressions(intents, cfg.alpha, cfg.min_intent_regression)
    worst = min(intents, key=lambda r: (r.p_adjusted, r.p_value)) if intents else None
    detail = ("regressed: " + "; ".join(f"{r.slice} {r.effect:+.3f} (n={r.n}, p_adj={r.p_adjusted:.2g})" for r in bad)
              if bad else f"most significant drop: {worst.slice} {worst.effect:+.3f} (n={worst.n}, "
              f"p={worst.p_value:.2g}, p_adj={worst.p_adjusted:.2g})" if worst else "")
    checks.append(Check("no_regression_per_intent", float(len(bad)), 0.0, "<=", not bad,
                        f"{detail}; block needs p_adj (Tarone) < {cfg.alpha} and a drop >= {cfg.min_intent_regression}"))
    return checks, [r.to_dict() for r in [overall, *intents]]


#: Behaviour rates (models/behaviour.py) the gate checks, with the GateConfig field of each floor.
BEHAVIOUR_FLOORS = {"invariance": "min_invariance", "functionality": "min_functionality",
                    "directional": "min_directional"}


def run_gate(candidate: EvalResult, teacher: EvalResult, champion: EvalResult | None, cfg: GateConfig,
             contracts_ok: bool = True, mechanical: tuple[bool, str] | None = None,
             behaviour: dict[str, float | None] | None = None, extra: list[Check] | None = None) -> GateDecision:
    """Decide whether ``candidate`` may replace ``champion`` (None on the first night).

    ``mechanical`` is the fresh-process bundle check (ok, detail); ``behaviour`` the candidate's
    behaviour pass rates (``invariance``, ``functionality``, ``directional``). Either, when
    given, adds its checks. ``extra``: checks measured elsewhere (the collaboration step's
    coverage and out-of-scope recall, :meth:`models.collab_night.CollabNight.checks`).
    """
    checks = [
        _check("contracts_passed", 1.0 if contracts_ok else 0.0, 1.0, ">="),
        _check("accuracy_floor", candidate.accuracy, cfg.min_accuracy, ">="),
        _check("macro_f1_floor", candidate.macro_f1, cfg.min_macro_f1, ">="),
        _check("teacher_retention", candidate.accuracy / teacher.accuracy if teacher.accuracy else 0.0,
               cfg.min_teacher_retention, ">=", f"student {candidate.accuracy:.4f} / teacher {teacher.accuracy:.4f}"),
        _check("bundle_size_mb", candidate.size_mb, cfg.max_bundle_mb, "<="),
        _check("p95_latency_ms", candidate.p95_ms, cfg.max_p95_ms, "<="),
    ]
    comparison: list[dict] = []
    if champion is not None:
        paired, comparison = champion_checks(candidate, champion, cfg)
        checks += paired
    if mechanical is not None:
        ok, detail = mechanical
        checks.append(Check("bundle_loads_fresh_process", 1.0 if ok else 0.0, 1.0, ">=", ok, detail))
    if behaviour is not None:
        checks += [_check(f"behaviour_{name}", behaviour.get(name), getattr(cfg, floor), ">=")
                   for name, floor in BEHAVIOUR_FLOORS.items()]
    checks += list(extra or [])
    return GateDecision(all(c.passed for c in checks), checks, comparison)


def decide(results: dict[str, EvalResult], cfg: GateConfig, *, contracts_ok: bool, edge_dir: str | Path,
           smoke_texts: list[str], behaviour: dict[str, float | None] | None = None,
           extra: list[Check] | None = None) -> GateDecision:
    """The night's gate: :func:`run_gate` on the evaluation (and the ``extra`` checks), with the
    fresh-process check of the candidate's edge folder on ``smoke_texts`` (expected: what the
    folder answers in this process)."""
    from edge.predictor import OnnxPredictor

    expected = [label for label, _ in OnnxPredictor(edge_dir).predict(smoke_texts)]
    mechanical = smoke_in_fresh_process(edge_dir, smoke_texts, expected)
    return run_gate(results["candidate"], results["teacher"], results.get("champion"), cfg,
                    contracts_ok=contracts_ok, mechanical=mechanical, behaviour=behaviour, extra=extra)


def smoke_in_fresh_process(folder: str | Path, texts: list[str], expected: list[str],
                           timeout_s: float = 120) -> tuple[bool, str]:
    """Load the edge folder in a new interpreter and check it answers ``texts`` with ``expected``."""
    code = ("import json,sys; from edge.predictor import OnnxPredictor; "
            "p=OnnxPredictor(sys.argv[1]); t=json.load(sys.stdin); "
            "print(json.dumps([l for l,_ in p.predict(t)]))")
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run([sys.executable, "-c", code, str(folder)], input=json.dumps(texts), text=True,
                             capture_output=True, timeout=timeout_s, cwd=repo)
    except subprocess.TimeoutExpired:
        return False, f"no answer within {timeout_s}s"
    if out.returncode != 0:
        return False, f"failed to load: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}"
    got = json.loads(out.stdout.strip().splitlines()[-1])
    wrong = sum(a != b for a, b in zip(got, expected))
    return wrong == 0, f"{len(texts) - wrong}/{len(texts)} smoke answers as expected"
