"""Data contracts: Great Expectations suites that split a frame into accepted and quarantined rows.

Every contract runs the same way:

1. **Schema** (batch level): a GX suite on a zero-row frame with the input's columns
   (``ExpectTableColumnsToMatchSet`` / ``ExpectColumnToExist``). A missing or extra column stops
   here: no row can be judged, every row is quarantined with the schema failure as its reason and
   the failure is in ``batch_failures``.
2. **Rows**: a *check frame* is built from the input, one row per input row, holding plain,
   hashable values GX can read: the original values where they have the right type (``None``
   where not), and boolean/number helper columns for checks GX has no expectation for (valid
   UTF-8, duplicates, probability sums, Luhn-checked PII...). Lone surrogates are replaced in the
   check frame (GX hashes the frame, and pyarrow refuses them). One GX suite validates it with
   ``result_format=COMPLETE``; each failed expectation's ``unexpected_index_list`` maps back to
   input rows and becomes a human-readable reason ("text: expected at most 2000 characters; got
   1000000 characters"). Table-level expectations (row counts, means, distinct values) become
   batch failures.
3. **Accounting**: ``rows_in == rows_accepted + rows_quarantined`` always; a row is never dropped.

Data-dependent values (label set, bounds, "now", model versions) are GX suite parameters
(``{"$PARAMETER": ...}``), so each suite is built once per process and reused (see :func:`_gx`).
Great Expectations is imported lazily: importing this module does not import it.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from data_contracts.lake import FEEDBACK_LAKE_COLUMNS, MESSAGE_COLUMNS as RAW_COLUMNS
from data_contracts.redaction import find_pii
from edge.feedback import DEVICE_ID_REGEX  # devices issue the ids: one definition, theirs

LABEL_COLUMNS = ["message_id", "probs", "label", "confidence"]
#: The feedback contract judges what the lake keeps of an event, less its key (``event_id``).
FEEDBACK_COLUMNS = [c for c in FEEDBACK_LAKE_COLUMNS if c != "event_id"]
# What GX runs: Python's ``$`` also matches before a trailing newline ("dev-abcd\n"); ``\Z`` does not.
_DEVICE_ID_STRICT = DEVICE_ID_REGEX[:-1] + r"\Z"
EARLIEST = pd.Timestamp("2000-01-01", tz="UTC")
#: Clock skew tolerated between a device or an ingest host and this machine.
CLOCK_SKEW = timedelta(minutes=5)
CONTROL_CHARS = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"  # \t, \n and \r are allowed
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\\s]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A label must be this likely to be missing by chance, or less, before its absence fails a batch.
ABSENT_BY_CHANCE = 1e-3


class ContractError(ValueError):
    """A batch failed its contract; the message lists every batch-level failure."""


@dataclass
class ContractResult:
    """What a contract decided about one frame."""

    contract: str
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    batch_failures: list[str]
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    results_json: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rows_in != self.rows_accepted + self.rows_quarantined:  # a bug here, never data
            raise AssertionError(f"{self.contract}: {self.rows_in} rows in but {self.rows_accepted} "
                                 f"accepted + {self.rows_quarantined} quarantined")

    @property
    def ok(self) -> bool:
        """True when no batch-level check failed (rows may still have been quarantined)."""
        return not self.batch_failures

    def summary(self) -> dict[str, Any]:
        """One row of a summary table (MLflow metrics / Prefect table artifact)."""
        reasons = self.reason_counts()
        return {
            "contract": self.contract,
            "ok": self.ok,
            "rows_in": self.rows_in,
            "rows_accepted": self.rows_accepted,
            "rows_quarantined": self.rows_quarantined,
            "quarantine_rate": round(self.rows_quarantined / self.rows_in, 4) if self.rows_in else 0.0,
            "batch_failures": "; ".join(self.batch_failures),
            "top_reason": reasons.most_common(1)[0][0] if reasons else "",
        }

    def reason_counts(self) -> Counter:
        """How many quarantined rows each single reason applies to (values stripped)."""
        counts: Counter = Counter()
        for reason in self.quarantined.get("reason", pd.Series(dtype=object)):
            for part in str(reason).split(" | "):
                counts[part.split("; got")[0]] += 1
        return counts

    def raise_for_failures(self) -> "ContractResult":
        """Raise :class:`ContractError` when a batch-level check failed; else return self."""
        if self.batch_failures:
            raise ContractError(f"contract {self.contract} failed for this batch "
                                f"({self.rows_in} rows): " + "; ".join(self.batch_failures))
        return self


# ---------------------------------------------------------------------------------------------
# Great Expectations plumbing: one ephemeral context per process, suites built once.
# ---------------------------------------------------------------------------------------------
_GX_LOCK = threading.RLock()  # Prefect may run tasks in threads: one GX run at a time
_GX_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class Check:
    """One expectation plus how to turn its failures into a reason."""

    id: str
    field: str
    expected: str
    expectation: Callable[[Any], Any]  # gxe module -> Expectation (built lazily)
    got: str = "value"                 # what to show: "value", "length", "type", "none", or a column
    level: str = "row"                 # "row" or "batch"


def _gx_context() -> Any:
    if "context" not in _GX_CACHE:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _GX_CACHE["gx"] = gx
        _GX_CACHE["context"] = ctx
    return _GX_CACHE["context"]


def _validation(name: str, checks: list[Check]) -> Any:
    """Get or build the GX ValidationDefinition ``name`` (idempotent within a process).

    The checks of a name must not vary between calls: everything data-dependent is a
    ``$PARAMETER`` given at run time (a varying column name goes into the suite name).
    """
    with _GX_LOCK:
        key = f"vd:{name}"
        if key in _GX_CACHE:
            return _GX_CACHE[key]
        ctx = _gx_context()
        gx = _GX_CACHE["gx"]
        import great_expectations.expectations as gxe

        try:
            source = ctx.data_sources.get("edgeloop_contracts")
        except (KeyError, LookupError, ValueError):
            source = ctx.data_sources.add_pandas("edgeloop_contracts")
        try:
            asset = source.get_asset(name)
        except LookupError:
            asset = source.add_dataframe_asset(name)
        try:
            batch = asset.get_batch_definition("whole")
        except (KeyError, LookupError, ValueError):
            batch = asset.add_batch_definition_whole_dataframe("whole")
        try:
            ctx.suites.delete(name)  # a suite of this name from an older build of the checks
        except Exception:  # noqa: BLE001 - GX raises several types for "not found"
            pass
        suite = ctx.suites.add(gx.ExpectationSuite(name=name))
        for check in checks:
            exp = check.expectation(gxe)
            exp.meta = {"check": check.id, "field": check.field, "expected": check.expected}
            suite.add_expectation(exp)
        try:
            ctx.validation_definitions.delete(name)
        except Exception:  # noqa: BLE001
            pass
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        _GX_CACHE[key] = vd
        return vd


def _run(name: str, checks: list[Check], frame: pd.DataFrame, params: dict[str, Any]) -> Any:
    with _GX_LOCK:
        vd = _validation(name, checks)
        return vd.run(batch_parameters={"dataframe": frame}, expectation_parameters=params,
                      result_format={"result_format": "COMPLETE", "include_unexpected_rows": False})


# ---------------------------------------------------------------------------------------------
# Turning GX results into reasons.
# ---------------------------------------------------------------------------------------------
def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        value = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _got(check: Check, original: pd.DataFrame, helpers: pd.DataFrame | None, pos: int) -> str:
    if check.got == "none":
        return ""
    col = check.field if check.got in ("value", "length", "type") else check.got
    frame = original if col in original.columns else helpers
    if frame is None or col not in frame.columns:
        return ""
    value = frame[col].iat[pos]
    if check.got == "length" and isinstance(value, str):
        return f"; got {len(value)} characters"
    if check.got == "type":
        return f"; got {_short(value)} ({type(value).__name__})"
    return f"; got {_short(value)}"


@dataclass
class _Outcome:
    reasons: dict[int, list[str]]
    batch_failures: list[str]
    gx_json: dict


def _collect(result: Any, checks: list[Check], original: pd.DataFrame,
             params: dict[str, Any] | None = None, helpers: pd.DataFrame | None = None) -> _Outcome:
    by_id = {c.id: c for c in checks}
    reasons: dict[int, list[str]] = {}
    failures: list[str] = []
    n = len(original)
    for er in result.results:
        check = by_id[er.expectation_config.meta["check"]]
        expected = check.expected.format_map(params or {}) if "{" in check.expected else check.expected
        info = er.exception_info or {}
        if info.get("raised_exception"):
            failures.append(f"{check.field}: the check '{expected}' could not run "
                            f"({info.get('exception_message')})")
            continue
        if er.success:
            continue
        res = er.result or {}
        if check.level == "batch":
            failures.append(f"{check.field}: expected {expected}; got "
                            f"{_short(res.get('observed_value'), 200)}")
            continue
        unexpected = res.get("unexpected_index_list") or []
        for pos in unexpected:
            pos = int(pos)
            reasons.setdefault(pos, []).append(
                f"{check.field}: expected {expected}{_got(check, original, helpers, pos)}")
        if check.got == "type" and n and len(unexpected) == n:
            failures.append(f"column {check.field}: no row has the expected type ({expected})")
    return _Outcome(reasons, failures, _trim(result.to_json_dict()))


def _trim(obj: Any, max_list: int = 50, max_str: int = 300) -> Any:
    """Keep GX result JSON small enough to log: long lists and strings are cut (and say so)."""
    if isinstance(obj, dict):
        return {k: _trim(v, max_list, max_str) for k, v in obj.items()}
    if isinstance(obj, list):
        head = [_trim(v, max_list, max_str) for v in obj[:max_list]]
        return head + ([f"... {len(obj) - max_list} more"] if len(obj) > max_list else [])
    if isinstance(obj, str) and len(obj) > max_str:
        return obj[:max_str] + f"... ({len(obj)} characters)"
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _storable(df: pd.DataFrame) -> pd.DataFrame:
    """Quarantined rows must be writable to Parquet: escape lone surrogates in text values."""
    out = df.copy()
    for i in range(out.shape[1]):  # by position: a rejected frame may repeat a column name
        col = out.iloc[:, i]
        if col.dtype == object and col.map(lambda v: isinstance(v, str) and bool(_SURROGATE.search(v))).any():
            out.iloc[:, i] = col.map(lambda v: v.encode("utf-8", "backslashreplace").decode("utf-8")
                                     if isinstance(v, str) else v)
    return out


def _finish(contract: str, df: pd.DataFrame, reasons: dict[int, list[str]],
            batch_failures: list[str], gx_json: dict) -> ContractResult:
    n = len(df)
    bad = np.zeros(n, dtype=bool)
    if reasons:
        bad[list(reasons)] = True
    accepted = df.iloc[np.flatnonzero(~bad)].reset_index(drop=True)
    quarantined = _storable(df.iloc[np.flatnonzero(bad)]).reset_index(drop=True)
    quarantined["reason"] = pd.Series([" | ".join(dict.fromkeys(reasons[i])) for i in np.flatnonzero(bad)],
                                      dtype=object)
    quarantined["contract"] = contract
    gx_json = {"contract": contract, "success": not batch_failures and not reasons,
               "batch_failures": list(batch_failures), **gx_json}
    return ContractResult(contract, accepted, quarantined, list(batch_failures), n,
                          len(accepted), len(quarantined), gx_json)


def _schema(contract: str, df: pd.DataFrame, expected: list[str], exact: bool = True,
            suite: str | None = None) -> ContractResult | None:
    """Check the columns with GX; on failure every row is quarantined with the reason."""
    names = [str(c) for c in df.columns]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if exact:
        checks = [Check("columns", "columns", f"exactly the columns {expected}",
                        lambda gxe: gxe.ExpectTableColumnsToMatchSet(column_set=expected, exact_match=True),
                        level="batch")]
    else:
        checks = [Check(f"column_{c}", c, "the column to exist",
                        lambda gxe, c=c: gxe.ExpectColumnToExist(column=c), level="batch") for c in expected]
    shell = pd.DataFrame(columns=list(dict.fromkeys(names)))
    result = _run(f"{suite or contract}.schema", checks, shell, {})
    failures = []
    if dupes:
        failures.append(f"columns: duplicated column names {dupes}")
    if not result.success:
        missing = [c for c in expected if c not in names]
        extra = [c for c in names if c not in expected] if exact else []
        parts = ([f"missing column(s) {missing}"] if missing else []) + \
                ([f"unexpected column(s) {extra}"] if extra else [])
        failures.append(f"schema: {', '.join(parts) or 'columns do not match'} "
                        f"(expected {expected}, got {names})")
    if not failures:
        return None
    reason = "batch rejected before row checks: " + "; ".join(failures)
    return _finish(contract, df, {i: [reason] for i in range(len(df))}, failures,
                   {"validations": [_trim(result.to_json_dict())]})


# ---------------------------------------------------------------------------------------------
# Helper columns (plain Python over object values: hostile frames hold anything).
# ---------------------------------------------------------------------------------------------
def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    """A check frame: Python lists stay ``object`` columns, so ``None`` stays ``None``."""
    return pd.DataFrame({k: pd.Series(v, dtype=object) if isinstance(v, list) else v
                         for k, v in columns.items()})


def _is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _strings(series: pd.Series) -> list[str | None]:
    """Values that are strings, with lone surrogates replaced; ``None`` for anything else."""
    out = []
    for v in series.tolist():
        if isinstance(v, str):
            out.append(_SURROGATE.sub("\ufffd", v) if _SURROGATE.search(v) else v)
        else:
            out.append(None)
    return out


def _utf8_ok(series: pd.Series) -> list[bool | None]:
    return [None if not isinstance(v, str) else not _SURROGATE.search(v) for v in series.tolist()]


def _timestamps_utc(series: pd.Series) -> pd.Series:
    """UTC timestamps for values that are timezone-aware timestamps; NaT for anything else."""
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").astype("datetime64[us, UTC]").reset_index(drop=True)
    out = []
    for v in series.tolist():
        if isinstance(v, (pd.Timestamp, datetime)) and v.tzinfo is not None:
            try:
                out.append(pd.Timestamp(v).tz_convert("UTC"))
                continue
            except (ValueError, OverflowError):
                pass
        out.append(pd.NaT)
    return pd.Series(pd.to_datetime(out, utc=True), dtype="datetime64[us, UTC]")


def _label_values(series: pd.Series) -> list[Any]:
    """Labels as given (strings stay strings; other non-missing values kept so they fail 'in set')."""
    return [None if _is_missing(v) else (v if isinstance(v, str) else repr(v)) for v in series.tolist()]


def _first_occurrence(keys: list[Any]) -> list[bool | None]:
    seen: set = set()
    out: list[bool | None] = []
    for k in keys:
        if k is None:
            out.append(None)
        elif k in seen:
            out.append(False)
        else:
            seen.add(k)
            out.append(True)
    return out


def _now(now: datetime | None) -> pd.Timestamp:
    ts = pd.Timestamp(now) if now is not None else pd.Timestamp(datetime.now(timezone.utc))
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _time_checks(col: str) -> list[Check]:
    utc = f"{col}_utc"
    return [
        Check(f"{col}_type", col, "a timezone-aware timestamp",
              lambda gxe: gxe.ExpectColumnValuesToNotBeNull(column=utc), got="type"),
        Check(f"{col}_range", col, "a time between 2000-01-01 and now (plus 5 minutes of clock skew)",
              lambda gxe: gxe.ExpectColumnValuesToBeBetween(
                  column=utc, min_value={"$PARAMETER": "earliest"}, max_value={"$PARAMETER": "latest"}),
              got=col),
    ]


def _string_check(col: str, what: str = "a non-empty string") -> Check:
    return Check(f"{col}_type", col, what,
                 lambda gxe: gxe.ExpectColumnValuesToNotBeNull(column=col), got="type")


def _in_set_check(col: str, param: str, what: str) -> Check:
    return Check(f"{col}_in_set", col, what,
                 lambda gxe: gxe.ExpectColumnValuesToBeInSet(column=col, value_set={"$PARAMETER": param}))


def _true_check(id_: str, col: str, field_: str, what: str, got: str = "value") -> Check:
    return Check(id_, field_, what,
                 lambda gxe: gxe.ExpectColumnValuesToBeInSet(column=col, value_set=[True]), got=got)


def _row_count_check() -> Check:
    return Check("row_count", "rows", "at least {min_rows} row(s)",
                 lambda gxe: gxe.ExpectTableRowCountToBeBetween(min_value={"$PARAMETER": "min_rows"}),
                 level="batch")


# ---------------------------------------------------------------------------------------------
# raw_messages@1
# ---------------------------------------------------------------------------------------------
def _raw_checks() -> list[Check]:
    return [
        _row_count_check(),
        _string_check("message_id"),
        _true_check("message_id_unique", "message_id_first", "message_id",
                    "a unique id (duplicate message_id: the first row is kept)"),
        _string_check("text", "a string"),
        _true_check("text_utf8", "text_utf8", "text", "valid UTF-8 (no lone surrogates)"),
        Check("text_controls", "text", "no control characters (\\n, \\r and \\t are allowed)",
              lambda gxe: gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=CONTROL_CHARS)),
        Check("text_empty", "text", "at least {min_chars} visible character(s) (spaces and zero-width "
              "characters do not count)",
              lambda gxe: gxe.ExpectColumnValueLengthsToBeBetween(
                  column="text_visible", min_value={"$PARAMETER": "min_chars"}), got="value"),
        Check("text_length", "text", "at most {max_chars} characters",
              lambda gxe: gxe.ExpectColumnValueLengthsToBeBetween(
                  column="text", max_value={"$PARAMETER": "max_chars"}), got="length"),
        _string_check("source"),
        _in_set_check("gold_label", "labels", "one of the configured labels, or null"),
        *_time_checks("received_at"),
    ]


def validate_raw_messages(df: pd.DataFrame, labels: list[str], *, min_rows: int = 1,
                          max_chars: int = 2000, min_chars: int = 1,
                          now: datetime | None = None) -> ContractResult:
    """Contract ``raw_messages@1`` for lake rows (``message_id, text, source, gold_label, received_at``).

    Row level (quarantined with a reason): id a non-empty string and unique (later duplicates
    quarantined), text a string of valid UTF-8 without control characters (\\n \\t \\r allowed),
    ``min_chars``..``max_chars`` long with at least ``min_chars`` visible characters (zero-width and
    whitespace do not count; emoji, right-to-left scripts and text that looks like SQL or a prompt
    are valid data), source a non-empty string, gold_label null or in ``labels``, received_at a
    timezone-aware timestamp between 2000-01-01 and ``now`` (+5 min skew).
    Batch level: exact column set, at least ``min_rows`` rows in and accepted; a column where no
    row has the right type.
    """
    contract = "raw_messages@1"
    _check_args(df, labels, min_rows=min_rows, min_chars=min_chars, max_chars=max_chars)
    early = _schema(contract, df, RAW_COLUMNS)
    if early is not None:
        return early
    text_strings = _strings(df["text"])
    check = _frame({
        "message_id": [s if s and s.strip() else None for s in _strings(df["message_id"])],
        "text": text_strings,
        "text_utf8": _utf8_ok(df["text"]),
        "text_visible": [None if s is None else _INVISIBLE.sub("", s) for s in text_strings],
        "source": [s if s and s.strip() else None for s in _strings(df["source"])],
        "gold_label": _label_values(df["gold_label"]),
    })
    check["message_id_first"] = _first_occurrence(check["message_id"].tolist())
    check["received_at_utc"] = _timestamps_utc(df["received_at"])
    checks = _raw_checks()
    params = {"min_rows": min_rows, "labels": list(labels), "min_chars": min_chars,
              "max_chars": max_chars, "earliest": EARLIEST, "latest": _now(now) + CLOCK_SKEW}
    return _validate_rows(contract, df, check, checks, params, min_rows)


def _validate_rows(contract: str, df: pd.DataFrame, check: pd.DataFrame, checks: list[Check],
                   params: dict[str, Any], min_rows: int,
                   extra_failures: Callable[[pd.DataFrame, np.ndarray], tuple[list[str], dict]] | None = None
                   ) -> ContractResult:
    result = _run(f"{contract}.rows", checks, check, params)
    outcome = _collect(result, checks, df, params, check)
    failures = list(outcome.batch_failures)
    good = np.ones(len(df), dtype=bool)
    if outcome.reasons:
        good[list(outcome.reasons)] = False
    extra_json: dict = {}
    if extra_failures is not None:
        more, extra_json = extra_failures(check, good)
        failures += more
    if len(df) >= min_rows and int(good.sum()) < min_rows:
        failures.append(f"rows: expected at least {min_rows} accepted row(s); "
                        f"got {int(good.sum())} of {len(df)} after row checks")
    gx_json = {**extra_json, "validations": [outcome.gx_json] + extra_json.get("validations", [])}
    return _finish(contract, df, outcome.reasons, failures, gx_json)


def _check_args(df: Any, labels: Iterable[str], **bounds: int) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"a contract validates a pandas DataFrame, got {type(df).__name__}")
    if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
        raise ValueError("labels must be a list of label names (strings)")
    for name, value in bounds.items():
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if bounds.get("max_chars") is not None and bounds.get("min_chars", 0) > bounds["max_chars"]:
        raise ValueError(f"min_chars ({bounds['min_chars']}) must be <= max_chars ({bounds['max_chars']})")


# ---------------------------------------------------------------------------------------------
# teacher_labels@1
# ---------------------------------------------------------------------------------------------
def _probs_helpers(series: pd.Series, labels: list[str], label_col: list[Any]) -> dict[str, list]:
    k = len(labels)
    shape_ok, sums, argmax_ok = [], [], []
    for value, label in zip(series.tolist(), label_col):
        arr = None
        if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
            try:
                arr = np.asarray(value, dtype=float).reshape(-1)
            except (TypeError, ValueError):
                arr = None
        good = arr is not None and arr.size == k and bool(np.isfinite(arr).all()) \
            and bool(((arr >= 0) & (arr <= 1)).all())
        shape_ok.append(good)
        sums.append(float(arr.sum()) if good else None)
        if good and isinstance(label, str) and label in labels:
            argmax_ok.append(bool(arr[labels.index(label)] >= arr.max() - 1e-9))
        else:
            argmax_ok.append(None)
    return {"probs_ok": shape_ok, "probs_sum": sums, "label_is_argmax": argmax_ok}


def _numbers(series: pd.Series) -> list[float | None]:
    out = []
    for v in series.tolist():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            out.append(None)
        else:
            out.append(None if math.isnan(float(v)) else float(v))
    return out


def _teacher_checks() -> list[Check]:
    return [
        _row_count_check(),
        _string_check("message_id"),
        _true_check("message_id_unique", "message_id_first", "message_id",
                    "one label row per message (duplicate message_id: the first row is kept)"),
        _true_check("probs_shape", "probs_ok", "probs",
                    "a list of {n_labels} finite probabilities in [0, 1], one per label"),
        Check("probs_sum", "probs", "probabilities summing to 1 (tolerance {tolerance})",
              lambda gxe: gxe.ExpectColumnValuesToBeBetween(
                  column="probs_sum", min_value={"$PARAMETER": "sum_min"}, max_value={"$PARAMETER": "sum_max"}),
              got="probs_sum"),
        Check("confidence_type", "confidence", "a number", 
              lambda gxe: gxe.ExpectColumnValuesToNotBeNull(column="confidence"), got="type"),
        Check("confidence_range", "confidence", "a number in [0, 1]",
              lambda gxe: gxe.ExpectColumnValuesToBeBetween(column="confidence", min_value=0, max_value=1)),
        _string_check("label", "a label name (string)"),
        _in_set_check("label", "labels", "one of the configured labels"),
        _true_check("label_argmax", "label_is_argmax", "label",
                    "the label with the highest probability in probs (probs ordered like labels)"),
    ]


def _teacher_batch_checks() -> list[Check]:
    return [
        Check("mean_confidence", "confidence", "a mean confidence of at least {min_mean_confidence}",
              lambda gxe: gxe.ExpectColumnMeanToBeBetween(
                  column="confidence", min_value={"$PARAMETER": "min_mean_confidence"}), level="batch"),
        Check("labels_present", "label", "every label likely enough to appear in a batch this size",
              lambda gxe: gxe.ExpectColumnDistinctValuesToContainSet(
                  column="label", value_set={"$PARAMETER": "expected_labels"}), level="batch"),
    ]


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
    _check_args(df, labels, min_rows=min_rows)
    if not labels:
        raise ValueError("labels must not be empty")
    if not (0 <= max_drift <= 1) or not (0 <= min_mean_confidence <= 1) or prob_tolerance <= 0:
        raise ValueError("max_drift and min_mean_confidence must be in [0, 1]; prob_tolerance > 0")
    reference = _distribution(labels, seed_distribution)
    early = _schema(contract, df, LABEL_COLUMNS)
    if early is not None:
        return early
    label_col = _label_values(df["label"])
    check = _frame({
        "message_id": [s if s and s.strip() else None for s in _strings(df["message_id"])],
        "label": label_col,
        "confidence": pd.Series(_numbers(df["confidence"]), dtype="float64"),
        **_probs_helpers(df["probs"], labels, label_col),
    })
    check["message_id_first"] = _first_occurrence(check["message_id"].tolist())
    check["probs_sum"] = check["probs_sum"].astype("float64")
    drift_floor = drift_min_rows if drift_min_rows is not None else 5 * len(labels)

    params = {"min_rows": min_rows, "labels": labels, "sum_min": 1 - prob_tolerance,
              "sum_max": 1 + prob_tolerance, "n_labels": len(labels), "tolerance": prob_tolerance}
    batch_level = partial(_teacher_batch, labels=labels, reference=reference, max_drift=max_drift,
                          min_mean_confidence=min_mean_confidence, drift_floor=drift_floor)
    return _validate_rows(contract, df, check, _teacher_checks(), params, min_rows, batch_level)


def _teacher_batch(frame: pd.DataFrame, good: np.ndarray, *, labels: list[str], reference: dict[str, float],
                   max_drift: float, min_mean_confidence: float, drift_floor: int) -> tuple[list[str], dict]:
    """Batch checks of teacher_labels@1 on the accepted rows: mean confidence, presence, drift."""
    ok_rows = frame.loc[good, ["label", "confidence"]].reset_index(drop=True)
    n = len(ok_rows)
    drift: dict[str, Any] = {"metric": "total_variation", "threshold": max_drift, "rows": n,
                             "min_rows": drift_floor}
    if n == 0:
        return [], {"drift": {**drift, "status": "skipped: no accepted rows"}}
    checks = _teacher_batch_checks()
    params = {"min_mean_confidence": min_mean_confidence,
              "expected_labels": expected_labels(labels, reference, n)}
    out = _collect(_run("teacher_labels@1.batch", checks, ok_rows, params), checks, ok_rows, params)
    failures = _name_missing_labels(out.batch_failures, params["expected_labels"], ok_rows)
    if n < drift_floor:
        drift["status"] = f"skipped: {n} accepted rows < {drift_floor}"
    else:
        tvd = total_variation(ok_rows["label"], labels, reference)
        drift.update(value=round(tvd, 4), status="passed" if tvd <= max_drift else "failed")
        if tvd > max_drift:
            failures.append(f"label distribution: expected a total variation distance from the seed "
                            f"distribution of at most {max_drift}; got {tvd:.3f} over {n} rows")
    return failures, {"drift": drift, "validations": [out.gx_json]}


def _name_missing_labels(failures: list[str], required: list[str], rows: pd.DataFrame) -> list[str]:
    """Name the missing labels in the presence failure (GX reports only the observed set)."""
    seen = set(rows["label"].dropna())
    out = []
    for f in failures:
        if f.startswith("label: expected every label"):
            missing = [lab for lab in required if lab not in seen]
            f = (f"label: expected every label likely to appear in {len(rows)} rows; "
                 f"missing {missing}")
        out.append(f)
    return out


# ---------------------------------------------------------------------------------------------
# feedback@1
# ---------------------------------------------------------------------------------------------
def _bools(series: pd.Series) -> list[bool | None]:
    return [bool(v) if isinstance(v, (bool, np.bool_)) else None for v in series.tolist()]


def _feedback_checks() -> list[Check]:
    return [
        _row_count_check(),
        _string_check("device_id"),
        Check("device_id_format", "device_id", "the format dev-<4-32 lowercase letters/digits>",
              lambda gxe: gxe.ExpectColumnValuesToMatchRegex(column="device_id", regex=_DEVICE_ID_STRICT)),
        _string_check("model_version"),
        _in_set_check("model_version", "model_versions", "a model version this loop has published"),
        _string_check("message_id"),
        _string_check("predicted", "a label name (string)"),
        _in_set_check("predicted", "labels", "one of the configured labels"),
        Check("accepted_type", "accepted", "true or false",
              lambda gxe: gxe.ExpectColumnValuesToNotBeNull(column="accepted"), got="type"),
        _in_set_check("corrected_label", "labels", "one of the configured labels, or null"),
        _true_check("correction_consistent", "correction_consistent", "corrected_label",
                    "a correction only on a rejected prediction, different from the prediction"),
        _true_check("event_unique", "event_first", "event",
                    "one event per (device_id, message_id, at) (duplicate: the first is kept)", got="none"),
        *_time_checks("at"),
    ]


def validate_feedback(df: pd.DataFrame, labels: list[str], known_model_versions: set[str], *,
                      min_rows: int = 1, now: datetime | None = None) -> ContractResult:
    """Contract ``feedback@1`` for edge feedback events.

    Row level: ``device_id`` matches :data:`DEVICE_ID_REGEX` (``dev-`` + 4-32 lowercase
    letters/digits), ``model_version`` in ``known_model_versions``, ``message_id`` a string,
    ``predicted`` in ``labels``, ``accepted`` a real boolean, ``corrected_label`` null or in
    ``labels`` and consistent (only on a rejected prediction, and different from it), ``at`` a
    timezone-aware time between 2000 and now; duplicate events (same device, message, time) after
    the first are quarantined. Batch level: exact columns, ``min_rows``.
    """
    contract = "feedback@1"
    _check_args(df, labels, min_rows=min_rows)
    versions = sorted(str(v) for v in known_model_versions)
    early = _schema(contract, df, FEEDBACK_COLUMNS)
    if early is not None:
        return early
    check = _frame({
        "device_id": _strings(df["device_id"]),
        "model_version": _label_values(df["model_version"]),
        "message_id": [s if s and s.strip() else None for s in _strings(df["message_id"])],
        "predicted": _label_values(df["predicted"]),
        "accepted": _bools(df["accepted"]),
        "corrected_label": _label_values(df["corrected_label"]),
    })
    check["model_version"] = [None if v is None else str(v) for v in check["model_version"]]
    check["at_utc"] = _timestamps_utc(df["at"])
    consistent = []
    for acc, pred, corr in zip(check["accepted"], check["predicted"], check["corrected_label"]):
        consistent.append(True if _is_missing(corr) or _is_missing(acc) else (not acc and corr != pred))
    check["correction_consistent"] = consistent
    keys = [None if d is None or m is None or pd.isna(t) else (d, m, t.value)
            for d, m, t in zip(check["device_id"], check["message_id"], check["at_utc"])]
    check["event_first"] = _first_occurrence(keys)
    params = {"min_rows": min_rows, "labels": list(labels), "model_versions": versions,
              "earliest": EARLIEST, "latest": _now(now) + CLOCK_SKEW}
    return _validate_rows(contract, df, check, _feedback_checks(), params, min_rows)


# ---------------------------------------------------------------------------------------------
# no_pii@1
# ---------------------------------------------------------------------------------------------
def validate_no_pii(df: pd.DataFrame, column: str = "text") -> ContractResult:
    """Contract ``no_pii@1``: after redaction no e-mail, phone, Luhn-valid card, mod-97-valid IBAN,
    street address, order/invoice/tracking number is left in ``column``.

    A row where one is found is quarantined with the types ("text: expected no personal data
    after redaction; got ['CARD', 'EMAIL']"). Other columns may be anything. Zero rows is fine.
    """
    contract = "no_pii@1"
    _check_args(df, [])
    # Suites are cached by name and built once, so the column is part of the name.
    early = _schema(contract, df, [column], exact=False, suite=f"{contract}[{column}]")
    if early is not None:
        return early
    found = [None if not isinstance(v, str) else ",".join(find_pii(v)) for v in df[column].tolist()]
    check = _frame({"text": _strings(df[column]), "pii_types": found})
    checks = [
        Check("text_type", column, "a string", lambda gxe: gxe.ExpectColumnValuesToNotBeNull(column="text"),
              got="type"),
        Check("no_pii", column, "no personal data after redaction",
              lambda gxe: gxe.ExpectColumnValuesToBeInSet(column="pii_types", value_set=[""]), got="none"),
    ]
    result = _run(f"{contract}[{column}].rows", checks, check, {})
    outcome = _collect(result, checks, df)
    for pos, reasons in outcome.reasons.items():
        reasons[:] = [r + (f"; got {found[pos].split(',')}" if r.endswith("after redaction") else "")
                      for r in reasons]
    return _finish(contract, df, outcome.reasons, outcome.batch_failures,
                   {"validations": [outcome.gx_json]})


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------
def write_report(results: list[ContractResult], out_dir: str | Path) -> list[Path]:
    """Write each contract's GX result JSON and one Markdown report; return the paths written.

    Files: ``<contract>.json`` (``raw_messages@1`` -> ``raw_messages_v1.json``) and
    ``contracts.md`` (summary table, batch failures, quarantine reasons, sample rows).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for res in results:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", res.contract.replace("@", "_v"))
        p, i = out / f"{stem}.json", 1
        while p in paths:  # the same contract run on several frames
            i += 1
            p = out / f"{stem}_{i}.json"
        p.write_text(json.dumps(res.results_json, indent=2, default=str, ensure_ascii=True))
        paths.append(p)
    md = out / "contracts.md"
    md.write_text(_markdown(results), encoding="utf-8")
    paths.append(md)
    return paths


def _md_cell(value: Any, limit: int = 80) -> str:
    text = _short(value, limit) if not isinstance(value, str) else _short(value, limit)[1:-1]
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(results: list[ContractResult]) -> str:
    lines = ["# Data contracts", "", "| contract | ok | rows in | accepted | quarantined | batch failures |",
             "|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(f"| {s['contract']} | {'yes' if s['ok'] else '**NO**'} | {s['rows_in']} | "
                     f"{s['rows_accepted']} | {s['rows_quarantined']} | {_md_cell(s['batch_failures'], 200)} |")
    for r in results:
        lines += ["", f"## {r.contract}", ""]
        lines += [f"- batch failure: {f}" for f in r.batch_failures] or ["- no batch failure"]
        drift = r.results_json.get("drift")
        if drift:
            lines.append(f"- drift: {drift}")
        reasons = r.reason_counts()
        if reasons:
            lines += ["", "| reason | rows |", "|---|---|"]
            lines += [f"| {_md_cell(k, 200)} | {v} |" for k, v in reasons.most_common(20)]
            sample = r.quarantined.head(10)
            cols = [c for c in sample.columns if c != "contract"]
            lines += ["", "Sample of quarantined rows:", "", "| " + " | ".join(cols) + " |",
                      "|" + "---|" * len(cols)]
            for _, row in sample.iterrows():
                lines.append("| " + " | ".join(_md_cell(row[c], 200 if c == "reason" else 40)
                                                for c in cols) + " |")
    return "\n".join(lines) + "\n"
