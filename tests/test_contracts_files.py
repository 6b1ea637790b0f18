"""Shop exports through data_contracts.datasets.load_dataset, then the contracts, on real and broken files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_contracts.contracts import validate_no_pii, validate_raw_messages
from data_contracts.datasets import DatasetError, load_dataset
from data_contracts.redaction import redact_frame
from edgeloop.config import DatasetConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "contracts"
NOW = pd.Timestamp("2025-06-01", tz="UTC")


def load(name: str, fmt: str = "csv", export: bool = False) -> pd.DataFrame:
    """Read a fixture as the labelled data set, or (``export``) as a shop's export of new messages."""
    cfg = DatasetConfig(path=str(FIXTURES / name), format=fmt, text_column="instruction", label_column="intent")
    return load_dataset(cfg, require_labels=not export)


def as_raw(df: pd.DataFrame) -> pd.DataFrame:
    """What ingestion hands the raw contract: the lake's columns."""
    return pd.DataFrame({"message_id": df["message_id"], "text": df["text"].astype(object),
                         "source": "stream", "gold_label": df["label"].astype(object),
                         "received_at": NOW - pd.Timedelta(hours=1)})


def test_embedded_newlines_quotes_and_commas_are_read_as_single_rows():
    df = load("embedded_newlines_quotes.csv")
    assert df["text"].tolist() == ["where is my order\nit was due monday",
                                   'he said "cancel it", so cancel, please', "comma, inside"]
    assert df["label"].tolist() == ["track_order", "cancel_order", "get_refund"]
    res = validate_raw_messages(as_raw(df), ["track_order", "cancel_order", "get_refund"], now=NOW)
    assert res.ok and res.rows_accepted == 3  # a newline inside a message is valid text


@pytest.mark.parametrize(("name", "where"), [("latin1.csv", r"byte 22 \(line 2\) is b'\\xe9'"),
                                           ("binary.csv", r"byte 3 \(line 1\)")])
def test_non_utf8_file_is_a_dataset_error_naming_the_byte(name, where):
    with pytest.raises(DatasetError, match=rf"is not valid UTF-8: {where}.*export the file as UTF-8"):
        load(name)


def test_empty_file_is_a_dataset_error():
    with pytest.raises(DatasetError, match="is empty"):
        load("empty.csv")


def test_header_only_file_is_a_dataset_error():
    with pytest.raises(DatasetError, match="has a header but no data rows"):
        load("header_only.csv", export=True)


def test_no_rows_at_all_stop_the_batch_in_the_contract():
    df = pd.DataFrame({"message_id": [], "text": [], "label": []})
    res = validate_raw_messages(as_raw(df), ["track_order"], now=NOW)
    assert res.batch_failures == ["rows: expected at least 1 row(s); got 0"]


def test_missing_configured_columns_are_named():
    with pytest.raises(DatasetError,
                       match=r"column\(s\) \['instruction', 'intent'\] not found; it has \['text', 'label'\]"):
        load("wrong_columns.csv")


@pytest.mark.parametrize("name,fragment", [
    ("ragged.csv", "could not be read as csv: .*Expected 2 fields in line 3, saw 4"),
    ("unterminated_quote.csv", "could not be read as csv: .*EOF inside string"),
])
def test_malformed_csv_is_a_dataset_error(name, fragment):
    with pytest.raises(DatasetError, match=fragment):
        load(name)


def test_malformed_jsonl_is_a_dataset_error():
    with pytest.raises(DatasetError, match="could not be read as jsonl"):
        load("malformed.jsonl", fmt="jsonl")


def test_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(DatasetConfig(path=str(tmp_path / "nope.csv")))


def test_utf8_bom_is_stripped_from_the_header():
    assert load("utf8_bom.csv")["text"].tolist() == ["hello"]


def test_nul_byte_and_crlf_survive_loading_and_the_contract_quarantines_the_nul():
    df = load("nul_crlf.csv")
    assert df["text"].tolist() == ["hel\x00lo there", "multi\r\nline"]
    res = validate_raw_messages(as_raw(df), ["track_order", "cancel_order"], now=NOW)
    assert res.rows_in == 2 and res.rows_accepted == 1
    assert res.quarantined["reason"].iloc[0].startswith("text: expected no control characters")


def test_blank_texts_and_duplicates_are_dropped_by_load_dataset():
    # Documented current behaviour (see the issue note): load_dataset drops blank texts and repeated
    # texts silently; 4 rows in the file, 1 out.
    assert load("blanks_and_dupes.csv")["text"].tolist() == ["hello"]


def test_non_string_text_in_an_export_is_kept_and_quarantined_not_lost():
    df = load("odd_values.jsonl", fmt="jsonl", export=True)
    assert df["text"].tolist() == ["hello", None]
    res = validate_raw_messages(as_raw(df), ["track_order"], now=NOW)
    assert res.rows_in == 2 and res.rows_accepted == 1 and res.rows_quarantined == 1
    assert "text" in res.quarantined["reason"].iloc[0]


def test_labelled_data_set_drops_rows_without_text_or_label():
    df = load("odd_values.jsonl", fmt="jsonl")
    assert df["text"].tolist() == ["hello"] and df["label"].tolist() == ["track_order"]


def test_bundled_bitext_passes_the_raw_and_no_pii_contracts_after_redaction():
    df = load_dataset(DatasetConfig())
    labels = sorted(df["label"].unique())
    raw = as_raw(df)
    res = validate_raw_messages(raw, labels, now=NOW)
    assert res.ok and res.rows_quarantined == 0 and res.rows_accepted == len(df) > 4000
    before = validate_no_pii(raw)
    redacted, counts = redact_frame(raw)
    after = validate_no_pii(redacted)
    assert before.rows_quarantined == counts["ORDER_ID"] + counts["INVOICE_ID"] > 500
    assert after.ok and after.rows_quarantined == 0
