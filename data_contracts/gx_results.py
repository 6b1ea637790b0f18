"""Turning a GX validation result into what a contract reports: per-row reasons, batch failures,
the result as JSON (trimmed for logs) and as Data Docs can render it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from data_contracts.gx_engine import Check, undescribed_types
from data_contracts.report import short, trim

#: Keys of a GX result dropped from the Data Docs copy: the full lists (the partial ones stay).
_FULL_LISTS = ("unexpected_list", "unexpected_index_list", "unexpected_index_query")


@dataclass
class Outcome:
    """Per-row reasons (by position), batch failures, and the GX result as JSON (trimmed, and for Data Docs)."""

    reasons: dict[int, list[str]]
    batch_failures: list[str]
    gx_json: dict
    docs_json: dict


def _expected(check: Check, params: dict[str, Any] | None) -> str:
    return check.expected.format_map(params or {}) if "{" in check.expected else check.expected


def _got(check: Check, original: pd.DataFrame, pos: int) -> str:
    if check.got == "none" or check.field not in original.columns:
        return ""
    value = original[check.field].iat[pos]
    if callable(check.got):
        return f"; got {check.got(value)}"
    if check.got == "length" and isinstance(value, str):
        return f"; got {len(value)} characters"
    if check.got == "type":
        return f"; got {short(value)} ({type(value).__name__})"
    return f"; got {short(value)}"


def _exception(info: Any) -> str | None:
    """The message of an exception GX caught while running an expectation, else None.

    GX gives ``{"raised_exception": ..., "exception_message": ...}``, or one such dict per failed
    metric, keyed by the metric.
    """
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    nested = [v for v in info.values() if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(str(v.get("exception_message")) for v in nested) if nested else None


def collect(result: Any, checks: list[Check], original: pd.DataFrame,
            params: dict[str, Any] | None = None) -> Outcome:
    """Reasons for the rows each row-level expectation rejected, and the batch-level failures.

    Checks are read in their order, so a field's type check (``got="type"``) comes first; a value
    it rejects gets no further reasons for that field. A column where type checks reject every row
    is a batch failure as well: the column is probably of the wrong kind altogether.
    """
    by_id = {c.id: c for c in checks}
    order = {c.id: i for i, c in enumerate(checks)}  # reasons in the order of the checks, not GX's
    reasons: dict[int, list[str]] = {}
    failures: list[str] = []
    wrong_type: dict[str, set[int]] = {}
    n = len(original)
    for er in sorted(result.results, key=lambda er: order[er.expectation_config.meta["check"]]):
        check = by_id[er.expectation_config.meta["check"]]
        expected = _expected(check, params)
        error = _exception(er.exception_info)
        if error is not None:
            failures.append(f"{check.field}: the check '{expected}' could not run ({error})")
            continue
        if er.success:
            continue
        res = er.result or {}
        if check.level == "batch":
            observed = res.get("observed_value")
            got = check.got(observed) if callable(check.got) and observed is not None else short(observed, 200)
            failures.append(f"{check.field}: expected {expected}; got {got}")
            continue
        unexpected = [int(p) for p in res.get("unexpected_index_list") or []]
        typed_out = wrong_type.setdefault(check.field, set())
        for pos in unexpected:
            if check.got != "type" and pos in typed_out:
                continue  # a value of the wrong type gets that one reason, not one per rule it then breaks
            reasons.setdefault(pos, []).append(f"{check.field}: expected {expected}{_got(check, original, pos)}")
        if check.got == "type":
            typed_out.update(unexpected)
    for col, rows in wrong_type.items():
        if n and len(rows) == n and any(c.field == col and c.got == "type" for c in checks):
            expected = next(c.expected for c in checks if c.field == col and c.got == "type")
            failures.append(f"column {col}: no row has the expected type ({expected})")
    full = result.to_json_dict()
    plain = undescribed_types()
    wordless = {er.expectation_config.meta["check"] for er in result.results if er.expectation_config.type in plain}
    described = {c.id: f"{c.field}: expected {_expected(c, params)}" for c in checks if c.id in wordless}
    return Outcome(reasons, failures, trim(full), _for_docs(full, described))


def _docs_value(obj: Any, max_list: int = 20, max_str: int = 200) -> Any:
    """A value of a GX result as Data Docs can render it: short lists and strings, no lone surrogates."""
    if isinstance(obj, dict):
        return {k: _docs_value(v, max_list, max_str) for k, v in obj.items() if k not in _FULL_LISTS}
    if isinstance(obj, list):
        return [_docs_value(v, max_list, max_str) for v in obj[:max_list]]
    if isinstance(obj, str):
        text = obj.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= max_str else text[:max_str] + f"... ({len(text)} characters)"
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _for_docs(full: dict, described: dict[str, str]) -> dict:
    """The GX result for Data Docs: the full lists left out, and expectations GX has no words for
    described by their check (``described``: check id -> text)."""
    out = {k: v for k, v in full.items() if k != "results"}
    out["results"] = []
    for er in full.get("results", []):
        config = _docs_value(er["expectation_config"], 10**6, 10**6)  # kwargs whole: the rule as run
        check = (config.get("meta") or {}).get("check")
        if check in described and not config.get("description"):
            config["description"] = described[check]
        out["results"].append({**er, "expectation_config": config, "result": _docs_value(er.get("result") or {}),
                               "exception_info": _docs_value(er.get("exception_info") or {})})
    return _docs_value(out, 10**6, 10**6)
