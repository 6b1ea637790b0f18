"""Arrival sources: an inbox read once per file, a SQL table read once per row past a watermark."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from data_contracts.arrivals import list_inbox, read_inbox, read_sql
from data_contracts.datasets import load_dataset
from edgeloop.config import DatasetConfig
from pg_server import postgres_server

CFG = DatasetConfig(text_column="instruction", label_column="intent")


def _reader(path):
    return load_dataset(CFG, path=path, require_labels=False).rename(columns={"label": "gold_label"})


class _Ledger(dict):
    def seen(self, key):
        return self.get(key)

    def record(self, key, rec):
        self[key] = rec


def _csv(rows: list[tuple[str, str]]) -> str:
    return "instruction,intent\n" + "".join(f'"{t}",{y}\n' for t, y in rows)


@pytest.fixture(params=["file", "memory"])
def inbox(request, tmp_path):
    import fsspec

    if request.param == "file":
        yield str(tmp_path / "inbox")
        return
    url = f"memory://inbox-{tmp_path.name}"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)


def _put(url: str, name: str, text: str) -> None:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(f"{root}/{name}", text.encode())


def test_inbox_reads_each_file_once_and_rejects_bad_files_with_a_reason(inbox):
    import fsspec

    _put(inbox, "day1.csv", _csv([("where is my order", "track_order"), ("refund please", "get_refund")]))
    _put(inbox, "broken.csv", "question,answer\nhi,there\n")
    _put(inbox, "landing.csv.partial", _csv([("half written", "x")]))
    ledger = _Ledger()
    batches, rejected = read_inbox(inbox, _reader, ledger.seen, ledger.record)
    assert [b.name for b in batches] == ["day1.csv"]
    assert batches[0].rows["text"].tolist() == ["where is my order", "refund please"]
    assert [r.name for r in rejected] == ["broken.csv"]
    assert "column(s) ['instruction'] not found" in rejected[0].reason
    fs, root = fsspec.core.url_to_fs(inbox)
    assert fs.exists(f"{root}/rejected/broken.csv")
    assert "not found" in fs.cat_file(f"{root}/rejected/broken.csv.reason.txt").decode()
    # Not committed yet (a kill here): the next read sees the same file again, nothing is lost.
    again, _ = read_inbox(inbox, _reader, ledger.seen, ledger.record)
    assert [b.name for b in again] == ["day1.csv"]
    again[0].commit()
    assert fs.exists(f"{root}/processed/day1.csv")
    assert list_inbox(inbox) == []  # the half-written file is never listed
    assert read_inbox(inbox, _reader, ledger.seen, ledger.record) == ([], [])
    # The same bytes under another name are not ingested twice.
    _put(inbox, "day1-resent.csv", _csv([("where is my order", "track_order"), ("refund please", "get_refund")]))
    batches, _ = read_inbox(inbox, _reader, ledger.seen, ledger.record)
    assert batches == []
    assert fs.exists(f"{root}/processed/day1-resent.csv")


def test_inbox_that_does_not_exist_is_empty(tmp_path):
    assert list_inbox(str(tmp_path / "nope")) == []


def test_sql_reads_rows_after_the_watermark_exactly_once():
    import sqlalchemy as sa

    with postgres_server() as url:
        engine = sa.create_engine(url)
        t0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.timezone.utc)
        with engine.begin() as c:
            c.execute(sa.text("CREATE TABLE helpdesk (id integer PRIMARY KEY, created_at timestamptz, "
                              "body text, topic text)"))
            # Three rows share one timestamp: the id breaks the tie.
            c.execute(sa.text("INSERT INTO helpdesk VALUES (1, :t, 'a', 'x'), (2, :t, 'b', NULL), "
                              "(3, :t, 'c', 'y'), (4, :t2, 'd', NULL)"),
                      {"t": t0, "t2": t0 + dt.timedelta(hours=1)})
        kw = dict(table="helpdesk", query="", watermark_column="created_at", id_column="id",
                  text_column="body", label_column="topic")
        rows, wm = read_sql(url, watermark=None, limit=2, **kw)
        assert rows["text"].tolist() == ["a", "b"]
        assert rows["gold_label"].tolist()[0] == "x" and pd.isna(rows["gold_label"].tolist()[1])
        # Killed before the commit: the same rows come back, so nothing is lost.
        again, wm_again = read_sql(url, watermark=None, limit=2, **kw)
        assert again["text"].tolist() == ["a", "b"] and wm_again == wm
        rows, wm = read_sql(url, watermark=wm, limit=10, **kw)
        assert rows["text"].tolist() == ["c", "d"]
        rows, wm_none = read_sql(url, watermark=wm, limit=10, **kw)
        assert rows.empty and wm_none is None
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO helpdesk VALUES (5, :t, 'late tie', NULL)"), {"t": t0 + dt.timedelta(hours=1)})
        rows, _ = read_sql(url, watermark=wm, limit=10, **kw)
        assert rows["text"].tolist() == ["late tie"]
        # A query instead of a table, and a clear error for a bad one.
        rows, _ = read_sql(url, watermark=None, limit=10, **{**kw, "table": "",
                                                            "query": "SELECT * FROM helpdesk WHERE id > 3"})
        assert rows["text"].tolist() == ["d", "late tie"]
        with pytest.raises(ValueError, match="arrivals.sql: the query failed"):
            read_sql(url, watermark=None, limit=10, **{**kw, "table": "no_such_table"})
        engine.dispose()
