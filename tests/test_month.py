"""Nights from an inbox, the way a shop runs them: a missed night, a bad file, a killed night.

A short version of ``benchmarks/simulate_month.py`` (which runs the whole month): every night
runs through the CLI in its own process and the ledger invariants are checked after each one
(rows in = accepted + quarantined, nothing twice, nothing lost, every file processed or rejected
with a reason).
"""

from __future__ import annotations

import pytest

from benchmarks.simulate_month import simulate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


def test_three_days_of_inbox_files_missed_and_killed_nights(tmp_path):
    result = simulate(tmp_path / "home", days=3, missed={2}, killed={3}, bad={2: "columns", 3: "hostile"})
    nights = [n for n in result["nights"] if not n.get("missed")]
    assert [n["day"] for n in nights] == [1, 3]
    first, last = nights
    # Night 3 took the missed night's file too: the good rows of day 3, the bad file set aside.
    assert last["files_rejected_tonight"] == ["export-02.csv"]
    assert last["quarantined"] == 3  # the three hostile rows of day 3, with reasons
    assert last["lake_messages"] > first["lake_messages"]
    assert last["killed_first"] and last["gate"] == "pass" and first["gate"] == "pass"
    assert result["champion_moves"] >= 1  # night 3's candidate passed and became champion
