"""The night's end-cloud collaboration step: calibrate the candidate, choose its policy, check it.

After evaluation the night

1. fits the candidate's temperature on the calibration slice (:mod:`models.collab_data`), with
   ECE and NLL before and after (:func:`models.calibration.calibrate`);
2. chooses the deferral threshold on golden calibrated confidences at ``collab.target_accuracy``
   (:func:`models.deferral.choose_threshold`) and measures the champion's coverage the same way,
   with the champion's own temperature;
3. chooses the out-of-scope cut on the val list against the calibration slice (golden when the
   slice is too small) at ``collab.oos_max_accuracy_loss``, and measures OOS recall on the test list;
4. returns the :class:`~edge.collab.CollabPolicy` the bundle ships, the gate's checks
   (``coverage_at_target``, ``oos_recall``), MLflow metrics and the model card's lines.

Scores are computed from the shipped ONNX model's raw logits, as a device computes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.collab import CollabPolicy, calibrated_probs, oos_score
from edgeloop.config import CollabConfig
from models.calibration import CalibrationReport, calibrate
from models.collab_data import OutOfScope
from models.deferral import DeferralChoice, OosChoice, choose_oos_threshold, choose_threshold, make_policy
from models.gate import Check

#: Fewer calibration-slice messages than this: no temperature is fitted (T stays 1) and the
#: out-of-scope cut is chosen against golden instead.
MIN_CALIBRATION_ROWS = 30


def edge_logits(predictor, texts: list[str]) -> np.ndarray:
    """Raw logits of an :class:`edge.predictor.OnnxPredictor`'s model for redacted ``texts``: the
    device's own pass (:func:`edge.patch.base_outputs`, batched as ``predict_proba`` batches)."""
    from edge.patch import base_outputs

    return base_outputs(predictor, list(texts))[0]


@dataclass
class CollabNight:
    """What the collaboration step chose and measured for one candidate."""

    policy: CollabPolicy
    calibration: CalibrationReport | None
    calibration_note: str
    deferral: DeferralChoice
    champion: dict | None = None  # version, temperature, coverage, threshold
    oos: OosChoice | None = None
    oos_selected_on: str = ""
    oos_test_recall: float | None = None
    n_oos_val: int = 0
    n_oos_test: int = 0
    golden_rejected: float | None = None  # golden in-scope share below the cut
    max_coverage_drop: float = 0.0
    min_oos_recall: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics (``calibration.*``, ``deferral.*``, ``oos.*``)."""
        out: dict[str, float | None] = {"calibration.temperature": self.policy.temperature,
                                        "deferral.coverage": self.deferral.coverage,
                                        "deferral.threshold": self.deferral.threshold,
                                        "deferral.answered_accuracy": self.deferral.answered_accuracy}
        if self.calibration is not None:
            out.update({f"calibration.{k}": v for k, v in self.calibration.to_dict().items()
                        if k not in ("temperature", "n_bins")})
        if self.champion is not None:
            out["deferral.champion_coverage"] = self.champion["coverage"]
        if self.oos is not None:
            out.update({"oos.threshold": self.oos.threshold, "oos.val_recall": self.oos.oos_recall,
                        "oos.val_auroc": self.oos.auroc, "oos.in_scope_rejected": self.oos.in_scope_rejected,
                        "oos.test_recall": self.oos_test_recall, "oos.golden_in_scope_rejected": self.golden_rejected,
                        "oos.n_test": self.n_oos_test})
        return {k: float(v) for k, v in out.items() if v is not None}

    def checks(self) -> list[Check]:
        """The gate's checks: coverage at the target vs the champion's, OOS recall at the cut."""
        d = self.deferral
        at = (f"threshold {d.threshold:.4f}" if d.threshold is not None else "no threshold reaches it")
        detail = f"target accuracy {d.target_accuracy} on {d.n} golden texts, T={self.policy.temperature:.3f}: {at}"
        if self.champion is None:
            checks = [Check("coverage_at_target", d.coverage, 0.0, ">=", True, f"{detail}; no champion to compare with")]
        else:
            c = self.champion
            floor = c["coverage"] - self.max_coverage_drop
            checks = [Check("coverage_at_target", d.coverage, floor, ">=", bool(d.coverage >= floor - 1e-12),
                            f"{detail}; champion v{c['version']} {c['coverage']:.4f} (T={c['temperature']:.3f}) "
                            f"minus collab.max_coverage_drop {self.max_coverage_drop}")]
        if self.oos is None:
            checks.append(Check("oos_recall", None, None, ">=", True, "not configured (collab.oos_path is empty)"))
        else:
            checks.append(Check("oos_recall", self.oos_test_recall, self.min_oos_recall, ">=",
                                bool(self.oos_test_recall >= self.min_oos_recall),
                                f"{self.policy.oos_score} < {self.oos.threshold:.4f} rejects, on {self.n_oos_test} "
                                f"oos_test texts; cut chosen on {self.n_oos_val} oos_val vs the {self.oos_selected_on}"))
        return checks

    def card_lines(self) -> list[str]:
        """The model card's section on calibration, deferral and out-of-scope rejection."""
        lines = ["", "## End-cloud collaboration", ""]
        if self.calibration is not None:
            c = self.calibration
            lines.append(f"- calibration: T = {c.temperature:.4f} on {c.n} calibration-slice messages; "
                         f"ECE {c.ece_before:.4f} → {c.ece_after:.4f}, NLL {c.nll_before:.4f} → {c.nll_after:.4f}")
        else:
            lines.append(f"- calibration: not fitted ({self.calibration_note}); T = 1")
        d = self.deferral
        where = (f"calibrated confidence ≥ {d.threshold:.4f}" if d.threshold is not None
                 else "nowhere (no confidence reaches the target: every in-scope message is deferred)")
        champ = (f"; champion v{self.champion['version']}: {self.champion['coverage']:.4f}" if self.champion else "")
        lines.append(f"- deferral: the device answers at {where} for accuracy {d.target_accuracy} on golden: coverage "
                     f"{d.coverage:.4f}{'' if d.answered_accuracy is None else f', answered accuracy {d.answered_accuracy:.4f}'}"
                     f"{champ}")
        if self.oos is None:
            lines.append("- out of scope: not configured (collab.oos_path is empty): nothing is rejected")
        else:
            o = self.oos
            lines.append(f"- out of scope: reject {self.policy.oos_score} < {o.threshold:.4f} (chosen on {self.n_oos_val} "
                         f"oos_val vs the {self.oos_selected_on} at ≤ {o.max_accuracy_loss} accuracy loss; AUROC "
                         f"{o.auroc:.4f}): oos_test recall {self.oos_test_recall:.4f} (n={self.n_oos_test}), golden "
                         f"in-scope rejected {self.golden_rejected:.4f}")
        lines.append(f"- policy (the bundle's signed manifest, block `collab`): "
                     f"`{json.dumps(self.policy.to_dict(), sort_keys=True)}`")
        return lines

    def summary(self) -> dict:
        """A few figures for the night's summary."""
        return {"temperature": self.policy.temperature, "defer_threshold": self.deferral.threshold,
                "coverage_at_target": round(self.deferral.coverage, 4),
                "oos_threshold": self.policy.oos_threshold,
                "oos_recall": None if self.oos_test_recall is None else round(self.oos_test_recall, 4)}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["policy"] = self.policy.to_dict()
        return out


def _indices(labels: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the known labels, their class indices)."""
    index = {n: i for i, n in enumerate(names)}
    keep = np.array([i for i, y in enumerate(labels) if y in index], dtype=np.int64)
    return keep, np.array([index[labels[i]] for i in keep], dtype=np.int64)


def _deferral(model, golden: tuple[list[str], list[str]], temperature: float, target: float
              ) -> tuple[np.ndarray, np.ndarray, DeferralChoice]:
    """(golden logits, which are right, the threshold choice) of one edge model at ``temperature``."""
    texts, labels = golden
    z = edge_logits(model, texts)
    ok = np.array([model.labels[i] == y for i, y in zip(z.argmax(1), labels)])
    return z, ok, choose_threshold(calibrated_probs(z, temperature).max(1), ok, target)


def collab_step(cfg: CollabConfig, lake, teacher_key: str, golden: tuple[list[str], list[str]],
                candidate_edge: str | Path, champion: tuple[str, str | Path, CollabPolicy | None] | None = None
                ) -> CollabNight:
    """The night's step from its lake: the calibration slice (teacher ``teacher_key``'s labels) and
    the configured out-of-scope lists, then :func:`run_collab`."""
    from models.collab_data import calibration_slice, out_of_scope

    cal = calibration_slice(lake, teacher_key, cfg.calibration_share)
    return run_collab(cfg, (cal["text"].tolist(), cal["label"].tolist()), golden, candidate_edge, champion,
                      out_of_scope(cfg))


def run_collab(cfg: CollabConfig, calibration: tuple[list[str], list[str]], golden: tuple[list[str], list[str]],
               candidate_edge: str | Path, champion: tuple[str, str | Path, CollabPolicy | None] | None = None,
               oos: OutOfScope | None = None) -> CollabNight:
    """Calibrate the candidate at ``candidate_edge`` and choose its policy (see the module docstring).

    ``calibration`` and ``golden`` are (redacted texts, labels); ``champion`` is (version, edge
    folder, its shipped policy or None for a bundle without one, T = 1); ``oos`` the out-of-scope
    lists (None: nothing is rejected).
    """
    from edge.predictor import OnnxPredictor

    model = OnnxPredictor(candidate_edge)
    names = model.labels
    cal_texts, cal_labels = calibration
    keep, y_cal = _indices(list(cal_labels), names)
    z_cal = edge_logits(model, [cal_texts[i] for i in keep])
    report, note = None, f"{len(keep)} calibration-slice messages, fewer than {MIN_CALIBRATION_ROWS}"
    if len(keep) >= MIN_CALIBRATION_ROWS:
        report, note = calibrate(z_cal, y_cal), ""
    temperature = report.temperature if report is not None else 1.0

    z_gold, ok_gold, deferral = _deferral(model, golden, temperature, cfg.target_accuracy)

    champ = None
    if champion is not None:
        version, edge, policy = champion
        t_c = policy.temperature if policy is not None else 1.0
        chosen = _deferral(OnnxPredictor(edge), golden, t_c, cfg.target_accuracy)[2]
        champ = {"version": version, "temperature": t_c, "coverage": chosen.coverage, "threshold": chosen.threshold}

    result = CollabNight(make_policy(temperature, deferral, None, cfg.oos_score), report, note, deferral, champ,
                         max_coverage_drop=cfg.max_coverage_drop, min_oos_recall=cfg.min_oos_recall)
    if oos is not None:
        on_slice = report is not None
        z_in, ok_in = (z_cal, z_cal.argmax(1) == y_cal) if on_slice else (z_gold, ok_gold)
        score = lambda z: oos_score(z, cfg.oos_score, temperature)  # noqa: E731
        choice = choose_oos_threshold(score(z_in), ok_in, score(edge_logits(model, oos.val)), cfg.oos_max_accuracy_loss)
        result.oos, result.n_oos_val, result.n_oos_test = choice, len(oos.val), len(oos.test)
        result.oos_selected_on = (f"{len(z_in)} calibration-slice messages" if on_slice
                                  else f"{len(z_in)} golden texts (calibration slice too small)")
        result.oos_test_recall = float(np.mean(score(edge_logits(model, oos.test)) < choice.threshold))
        result.golden_rejected = float(np.mean(score(z_gold) < choice.threshold))
        result.policy = make_policy(temperature, deferral, choice, cfg.oos_score)
    return result
