"""Contract ``teacher_labels@1``: soft labels written by the teacher (``message_id, probs, label, confidence``)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from data_contracts.checks import check_args, first_occurrence, in_set, present, row_count, schema, strings, \
    validate_rows
from data_contracts.gx_engine import Check, run
from data_contracts.gx_results import collect
from data_contracts.gx_values import as_vector_column
from data_contracts.report import ContractResult, short

LABEL_COLUMNS = ["message_id", "probs", "label", "confidence"]
# A label must be this likely to be missing by chance, or less, before its absence fails a batch.
ABSENT_BY_CHANCE = 1e-3
_PROBS = "a list of {n_labels} finite probabilities in [0, 1], one per label"


def _probs_sum(value: Any) -> str:
    return short(float(np.sum(np.asarray(value, dtype=float))))


def _row_checks() -> list[Check]:
    return [
        row_count(),
        strings("message_id"),
        first_occurrence("message_id", "one label row per message (duplicate message_id: the first row is kept)"),
        Check("probs_shape", "probs", _PROBS, lambda E: E.ExpectColumnValuesToBeProbabilityVectors(
            column="probs", length={"$PARAMETER": "n_labels"})),
        Check("probs_sum", "probs", "probabilities summing to 1 (tolerance {tolerance})", got=_probs_sum,
              expectation=lambda E: E.ExpectColumnVectorSumsToBeBetween(
                  column="probs", length={"$PARAMETER": "n_labels"}, min_value={"$PARAMETER": "sum_min"},
                  max_value={"$PARAMETER": "sum_max"})),
        Check("confidence_type", "confidence", "a number", got="type",
              expectation=lambda E: E.ExpectColumnValuesToBeRealNumbers(column="confidence")),
        Check("confidence_range", "confidence", "a number in [0, 1]",
              lambda E: E.ExpectColumnNumbersToBeBetween(column="confidence", min_value=0, max_value=1)),
        present("label", "a label name (string)"),  # any other value fails the label set below
        in_set("label", "labels", "one of the configured labels"),
        Check("label_argmax", "label", "the label with the highest probability in probs (probs ordered like labels)",
              lambda E: E.ExpectMulticolumnLabelToBeArgmax(column_list=["label", "probs"],
                                                           labels={"$PARAMETER": "labels"})),
    ]


def _batch_checks(drift: bool) -> list[Check]:
    checks = [
        Check("mean_confidence", "confidence", "a mean confidence of at least {min_mean_confidence}", level="batch",
              expectation=lambda E: E.ExpectColumnMeanToBeBetween(
                  column="confidence", min_value={"$PARAMETER": "min_mean_confidence"})),
        Check("labels_present", "label", "every label likely enough to appear in a batch this size", level="batch",
              expectation=lambda E: E.ExpectColumnDistinctValuesToContainSet(
                  column="label", value_set={"$PARAMETER": "expected_labels"})),
    ]
    if drift:
        checks.append(Check(
            "label_drift", "label distribution", "a total variation distance from the seed distribution of at most "
            "{max_drift} (over {rows} rows)", got=lambda v: f"{v:.3f}", level="batch",
            expectation=lambda E: E.ExpectColumnTotalVariationDistanceToBeAtMost(
                column="label", reference={"$PARAMETER": "reference"}, max_value={"$PARAMETER": "max_drift"})))
    return checks


def expected_labels(labels: list[str], distribution: dict[str, float] | None, n: int,
                    alpha: float = ABSENT_BY_CHANCE) -> list[str]:
    """Labels whose absence from ``n`` rows drawn from ``distribution`` has chance below ``alpha``.

    ``(1 - p)^n < alpha``; with no distribution every label has ``p = 1/K``. For 27 balanced
    intents this requires every intent from 184 rows up; a label with p = 0 is never required.
    """
    if n <= 0 or not labels:
        return []
    probs = _distribution(labels, distribution)
    return [lab for lab in labels if probs[lab] > 0 and (1 - probs[lab]) ** n < alpha]


def _distribution(labels: list[str], distribution: dict[str, float] | None) -> dict[str, float]:
    if not distribution:
        return {lab: 1 / len(labels) for lab in labels}
    total = sum(max(float(distribution.get(lab, 0.0)), 0.0) for lab in labels)
    if total <= 0:
        raise ValueError("seed_distribution has no mass on the configured labels")
    return {lab: max(float(distribution.get(lab, 0.0)), 0.0) / total for lab in labels}


def total_variation(observed: pd.Series, labels: list[str], reference: dict[str, float]) -> float:
    """Total variation distance (0..1) between the label frequencies in ``observed`` and ``reference``."""
    counts = observed.value_counts(normalize=True)
    return 0.5 * sum(abs(float(counts.get(lab, 0.0)) - reference.get(lab, 0.0)) for lab in labels)


def validate_teacher_labels(df: pd.DataFrame, labels: list[str],
                            seed_distribution: dict[str, float] | None, *,
                            max_drift: float = 0.25, min_mean_confidence: float = 0.5,
                            prob_tolerance: float = 1e-3, min_rows: int = 1,
                            drift_min_rows: int | None = None) -> ContractResult:
    """Contract ``teacher_labels@1`` for soft labels (``message_id, probs, label, confidence``).

    Row level: unique non-empty id; ``probs`` a list of ``len(labels)`` finite values in [0, 1]
    ordered like ``labels`` that sums to 1 (± ``prob_tolerance``); ``confidence`` a number in
    [0, 1]; ``label`` in ``labels`` and the argmax of ``probs``.

    Batch level, on the accepted rows:

    * mean confidence >= ``min_mean_confidence`` (a teacher that has lost its footing);
    * drift: total variation distance between the batch's label frequencies and
      ``seed_distribution`` <= ``max_drift``. Sampling noise alone gives about
      ``0.4 * sqrt(K / n)`` (≈0.10 for 27 intents and 400 rows), so the check only runs from
      ``drift_min_rows`` accepted rows (default ``5 * K``) and is recorded as skipped below;
    * presence: every label whose absence would be a < 1e-3 chance event under the seed
      distribution (``(1 - p)^n < 0.001``, see :func:`expected_labels`) must appear. Small
      batches are not expected to contain every intent; large ones are.
    """
    contract = "teacher_labels@1"
    labels = list(labels)
    check_args(df, labels, min_rows=min_rows)
    if not labels:
        raise ValueError("labels must not be empty")
    if not (0 <= max_drift <= 1) or not (0 <= min_mean_confidence <= 1) or prob_tolerance <= 0:
        raise ValueError("max_drift and min_mean_confidence must be in [0, 1]; prob_tolerance > 0")
    reference = _distribution(labels, seed_distribution)
    early, schema_docs = schema(contract, df, LABEL_COLUMNS)
    if early is not None:
        return early
    drift_floor = drift_min_rows if drift_min_rows is not None else 5 * len(labels)
    params = {"min_rows": min_rows, "labels": labels, "sum_min": 1 - prob_tolerance, "sum_max": 1 + prob_tolerance,
              "n_labels": len(labels), "tolerance": prob_tolerance}
    batch_level = partial(_teacher_batch, labels=labels, reference=reference, max_drift=max_drift,
                          min_mean_confidence=min_mean_confidence, drift_floor=drift_floor)
    return validate_rows(contract, df, _row_checks(), params, min_rows, batch_level, docs=[schema_docs],
                         gx_view=_gx_view(df, len(labels)))


def _gx_view(df: pd.DataFrame, n_labels: int) -> pd.DataFrame:
    """``df`` with uniform probability vectors as one Arrow column (see ``as_vector_column``)."""
    return df.assign(probs=as_vector_column(df["probs"], n_labels))


def _teacher_batch(frame: pd.DataFrame, good: np.ndarray, *, labels: list[str], reference: dict[str, float],
                   max_drift: float, min_mean_confidence: float, drift_floor: int
                   ) -> tuple[list[str], dict, list[dict]]:
    """Batch checks of teacher_labels@1 on the accepted rows: mean confidence, presence, drift."""
    ok_rows = pd.DataFrame({"label": frame["label"].to_numpy(dtype=object)[good],
                            "confidence": frame["confidence"].to_numpy(dtype=object)[good].astype(float)})
    n = len(ok_rows)
    drift: dict[str, Any] = {"metric": "total_variation", "threshold": max_drift, "rows": n, "min_rows": drift_floor}
    if n == 0:
        return [], {"drift": {**drift, "status": "skipped: no accepted rows"}}, []
    # Below drift_floor rows sampling noise alone exceeds the bound: that suite leaves drift out.
    drift_runs = n >= drift_floor
    checks = _batch_checks(drift_runs)
    params = {"min_mean_confidence": min_mean_confidence, "expected_labels": expected_labels(labels, reference, n),
              "reference": reference, "max_drift": max_drift, "rows": n}
    result = run("teacher_labels@1.batch" + ("+drift" if drift_runs else ""), checks, ok_rows, params)
    out = collect(result, checks, ok_rows, params)
    failures = _name_missing_labels(out.batch_failures, params["expected_labels"], ok_rows)
    if drift_runs:
        [tvd] = [er.result.get("observed_value") for er in result.results
                 if er.expectation_config.meta["check"] == "label_drift"]
        drift.update(value=None if tvd is None else round(tvd, 4),
                     status="passed" if tvd is not None and tvd <= max_drift else "failed")
    else:
        drift["status"] = f"skipped: {n} accepted rows < {drift_floor}"
    return failures, {"drift": drift, "validations": [out.gx_json]}, [out.docs_json]


def _name_missing_labels(failures: list[str], required: list[str], rows: pd.DataFrame) -> list[str]:
    """Name the missing labels in the presence failure (GX reports only the observed set)."""
    seen = set(rows["label"].dropna())
    out = []
    for f in failures:
        if f.startswith("label: expected every label"):
            missing = [lab for lab in required if lab not in seen]
            f = f"label: expected every label likely to appear in {len(rows)} rows; missing {missing}"
        out.append(f)
    return out
