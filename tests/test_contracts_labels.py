"""teacher_labels@1, feedback@1 and no_pii@1 on good and hostile frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_contracts.contracts import (expected_labels, total_variation, validate_feedback,
                                      validate_no_pii, validate_teacher_labels)
from data_contracts.redaction import redact_frame

LABELS = ["cancel_order", "track_order", "get_refund"]
SEED = {"cancel_order": 0.4, "track_order": 0.4, "get_refund": 0.2}
NOW = pd.Timestamp("2025-06-01 12:00", tz="UTC")


def accounting(res):
    assert not [f for f in res.batch_failures if "could not run" in f]  # every GX check ran
    assert res.rows_in == res.rows_accepted + res.rows_quarantined == len(res.accepted) + len(res.quarantined)


def soft(labels_per_row, conf=0.9):
    """Teacher rows whose probs put ``conf`` on the given label."""
    rows = []
    for i, lab in enumerate(labels_per_row):
        p = np.full(len(LABELS), (1 - conf) / (len(LABELS) - 1))
        p[LABELS.index(lab)] = conf
        rows.append({"message_id": f"m{i}", "probs": p.tolist(), "label": lab, "confidence": conf})
    return pd.DataFrame(rows)


def reasons(res):
    return dict(zip(res.quarantined["message_id"], res.quarantined["reason"]))


# ---- teacher labels ------------------------------------------------------------------------
def test_teacher_good_batch_passes_with_drift_measured():
    df = soft(["cancel_order"] * 40 + ["track_order"] * 40 + ["get_refund"] * 20)
    res = validate_teacher_labels(df, LABELS, SEED)
    accounting(res)
    assert res.ok and res.rows_accepted == 100
    assert res.results_json["drift"]["status"] == "passed" and res.results_json["drift"]["value"] == 0.0


def test_teacher_rows_with_bad_probs_confidence_or_label():
    df = soft(["cancel_order"] * 6)
    df["probs"] = pd.Series([
        [0.9, 0.05, 0.05],          # ok
        [0.5, 0.6, 0.1],            # sums to 1.2
        [0.5, 0.5],                 # wrong length
        "0.9,0.05,0.05",            # a string, not a list
        [0.9, float("nan"), 0.1],   # not finite
        np.array([0.2, 0.7, 0.1]),  # label is not the argmax
    ], dtype=object)
    df.loc[0, "confidence"] = 1.5
    res = validate_teacher_labels(df, LABELS, SEED)
    accounting(res)
    r = reasons(res)
    assert res.rows_accepted == 0
    assert r["m0"] == "confidence: expected a number in [0, 1]; got 1.5"
    assert r["m1"].startswith("probs: expected probabilities summing to 1 (tolerance 0.001); got 1.2")
    for m in ("m2", "m3", "m4"):
        assert r[m].startswith("probs: expected a list of 3 finite probabilities")
    assert r["m5"].startswith("label: expected the label with the highest probability")


def test_teacher_unknown_label_wrong_types_and_duplicates():
    df = soft(["cancel_order", "track_order", "get_refund", "cancel_order"])
    df["label"] = df["label"].astype(object)
    df.loc[1, "label"] = "teleport"
    df["confidence"] = df["confidence"].astype(object)
    df.loc[2, "confidence"] = "high"
    df.loc[3, "message_id"] = "m0"
    res = validate_teacher_labels(df, LABELS, SEED)
    accounting(res)
    r = res.quarantined.set_index(res.quarantined.index)["reason"].tolist()
    assert res.rows_accepted == 1
    assert any("label: expected one of the configured labels; got 'teleport'" in x for x in r)
    assert any("confidence: expected a number; got 'high' (str)" in x for x in r)
    assert any("one label row per message" in x for x in r)


def test_teacher_low_mean_confidence_fails_the_batch():
    res = validate_teacher_labels(soft(["cancel_order", "track_order"], conf=0.4), LABELS, SEED,
                                  min_mean_confidence=0.5)
    accounting(res)
    assert res.rows_accepted == 2
    assert any(f.startswith("confidence: expected a mean confidence of at least 0.5; got 0.4")
               for f in res.batch_failures)


def test_teacher_drift_beyond_bound_fails_the_batch():
    df = soft(["cancel_order"] * 90 + ["track_order"] * 5 + ["get_refund"] * 5)
    res = validate_teacher_labels(df, LABELS, SEED, max_drift=0.25)
    accounting(res)
    assert res.results_json["drift"]["status"] == "failed"
    assert any("total variation distance" in f and "got 0.500" in f for f in res.batch_failures)


def test_teacher_drift_skipped_on_small_batches():
    res = validate_teacher_labels(soft(["cancel_order"] * 5), LABELS, SEED)
    assert res.ok and res.results_json["drift"]["status"].startswith("skipped: 5 accepted rows < 15")


def test_teacher_missing_intent_only_fails_when_batch_is_large_enough():
    small = validate_teacher_labels(soft(["cancel_order", "track_order"] * 3), LABELS, SEED)
    assert small.ok  # 6 rows: get_refund (p=0.2) missing has chance 0.8^6 = 26%
    big = soft(["cancel_order", "track_order"] * 30)  # 0.8^60 ~ 1.5e-6: its absence is a signal
    res = validate_teacher_labels(big, LABELS, SEED, max_drift=1.0)
    assert any("missing ['get_refund']" in f for f in res.batch_failures), res.batch_failures


def test_expected_labels_rule():
    assert expected_labels(LABELS, SEED, 10) == []
    assert expected_labels(LABELS, SEED, 100) == LABELS
    assert expected_labels(LABELS, {"cancel_order": 1.0}, 1000) == ["cancel_order"]
    labels27 = [f"i{k}" for k in range(27)]
    assert expected_labels(labels27, None, 183) == [] and expected_labels(labels27, None, 184) == labels27
    assert total_variation(pd.Series(["a", "a"]), ["a", "b"], {"a": 0.5, "b": 0.5}) == 0.5


def test_teacher_schema_and_empty():
    res = validate_teacher_labels(soft(["cancel_order"]).drop(columns=["probs"]), LABELS, None)
    accounting(res)
    assert not res.ok and "missing column(s) ['probs']" in res.batch_failures[0] and res.rows_quarantined == 1
    empty = validate_teacher_labels(soft([]).reindex(columns=["message_id", "probs", "label", "confidence"]),
                                    LABELS, None)
    assert empty.rows_in == 0 and empty.batch_failures == ["rows: expected at least 1 row(s); got 0"]


def test_teacher_arguments():
    with pytest.raises(ValueError, match="no mass"):
        validate_teacher_labels(soft(["cancel_order"]), LABELS, {"other": 1.0})
    with pytest.raises(ValueError, match="max_drift"):
        validate_teacher_labels(soft(["cancel_order"]), LABELS, None, max_drift=2)


# ---- feedback ------------------------------------------------------------------------------
def feedback(n=1, **over):
    base = {"device_id": "dev-a1b2c3", "model_version": "7", "message_id": "m1", "predicted": "cancel_order",
            "accepted": True, "corrected_label": None, "at": NOW - pd.Timedelta(minutes=1)}
    rows = [dict(base, message_id=f"m{i}") for i in range(n)]
    df = pd.DataFrame(rows).astype(object)
    for col, values in over.items():
        df[col] = pd.Series(values, dtype=object)
    return df


def test_feedback_good_rows():
    df = feedback(2, accepted=[True, False], corrected_label=[None, "get_refund"])
    res = validate_feedback(df, LABELS, {"7"}, now=NOW)
    accounting(res)
    assert res.ok and res.rows_accepted == 2


@pytest.mark.parametrize("col,value,fragment", [
    ("device_id", "DEV-ABC", "device_id: expected the format dev-<4-32 lowercase letters/digits>; got 'DEV-ABC'"),
    ("device_id", "dev-abc", "device_id: expected the format"),                    # too short
    ("device_id", "dev-" + "a" * 33, "device_id: expected the format"),            # too long
    ("device_id", "dev-abcd\n", "device_id: expected the format"),                 # trailing newline
    ("device_id", None, "device_id: expected a non-empty string; got None"),
    ("model_version", "99", "model_version: expected a model version this loop has published; got '99'"),
    ("predicted", "teleport", "predicted: expected one of the configured labels; got 'teleport'"),
    ("accepted", "yes", "accepted: expected true or false; got 'yes' (str)"),
    ("accepted", None, "accepted: expected true or false"),
    ("corrected_label", "teleport", "corrected_label: expected one of the configured labels, or null"),
    ("corrected_label", "get_refund", "corrected_label: expected a correction only on a rejected prediction"),
    ("at", "2025-01-01", "at: expected a timezone-aware timestamp; got '2025-01-01' (str)"),
    ("at", NOW + pd.Timedelta(hours=1), "at: expected a time between 2000-01-01 and now"),
])
def test_feedback_bad_field_is_quarantined(col, value, fragment):
    df = feedback(2)
    df.loc[1, col] = value
    res = validate_feedback(df, LABELS, {"7"}, now=NOW)
    accounting(res)
    assert res.rows_accepted == 1 and res.quarantined["message_id"].tolist() == ["m1"]
    assert fragment in res.quarantined["reason"].iloc[0]


def test_feedback_duplicate_events_and_numpy_bools():
    df = feedback(3, message_id=["m0", "m0", "m2"], accepted=[np.True_, np.True_, False])
    res = validate_feedback(df, LABELS, {"7"}, now=NOW)
    accounting(res)
    assert res.rows_accepted == 2
    assert res.quarantined["reason"].iloc[0].startswith("event: expected one event per (device_id")


def test_feedback_schema():
    res = validate_feedback(feedback(2).drop(columns=["at"]), LABELS, {"7"}, now=NOW)
    accounting(res)
    assert not res.ok and "missing column(s) ['at']" in res.batch_failures[0] and res.rows_quarantined == 2


# ---- no PII ----------------------------------------------------------------------------------
def test_no_pii_after_redaction_and_catches_leftovers():
    df = pd.DataFrame({"message_id": ["a", "b", "c", "d", "e"],
                       "text": ["cancel order 113542617735902", "mail me at jo@example.com",
                                "card 4111 1111 1111 1111", "IBAN GB82 WEST 1234 5698 7654 32", "hello"]})
    before = validate_no_pii(df)
    accounting(before)
    assert before.rows_accepted == 1
    r = reasons(before)
    assert r["a"] == "text: expected no personal data after redaction; got ['ORDER_ID']"
    assert r["b"].endswith("['EMAIL']") and r["c"].endswith("['CARD']") and r["d"].endswith("['IBAN']")
    redacted, counts = redact_frame(df)
    after = validate_no_pii(redacted)
    assert after.ok and after.rows_accepted == 5
    assert counts["ORDER_ID"] == counts["EMAIL"] == counts["CARD"] == counts["IBAN"] == 1


def test_no_pii_hidden_with_zero_width_characters_is_caught():
    res = validate_no_pii(pd.DataFrame({"message_id": ["z"], "text": ["card 4111\u200b1111\u200b1111\u200b1111"]}))
    assert res.rows_quarantined == 1 and "CARD" in res.quarantined["reason"].iloc[0]


def test_no_pii_hostile_values_and_missing_column():
    df = pd.DataFrame({"message_id": ["a", "b", "c"], "text": pd.Series([None, 12, "bad \ud800"], dtype=object)})
    res = validate_no_pii(df)
    accounting(res)
    assert res.rows_quarantined == 2 and all(r.startswith("text: expected a string") for r in
                                             res.quarantined["reason"])
    res = validate_no_pii(df, column="body")
    accounting(res)
    assert not res.ok and "missing column(s) ['body']" in res.batch_failures[0]


def test_quarantined_rows_of_every_contract_can_be_stored_in_the_lake(tmp_path):
    from data_contracts.lake import Lake

    teacher = soft(["cancel_order", "track_order"])
    teacher["probs"] = pd.Series([[0.5, 0.6, 0.1], np.array([0.1, 0.9, 0.0])], dtype=object)
    teacher["confidence"] = pd.Series([0.5, "x"], dtype=object)
    results = [validate_teacher_labels(teacher, LABELS, None),
               validate_feedback(feedback(2, accepted=["yes", None]), LABELS, {"7"}, now=NOW),
               validate_no_pii(pd.DataFrame({"message_id": ["a"], "text": ["x@y.com \ud800"]}, dtype=object))]
    lake = Lake(tmp_path)
    stored = sum(lake.quarantine(r.quarantined) for r in results)
    assert stored == sum(r.rows_quarantined for r in results) == 5
    assert set(lake.quarantined()["contract"]) == {"teacher_labels@1", "feedback@1", "no_pii@1"}


def test_results_json_is_strict_json_for_mlflow():
    import json

    teacher = soft(["cancel_order", "track_order"])
    teacher["probs"] = pd.Series([np.array([0.5, 0.6, 0.1]), [np.nan, 1.0, 0.0]], dtype=object)
    teacher["confidence"] = [np.float32(0.5), np.inf]
    bad_time = feedback(2, at=[NOW + pd.Timedelta(days=3), pd.Timestamp("1990-01-01", tz="UTC")])
    for res in (validate_teacher_labels(teacher, LABELS, None),
                validate_feedback(bad_time, LABELS, {"7"}, now=NOW),
                validate_no_pii(pd.DataFrame({"text": []}, dtype=object))):
        accounting(res)
        blob = json.loads(json.dumps(res.results_json, allow_nan=False))
        assert blob["contract"] == res.contract and blob["validations"]
    assert res.rows_in == 0 and res.ok  # no_pii on zero rows is fine: nothing to leak
