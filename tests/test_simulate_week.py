"""The week benchmark's own check that the teacher labelled the deferred messages first can fail.

``benchmarks/simulate_week.py`` reports "deferred labelled first" from the label parts a night
wrote (one per relabel shard, rows in the order labelled); this pins what that check accepts.
"""

from __future__ import annotations

import pandas as pd

from benchmarks.simulate_week import relabel_order


def _part(home, name: str, ids: list[str]) -> None:
    folder = home / "lake" / "labels" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"message_id": ids}).to_parquet(folder / f"part-{name}.parquet", index=False)


def test_deferred_first_in_every_new_part_and_all_labelled(tmp_path):
    _part(tmp_path, "old", ["x1", "x2"])  # written by an earlier night: not looked at
    before = set((tmp_path / "lake" / "labels").rglob("*.parquet"))
    _part(tmp_path, "a", ["d1", "d3", "s1", "s2"])
    _part(tmp_path, "b", ["d2", "s3"])
    assert relabel_order(tmp_path, before, {"d1", "d2", "d3"}) == \
        {"label_parts": 2, "deferred_labelled": 3, "deferred_labelled_first": True}


def test_a_deferred_message_after_a_stream_one_or_left_unlabelled_fails(tmp_path):
    _part(tmp_path, "a", ["d1", "s1", "d2"])
    assert relabel_order(tmp_path, set(), {"d1", "d2"})["deferred_labelled_first"] is False
    assert relabel_order(tmp_path, set(), {"d1", "d2", "d9"})["deferred_labelled_first"] is False
