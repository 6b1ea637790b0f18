"""Data contracts: Great Expectations suites that split a frame into accepted and quarantined rows.

The public entry: ``raw_messages@1``, ``feedback@1`` and ``no_pii@1`` here, ``teacher_labels@1`` in
:mod:`data_contracts.teacher_labels`, :class:`ContractResult` and :func:`write_report` in
:mod:`data_contracts.report` (the report's last file is the night's GX Data Docs
``<out_dir>/data_docs/index.html``). How a contract runs (schema, then rows, then accounting) is
in :mod:`data_contracts.checks`; the GX context, Checkpoints and the Data Docs build in
:mod:`data_contracts.gx_engine`; GX results to reasons in :mod:`data_contracts.gx_results`; the
custom GX expectations in :mod:`data_contracts.expectations` (metrics in
:mod:`data_contracts.gx_metrics`). Every rule is one GX expectation, so a GX result names the
rule (``expect_column_string_lengths_to_be_between`` on ``text``, ``max_value=2000``) and a
quarantined row carries the readable reason ("text: expected at most 2000 characters; got
1000000 characters"). Great Expectations is imported lazily: importing this module does not
import it.
"""
from __future__ import annotations

from datetime import datetime

import pandas as pd

from data_contracts.checks import CLOCK_SKEW, EARLIEST, check_args, first_occurrence, in_set, present, \
    row_count, schema, strings, time_bounds, timestamps, validate_rows
from data_contracts.gx_engine import Check
from data_contracts.lake import MESSAGE_COLUMNS
from data_contracts.redaction import find_pii
from data_contracts.report import DATA_DOCS_DIR, ContractError, ContractResult, data_docs_index, write_report
from data_contracts.teacher_labels import LABEL_COLUMNS, expected_labels, total_variation, validate_teacher_labels
from edge.feedback import DEVICE_ID_REGEX, FIELDS

__all__ = ["RAW_COLUMNS", "LABEL_COLUMNS", "FEEDBACK_COLUMNS", "DEVICE_ID_REGEX", "CONTROL_CHARS", "EARLIEST",
           "CLOCK_SKEW", "DATA_DOCS_DIR", "ContractError", "ContractResult", "validate_raw_messages",
           "validate_teacher_labels", "validate_feedback", "validate_no_pii", "expected_labels",
           "total_variation", "write_report", "data_docs_index"]

#: Columns of a raw message: the lake's message rows.
RAW_COLUMNS = list(MESSAGE_COLUMNS)
#: Columns of a feedback event as the contract sees it: what a device sends, less its id and text.
FEEDBACK_COLUMNS = [f for f in FIELDS if f not in ("event_id", "text")]
# What GX runs: Python's ``$`` also matches before a trailing newline ("dev-abcd\n"); ``\Z`` does not.
_DEVICE_ID_STRICT = DEVICE_ID_REGEX[:-1] + r"\Z"
#: C0/C1 control characters but \t, \n and \r; escaped, so GX results and Data Docs show it legibly.
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


# ---------------------------------------------------------------------------------------------
# raw_messages@1
# ---------------------------------------------------------------------------------------------
def _raw_checks() -> list[Check]:
    return [
        row_count(),
        strings("message_id"),
        first_occurrence("message_id", "a unique id (duplicate message_id: the first row is kept)"),
        strings("text", "a string", non_empty=False),
        Check("text_utf8", "text", "valid UTF-8 (no lone surrogates)",
              lambda E: E.ExpectColumnValuesToBeValidUtf8(column="text")),
        Check("text_controls", "text", "no control characters (\\n, \\r and \\t are allowed)",
              lambda E: E.ExpectColumnStringsToNotMatchRegex(column="text", regex=CONTROL_CHARS)),
        Check("text_empty", "text", "at least {min_chars} visible character(s) (spaces and zero-width "
              "characters do not count)", lambda E: E.ExpectColumnValuesToHaveVisibleCharacters(
                  column="text", min_value={"$PARAMETER": "min_chars"})),
        Check("text_length", "text", "at most {max_chars} characters", got="length",
              expectation=lambda E: E.ExpectColumnStringLengthsToBeBetween(
                  column="text", max_value={"$PARAMETER": "max_chars"})),
        strings("source"),
        in_set("gold_label", "labels", "one of the configured labels, or null"),
        *timestamps("received_at"),
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
    check_args(df, labels, min_rows=min_rows, min_chars=min_chars, max_chars=max_chars)
    early, schema_docs = schema(contract, df, RAW_COLUMNS)
    if early is not None:
        return early
    params = {"min_rows": min_rows, "labels": list(labels), "min_chars": min_chars, "max_chars": max_chars,
              **time_bounds(now)}
    return validate_rows(contract, df, _raw_checks(), params, min_rows, docs=[schema_docs])


# ---------------------------------------------------------------------------------------------
# feedback@1
# ---------------------------------------------------------------------------------------------
def _feedback_checks() -> list[Check]:
    return [
        row_count(),
        strings("device_id"),
        Check("device_id_format", "device_id", "the format dev-<4-32 lowercase letters/digits>",
              lambda E: E.ExpectColumnStringsToMatchRegex(column="device_id", regex=_DEVICE_ID_STRICT)),
        present("model_version", "a non-empty string"),
        in_set("model_version", "model_versions", "a model version this loop has published"),
        strings("message_id"),
        present("predicted", "a label name (string)"),  # any other value fails the label set below
        in_set("predicted", "labels", "one of the configured labels"),
        Check("accepted_type", "accepted", "true or false", got="type",
              expectation=lambda E: E.ExpectColumnValuesToBeBooleans(column="accepted")),
        in_set("corrected_label", "labels", "one of the configured labels, or null"),
        Check("correction_consistent", "corrected_label",
              "a correction only on a rejected prediction, different from the prediction",
              lambda E: E.ExpectCorrectionsOnlyOnRejectedPredictions(
                  column_list=["accepted", "predicted", "corrected_label"])),
        Check("event_unique", "event", "one event per (device_id, message_id, at) (duplicate: the first is kept)",
              lambda E: E.ExpectCompoundColumnsToBeFirstOccurrence(column_list=["device_id", "message_id", "at"]),
              got="none"),
        *timestamps("at"),
    ]


def validate_feedback(df: pd.DataFrame, labels: list[str], known_model_versions: set[str], *,
                      min_rows: int = 1, now: datetime | None = None) -> ContractResult:
    """Contract ``feedback@1`` for edge feedback events.

    Row level: ``device_id`` matches :data:`DEVICE_ID_REGEX` (``dev-`` + 4-32 lowercase
    letters/digits), ``model_version`` in ``known_model_versions`` (a whole number is taken for its
    digits), ``message_id`` a string, ``predicted`` in ``labels``, ``accepted`` a real boolean,
    ``corrected_label`` null or in ``labels`` and consistent (only on a rejected prediction, and
    different from it), ``at`` a timezone-aware time between 2000 and now; duplicate events (same
    device, message, time) after the first are quarantined. Batch level: exact columns, ``min_rows``.
    """
    contract = "feedback@1"
    check_args(df, labels, min_rows=min_rows)
    versions = sorted(str(v) for v in known_model_versions)
    early, schema_docs = schema(contract, df, FEEDBACK_COLUMNS)
    if early is not None:
        return early
    params = {"min_rows": min_rows, "labels": list(labels), **time_bounds(now),
              "model_versions": versions + [int(v) for v in versions if v.isdigit()]}
    return validate_rows(contract, df, _feedback_checks(), params, min_rows, docs=[schema_docs])


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
    check_args(df, [])
    # Suites are built once per name, so the column is part of the name.
    suite = f"{contract}[{column}]"
    early, schema_docs = schema(contract, df, [column], exact=False, suite=suite)
    if early is not None:
        return early
    checks = [
        strings(column, "a string", non_empty=False),
        Check("no_pii", column, "no personal data after redaction", got=lambda v: str(find_pii(v)),
              expectation=lambda E: E.ExpectColumnValuesToContainNoPii(column=column)),
    ]
    return validate_rows(contract, df, checks, {}, 0, suite=suite, docs=[schema_docs],
                         gx_view=df[[column]])
