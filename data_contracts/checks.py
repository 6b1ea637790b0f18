"""What every contract runs: the schema step, then the row step; and the rules several contracts share.

1. **Schema** (batch level): a GX suite on a zero-row frame with the input's columns
   (``expect_table_columns_to_match_set`` / ``expect_column_to_exist``). A missing or extra column
   stops here: no row can be judged, every row is quarantined with the schema failure as its
   reason and the failure is in ``batch_failures``.
2. **Rows**: one GX Checkpoint validates the input frame itself, values as given (but for the
   stand-ins GX needs, see :func:`data_contracts.gx_engine.run`), with one expectation per rule
   (see :mod:`data_contracts.expectations`); each row-level expectation's
   ``unexpected_index_list`` becomes a reason on those rows ("text: expected at most 2000
   characters; got 1000000 characters"), a wrong-typed value getting its type reason only.
   Table-level expectations and a contract's own batch checks become batch failures.
3. **Accounting**: ``rows_in == rows_accepted + rows_quarantined`` always; a row is never dropped.

Data-dependent values (label set, bounds, "now", model versions) are suite parameters
(``{"$PARAMETER": ...}``), so each suite is built once per process.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from data_contracts.gx_engine import Check, run
from data_contracts.gx_results import collect
from data_contracts.report import ContractResult, finish

EARLIEST = pd.Timestamp("2000-01-01", tz="UTC")
#: Clock skew tolerated between a device or an ingest host and this machine.
CLOCK_SKEW = timedelta(minutes=5)
#: A contract's own batch-level checks: (row-checked frame, mask of accepted rows) ->
#: (failures, extra JSON for ``results_json``, GX results for Data Docs).
BatchChecks = Callable[[pd.DataFrame, np.ndarray], tuple[list[str], dict, list[dict]]]


def row_count() -> Check:
    return Check("row_count", "rows", "at least {min_rows} row(s)",
                 lambda E: E.ExpectTableRowCountToBeBetween(min_value={"$PARAMETER": "min_rows"}), level="batch")


def present(col: str, what: str) -> Check:
    """Not null (None, NaN, NA, NaT); worded as the type rule, since a missing value is not of the type."""
    return Check(f"{col}_present", col, what, lambda E: E.ExpectColumnValuesToNotBeNull(column=col), got="type")


def strings(col: str, what: str = "a non-empty string", non_empty: bool = True) -> Check:
    """``col`` holds strings (and, with ``non_empty``, not blank ones); null is no string."""
    return Check(f"{col}_type", col, what, got="type", expectation=lambda E:
                 E.ExpectColumnValuesToBeStrings(column=col, non_empty=non_empty))


def in_set(col: str, param: str, what: str) -> Check:
    return Check(f"{col}_in_set", col, what,
                 lambda E: E.ExpectColumnValuesToBeInSet(column=col, value_set={"$PARAMETER": param}))


def first_occurrence(col: str, what: str) -> Check:
    return Check(f"{col}_unique", col, what, lambda E: E.ExpectColumnValuesToBeFirstOccurrence(column=col))


def timestamps(col: str) -> list[Check]:
    """``col`` holds timezone-aware times between 2000-01-01 and ``latest`` (now + clock skew)."""
    return [Check(f"{col}_type", col, "a timezone-aware timestamp", got="type",
                  expectation=lambda E: E.ExpectColumnValuesToBeAwareTimestamps(column=col)),
            Check(f"{col}_range", col, "a time between 2000-01-01 and now (plus 5 minutes of clock skew)",
                  lambda E: E.ExpectColumnTimestampsToBeBetween(column=col, min_value={"$PARAMETER": "earliest"},
                                                                max_value={"$PARAMETER": "latest"}))]


def time_bounds(now: datetime | None) -> dict[str, pd.Timestamp]:
    """The ``earliest`` / ``latest`` parameters of :func:`timestamps`."""
    ts = pd.Timestamp(now) if now is not None else pd.Timestamp(datetime.now(timezone.utc))
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return {"earliest": EARLIEST, "latest": ts + CLOCK_SKEW}


def check_args(df: Any, labels: Iterable[str], **bounds: int) -> None:
    """Programming errors (not data errors): raise TypeError/ValueError naming the argument."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"a contract validates a pandas DataFrame, got {type(df).__name__}")
    if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
        raise ValueError("labels must be a list of label names (strings)")
    for name, value in bounds.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if bounds.get("max_chars") is not None and bounds.get("min_chars", 0) > bounds["max_chars"]:
        raise ValueError(f"min_chars ({bounds['min_chars']}) must be <= max_chars ({bounds['max_chars']})")


def schema(contract: str, df: pd.DataFrame, expected: list[str], exact: bool = True,
           suite: str | None = None) -> tuple[ContractResult | None, dict]:
    """Check the columns with GX: (None when they are fine, else the result with every row quarantined
    with the reason; the GX result for Data Docs)."""
    names = [str(c) for c in df.columns]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if exact:
        checks = [Check("columns", "columns", f"exactly the columns {expected}", level="batch", expectation=lambda E:
                        E.ExpectTableColumnsToMatchSet(column_set=expected, exact_match=True))]
    else:
        checks = [Check(f"column_{c}", c, "the column to exist", lambda E, c=c: E.ExpectColumnToExist(column=c),
                        level="batch") for c in expected]
    result = run(f"{suite or contract}.schema", checks, pd.DataFrame(columns=list(dict.fromkeys(names))), {})
    outcome = collect(result, checks, df.iloc[:0])
    failures = []
    if dupes:
        failures.append(f"columns: duplicated column names {dupes}")
    if not result.success:
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in expected] if exact else []
        parts = ([f"missing column(s) {missing}"] if missing else []) + \
                ([f"unexpected column(s) {extra}"] if extra else [])
        failures.append(f"schema: {', '.join(parts) or 'columns do not match'} (expected {expected}, got {names})")
    if not failures:
        return None, outcome.docs_json
    reason = "batch rejected before row checks: " + "; ".join(failures)
    return finish(contract, df, {i: [reason] for i in range(len(df))}, failures,
                  {"validations": [outcome.gx_json]}, [outcome.docs_json]), outcome.docs_json


def validate_rows(contract: str, df: pd.DataFrame, checks: list[Check], params: dict[str, Any], min_rows: int,
                  batch_checks: BatchChecks | None = None, suite: str | None = None,
                  docs: list[dict] | None = None, gx_view: pd.DataFrame | None = None) -> ContractResult:
    """Run the row suite on ``df`` (columns already checked), then the contract's own batch checks.

    ``docs``: GX results of earlier steps (the schema) to show before these in Data Docs;
    ``gx_view``: what GX validates, when not ``df`` itself (fewer columns, or the same values
    typed for speed); its rows must be ``df``'s.
    """
    frame = df if gx_view is None else gx_view
    outcome = collect(run(f"{suite or contract}.rows", checks, frame, params), checks, df, params)
    failures = list(outcome.batch_failures)
    good = np.ones(len(df), dtype=bool)
    if outcome.reasons:
        good[list(outcome.reasons)] = False
    extra_json: dict = {}
    docs = list(docs or []) + [outcome.docs_json]
    if batch_checks is not None:
        more, extra_json, more_docs = batch_checks(df, good)
        failures += more
        docs += more_docs
    if len(df) >= min_rows and int(good.sum()) < min_rows:
        failures.append(f"rows: expected at least {min_rows} accepted row(s); "
                        f"got {int(good.sum())} of {len(df)} after row checks")
    extra_json = {**extra_json, "validations": [outcome.gx_json] + extra_json.get("validations", [])}
    return finish(contract, df, outcome.reasons, failures, extra_json, docs)
