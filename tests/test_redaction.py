"""edge.redact / data_contracts.redaction: what is replaced, what is left alone, on real Bitext text."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_contracts.redaction import find_pii, redact_frame
from edge.redact import PLACEHOLDERS, iban_ok, luhn_ok, redact

BITEXT = (Path(__file__).resolve().parent.parent / "data" / "bitext"
          / "Bitext_Sample_Customer_Support_Training_Dataset_v2023-08-18.csv")


@pytest.mark.parametrize("text,expected,kind", [
    ("how can I cancel purchase 113542617735902?", "how can I cancel purchase {ORDER_ID}?", "ORDER_ID"),
    ("need to cancel order 00004587345", "need to cancel order {ORDER_ID}", "ORDER_ID"),
    ("where is order #85632 please", "where is order {ORDER_ID} please", "ORDER_ID"),
    ("order number: AB-123456 is late", "order number: {ORDER_ID} is late", "ORDER_ID"),
    ("I try to locate oder 113542617735902", "I try to locate oder {ORDER_ID}", "ORDER_ID"),  # typo
    ("track order732201349959", "track order{ORDER_ID}", "ORDER_ID"),
    ("check invoice #12588", "check invoice {INVOICE_ID}", "INVOICE_ID"),
    ("find my bill #00108, thanks", "find my bill {INVOICE_ID}, thanks", "INVOICE_ID"),
    ("tracking number 1Z999AA10123456784", "tracking number {TRACKING_ID}", "TRACKING_ID"),
    ("my parcel RR123456789US is stuck", "my parcel {TRACKING_ID} is stuck", "TRACKING_ID"),
    ("tracking #: 9400111899223857268499", "tracking #: {TRACKING_ID}", "TRACKING_ID"),
    ("write to jane.doe+shop@mail.example.co.uk now", "write to {EMAIL} now", "EMAIL"),
    ("call me at +1 (555) 123-4567", "call me at {PHONE}", "PHONE"),
    ("my number is 555-123-4567.", "my number is {PHONE}.", "PHONE"),
    ("ring +44 20 7946 0958 today", "ring {PHONE} today", "PHONE"),
    ("phone: 0123456789", "phone: {PHONE}", "PHONE"),
    ("(555) 123 4567", "{PHONE}", "PHONE"),
    ("paid with 4111 1111 1111 1111 yesterday", "paid with {CARD} yesterday", "CARD"),
    ("card 5555-5555-5555-4444", "card {CARD}", "CARD"),
    ("amex 378282246310005", "amex {CARD}", "CARD"),
    ("iban DE89 3704 0044 0532 0130 00 please", "iban {IBAN} please", "IBAN"),
    ("IBAN: GB82WEST12345698765432.", "IBAN: {IBAN}.", "IBAN"),
    ("ship to 12 Main Street, Apt 4B please", "ship to {ADDRESS} please", "ADDRESS"),
    ("I moved to 1600 Pennsylvania Avenue NW", "I moved to {ADDRESS}", "ADDRESS"),
    ("send it to 221B baker st. asap", "send it to {ADDRESS} asap", "ADDRESS"),
    ("Lieferung an Hauptstraße 5, Berlin", "Lieferung an {ADDRESS}, Berlin", "ADDRESS"),
    ("use P.O. Box 1234", "use {ADDRESS}", "ADDRESS"),
])
def test_each_type_is_replaced(text, expected, kind):
    out, counts = redact(text)
    assert out == expected
    assert counts == {kind: 1}
    assert PLACEHOLDERS[kind] in out


@pytest.mark.parametrize("text", [
    "reimburse $350", "i paid 1499 dollars for thisorder", "refunding$299", "I expect a refund of $1,200.50",
    "I paid $150000 for this", "150000 dollars is a lot", "I paid USD 150000", "EUR150000",
    "order 150000 usd", "1,000,000 euros", "I want to order 2 items",
    "checking invoice from 7 purchases ago", "in 2024 I bought 3 shirts", "2 items on the way",
    "I waited 45 minutes on 5th Avenue", "card 4111 1111 1111 1112",  # Luhn-invalid: not a card
    "DE89 3704 0044 0532 0130 01",  # mod-97-invalid: not an IBAN (and its groups are too short for ids)
    "call me back later", "a@b", "version 1.2.3", "open 9-5 on weekdays", "{ORDER_ID} and {EMAIL}",
    "my account is Platinum", "see bill from Mr. Smith",  # names of people are out of scope
])
def test_normal_text_and_amounts_are_left_alone(text):
    assert redact(text) == (text, {})


def test_several_in_one_message_and_counts():
    text = "order 113542617735902 paid by 4111111111111111, mail a@b.io or a@b.io, call 555-123-4567"
    out, counts = redact(text)
    assert out == "order {ORDER_ID} paid by {CARD}, mail {EMAIL} or {EMAIL}, call {PHONE}"
    assert counts == {"ORDER_ID": 1, "CARD": 1, "EMAIL": 2, "PHONE": 1}


@pytest.mark.parametrize("text", [
    "cancel purchase 113542617735902", "mail me: x@y.com", "12 Main Street", "#00108",
    "DE89370400440532013000 and 4111 1111 1111 1111", "call +44 20 7946 0958", "plain words $350",
])
def test_redaction_is_idempotent(text):
    once, _ = redact(text)
    assert redact(once) == (once, {})


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112") and not luhn_ok("41a1")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and iban_ok("de89370400440532013000")
    assert not iban_ok("GB82 WEST 1234 5698 7654 33") and not iban_ok("GB82")


def test_non_string_input_is_a_type_error():
    with pytest.raises(TypeError, match="expects a str"):
        redact(None)  # type: ignore[arg-type]


def test_hostile_text_does_not_break_redaction():
    assert redact("x" * 1_000_000) == ("x" * 1_000_000, {})
    assert redact("9" * 100_000)[0] == "{ORDER_ID}"
    assert redact("bad \ud800 surrogate 113542617735902")[0] == "bad \ud800 surrogate {ORDER_ID}"
    assert redact("🙂 مرحبا order 113542617735902")[0] == "🙂 مرحبا order {ORDER_ID}"


def test_redact_frame_copies_and_counts():
    df = pd.DataFrame({"message_id": ["a", "b", "c"],
                       "text": pd.Series(["order 113542617735902", None, "hi x@y.com"], dtype=object)})
    out, counts = redact_frame(df)
    assert out["text"].tolist() == ["order {ORDER_ID}", None, "hi {EMAIL}"]
    assert df["text"].iloc[0] == "order 113542617735902"  # the input is untouched
    assert counts == dict.fromkeys(PLACEHOLDERS, 0) | {"ORDER_ID": 1, "EMAIL": 1}
    with pytest.raises(KeyError, match="body"):
        redact_frame(df, column="body")


def test_find_pii():
    assert find_pii("order 113542617735902 and a@b.co") == ["EMAIL", "ORDER_ID"]
    assert find_pii("nothing here") == [] and find_pii(None) == [] and find_pii(12) == []
    assert find_pii("a\u200b@\u200bb.com") == ["EMAIL"]  # zero-width characters do not hide it


def test_bitext_order_and_invoice_ids_are_all_redacted_and_amounts_kept():
    df = pd.read_csv(BITEXT, dtype=str, keep_default_na=False)
    out = df["instruction"].map(lambda t: redact(t)[0])
    tagged = df["entity_type"].isin(["order_id", "invoice_id"])
    # Every tagged order/invoice id is gone, and no digit run of 4+ is left in those rows.
    for text, value in zip(out[tagged], df.loc[tagged, "entity_value"]):
        assert value.lstrip("#") not in text
    assert not out[tagged].str.contains(r"\d{4,}").any()
    # Refund amounts ($350, 1499 dollars) are left as they were; account types, cities untouched.
    untouched = df["entity_type"].isin(["refund_amount", "account_type", "delivery_city", "delivery_country",
                                        "person_name", ""])
    assert (out[untouched] == df.loc[untouched, "instruction"]).all()
