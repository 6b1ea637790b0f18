"""The contracts through Great Expectations: results that name the rule, a Checkpoint per suite, Data Docs."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

from data_contracts.contracts import (RAW_COLUMNS, data_docs_index, validate_feedback, validate_no_pii,
                                      validate_raw_messages, validate_teacher_labels, write_report)

LABELS = ["cancel_order", "track_order", "get_refund"]
NOW = pd.Timestamp("2025-06-01 12:00", tz="UTC")


def raw(texts, **cols) -> pd.DataFrame:
    n = len(texts)
    return pd.DataFrame({"message_id": cols.get("message_id", [f"m{i}" for i in range(n)]),
                         "text": pd.Series(list(texts), dtype=object), "source": "stream",
                         "gold_label": pd.Series(cols.get("gold_label", [None] * n), dtype=object),
                         "received_at": NOW - pd.Timedelta(hours=1)})


def failed(res, expectation_type: str) -> list[dict]:
    """The failed GX results of ``expectation_type`` in a contract's row validation."""
    rows = res.results_json["validations"][0]["results"]
    return [r for r in rows if r["expectation_config"]["type"] == expectation_type and not r["success"]]


def page_text(path) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", "", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_a_gx_result_names_the_rule_column_and_bound_of_a_failing_row():
    res = validate_raw_messages(raw(["short", "x" * 1_000_000, "fine"]), LABELS, now=NOW)
    [length] = failed(res, "expect_column_string_lengths_to_be_between")
    assert length["expectation_config"]["kwargs"]["column"] == "text"
    assert length["expectation_config"]["kwargs"]["max_value"] == 2000
    assert length["result"]["unexpected_index_list"] == [1] and length["result"]["unexpected_count"] == 1
    assert res.quarantined["reason"].tolist() == ["text: expected at most 2000 characters; got 1000000 characters"]


def test_custom_expectations_name_their_rule_too():
    res = validate_raw_messages(raw(["ok", "bad \ud800", "ok"], message_id=["a", "b", "a"]), LABELS, now=NOW)
    [utf8] = failed(res, "expect_column_values_to_be_valid_utf8")
    assert utf8["expectation_config"]["kwargs"]["column"] == "text" and utf8["result"]["unexpected_index_list"] == [1]
    [dupe] = failed(res, "expect_column_values_to_be_first_occurrence")
    assert dupe["expectation_config"]["kwargs"]["column"] == "message_id"
    assert dupe["result"]["unexpected_index_list"] == [2]  # the first "a" is kept

    probs = pd.Series([[0.2, 0.7, 0.1], [0.8, 0.1, 0.1]], dtype=object)
    teacher = validate_teacher_labels(pd.DataFrame({"message_id": ["p", "q"], "probs": probs,
                                                    "label": ["cancel_order", "cancel_order"],
                                                    "confidence": [0.7, 0.8]}), LABELS, None)
    [argmax] = failed(teacher, "expect_multicolumn_label_to_be_argmax")
    assert argmax["expectation_config"]["kwargs"]["column_list"] == ["label", "probs"]
    assert argmax["expectation_config"]["kwargs"]["labels"] == LABELS
    assert argmax["result"]["unexpected_index_list"] == [0]

    pii = validate_no_pii(pd.DataFrame({"text": ["card 4111 1111 1111 1111", "hello"]}))
    [found] = failed(pii, "expect_column_values_to_contain_no_pii")
    assert found["expectation_config"]["kwargs"]["column"] == "text" and found["result"]["unexpected_index_list"] == [0]


def test_gx_validates_the_contract_columns_themselves_not_helper_columns():
    frames = [(validate_raw_messages(raw(["a", None]), LABELS, now=NOW), set(RAW_COLUMNS))]
    for res, columns in frames:
        for r in res.results_json["validations"][0]["results"]:
            kwargs = r["expectation_config"]["kwargs"]
            named = set(kwargs.get("column_list", [])) | ({kwargs["column"]} if "column" in kwargs else set())
            assert named <= columns, (r["expectation_config"]["type"], named)
            assert set(r["expectation_config"]["kwargs"].get("value_set") or []) != {True}


def test_each_suite_runs_through_one_checkpoint_and_reruns_do_not_pile_up():
    from data_contracts import gx_engine

    validate_raw_messages(raw(["a"]), LABELS, now=NOW)
    ctx = gx_engine.context()
    names = [cp.name for cp in ctx.checkpoints.all()]
    assert {"raw_messages@1.schema", "raw_messages@1.rows"} <= set(names)
    before = (len(ctx.checkpoints.all()), len(ctx.suites.all()), len(ctx.validation_definitions.all()))
    for _ in range(3):
        validate_raw_messages(raw(["a", "b"]), LABELS, now=NOW)
    assert (len(ctx.checkpoints.all()), len(ctx.suites.all()), len(ctx.validation_definitions.all())) == before
    assert names.count("raw_messages@1.rows") == 1
    assert ctx.validation_results_store.list_keys() == []  # results are not kept in a long-lived process


def test_values_gx_cannot_serialize_or_hash_are_quarantined_not_a_batch_error():
    res = validate_raw_messages(raw(["fine", 1 + 2j, object(), "lone \udfff"]), LABELS, now=NOW)
    assert res.ok, res.batch_failures
    reasons = dict(zip(res.quarantined["message_id"], res.quarantined["reason"]))
    assert reasons["m1"] == "text: expected a string; got (1+2j) (complex)"
    assert reasons["m2"].startswith("text: expected a string; got <object object")
    assert reasons["m3"] == "text: expected valid UTF-8 (no lone surrogates); got 'lone \\\\udfff'"
    fb = pd.DataFrame({"device_id": pd.Series(["dev-abcd", "dev-\ud800bcd"], dtype=object), "model_version": "7",
                       "message_id": ["a", "b"], "predicted": "cancel_order", "accepted": True,
                       "corrected_label": None, "at": NOW - pd.Timedelta(minutes=1)})
    res = validate_feedback(fb, LABELS, {"7"}, now=NOW)
    assert res.ok and res.rows_accepted == 1
    assert res.quarantined["reason"].iloc[0] == ("device_id: expected the format dev-<4-32 lowercase "
                                                 "letters/digits>; got 'dev-\\\\ud800bcd'")


def test_teacher_vectors_are_checked_the_same_whether_arrays_or_lists():
    probs = np.array([[0.1, 0.8, 0.1], [0.5, 0.6, 0.1], [0.9, 0.05, 0.05]])
    base = pd.DataFrame({"message_id": ["a", "b", "c"], "label": ["track_order", "track_order", "cancel_order"],
                         "confidence": probs.max(1)})
    as_arrays = validate_teacher_labels(base.assign(probs=list(probs)), LABELS, None)
    as_lists = validate_teacher_labels(base.assign(probs=[p.tolist() for p in probs]), LABELS, None)
    for res in (as_arrays, as_lists):
        assert res.quarantined["message_id"].tolist() == ["b"]
        assert res.quarantined["reason"].iloc[0].startswith("probs: expected probabilities summing to 1")


def test_write_report_builds_data_docs_for_the_night(tmp_path):
    bad = validate_raw_messages(raw(["fine", "bad \ud800", "x" * 5000]), LABELS, now=NOW)
    pii = validate_no_pii(pd.DataFrame({"text": ["mail jo@example.com"]}))
    paths = write_report([bad, pii], tmp_path / "night")
    index = paths[-1]
    assert index == data_docs_index(paths) == tmp_path / "night" / "data_docs" / "index.html" and index.is_file()
    links = set(re.findall(r'validations/[^"\\]+?\.html', index.read_text(encoding="utf-8")))
    assert len(links) == 4  # schema and rows of each contract
    pages = sorted((tmp_path / "night" / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 4
    rows_page = page_text(next(p for p in pages if "raw_messages@1/rows" in p.as_posix()))
    assert "text: expected valid UTF-8 (no lone surrogates)" in rows_page  # a custom rule in words
    assert "less than or equal to 2000 characters long" in rows_page      # a built-in's own words
    assert "bad \\ud800" in rows_page and "Status: Failed" in rows_page
    md = paths[-2].read_text()
    assert "Great Expectations Data Docs: [data_docs/index.html]" in md
    assert all(f"({p.relative_to(tmp_path / 'night').as_posix()})" in md for p in pages)  # links that work offline

    write_report([pii], tmp_path / "night")  # a re-run replaces the site
    assert len(list((tmp_path / "night" / "data_docs" / "validations").rglob("*.html"))) == 2


def test_label_drift_is_a_gx_expectation_on_the_accepted_rows():
    labels = ["cancel_order"] * 90 + ["track_order"] * 5 + ["get_refund"] * 5
    probs = [[0.9 if lab == name else 0.05 for name in LABELS] for lab in labels]
    df = pd.DataFrame({"message_id": [f"m{i}" for i in range(100)], "probs": probs, "label": labels,
                       "confidence": 0.9})
    seed = {"cancel_order": 0.4, "track_order": 0.4, "get_refund": 0.2}
    res = validate_teacher_labels(df, LABELS, seed, max_drift=0.25)
    batch = res.results_json["validations"][1]["results"]
    drift_type = "expect_column_total_variation_distance_to_be_at_most"
    [drift] = [r for r in batch if r["expectation_config"]["type"] == drift_type]
    assert drift["expectation_config"]["kwargs"]["column"] == "label"
    assert drift["expectation_config"]["kwargs"]["max_value"] == 0.25
    assert drift["success"] is False and abs(drift["result"]["observed_value"] - 0.5) < 1e-9
    assert res.results_json["drift"]["value"] == 0.5 and res.results_json["drift"]["status"] == "failed"
    assert "label distribution: expected a total variation distance from the seed distribution of at most 0.25 " \
           "(over 100 rows); got 0.500" in res.batch_failures


def test_a_value_of_the_wrong_type_gets_one_reason_not_one_per_rule():
    res = validate_raw_messages(raw(["a", "b", "c"], message_id=[7, 7, "ok"]), LABELS, now=NOW)
    # GX's result does find the repeated 7; the reason stays the type's, as it was before GX ran the rules.
    [dupe] = failed(res, "expect_column_values_to_be_first_occurrence")
    assert dupe["result"]["unexpected_index_list"] == [1]
    assert res.quarantined["reason"].tolist() == ["message_id: expected a non-empty string; got 7 (int)"] * 2


def test_a_data_docs_failure_is_reported_not_raised(tmp_path):
    (tmp_path / "data_docs").write_text("a file where the site's folder should be")
    paths = write_report([validate_raw_messages(raw(["fine"]), LABELS, now=NOW)], tmp_path)
    assert data_docs_index(paths) is None and [p.name for p in paths] == ["raw_messages_v1.json", "contracts.md"]
    assert "Great Expectations Data Docs could not be built: " in paths[-1].read_text()


def test_a_type_rule_fails_in_gx_when_every_value_is_null():
    # GX's map expectations drop nulls first and would call an all-null column a vacuous success.
    res = validate_raw_messages(raw([None, None]), LABELS, now=NOW)
    [strings] = failed(res, "expect_column_values_to_be_strings")
    assert strings["expectation_config"]["kwargs"]["column"] == "text"
    assert strings["result"]["unexpected_count"] == 2 and strings["result"]["unexpected_index_list"] == [0, 1]
    assert "column text: no row has the expected type (a string)" in res.batch_failures
