"""Where a shop's new messages come from each night: an inbox of files, or a SQL table.

Both sources are read *at least once* and stored *exactly once*: the lake appends by content hash
(``message_id``), so a night killed between reading and committing re-reads the same rows the
next time and adds nothing twice. What a source commits after the lake append:

* **inbox** (a folder or any fsspec URL prefix): each file is keyed by the sha256 of its bytes in
  the lake's ledger; a committed file moves to ``processed/`` (or, on a read-only store, is only
  recorded). A file that fails its schema moves to ``rejected/`` with ``<name>.reason.txt``.
  The listing is taken once when the night starts: files that land later wait for the next night.
  Writers should drop files whole (write, then rename); names starting with ``.`` or ending in
  ``.tmp``/``.partial`` are never read.
* **sql** (a SQLAlchemy URL and a table or query): rows after the last committed
  ``(watermark, id)`` in that order; the new watermark is committed to the ledger after the append.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

PROCESSED, REJECTED = "processed", "rejected"
_SKIP_SUFFIXES = (".tmp", ".partial", ".reason.txt")


@dataclass
class Batch:
    """Rows from one source item (a file, a SQL range), and what to do once they are in the lake."""

    source: str  # "inbox" | "sql"
    name: str  # file name or a description of the SQL range
    key: str  # ledger key: content hash or the new watermark
    rows: pd.DataFrame  # message_id, text, gold_label
    commit: Callable[[], None] = field(repr=False, default=lambda: None)
    #: Set for items that can be set aside whole (an inbox file): called with the reason.
    reject: Callable[[str], None] | None = field(repr=False, default=None)


@dataclass
class Rejected:
    """A source item refused as a whole (e.g. a file without the configured columns)."""

    source: str
    name: str
    reason: str


# ---- inbox ------------------------------------------------------------------------------------
def _fs(url: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip("/")


def list_inbox(url: str) -> list[str]:
    """Files waiting in the inbox (not in processed/ or rejected/), oldest name first."""
    fs, root = _fs(url)
    if not fs.exists(root):
        return []
    out = []
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] != "file" or name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
            continue
        out.append(entry["name"])
    return sorted(out)


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _move(fs, path: str, folder: str, reason: str | None = None) -> bool:
    """Move ``path`` into ``folder`` beside it; False on a store that refuses writes."""
    parent, name = path.rsplit("/", 1)
    dest = f"{parent}/{folder}"
    try:
        fs.makedirs(dest, exist_ok=True)
        if reason is not None:
            fs.pipe_file(f"{dest}/{name}.reason.txt", reason.encode())
        fs.mv(path, f"{dest}/{name}")
        return True
    except (PermissionError, OSError, NotImplementedError) as exc:
        log.warning("inbox: could not move %s to %s/ (%s); it is recorded in the ledger instead", path, folder, exc)
        return False


def read_inbox(url: str, read_file: Callable[[Path], pd.DataFrame], seen: Callable[[str], dict | None],
               record: Callable[[str, dict], None]) -> tuple[list[Batch], list[Rejected]]:
    """Read every inbox file not ingested before.

    Args:
        url: the inbox folder or fsspec URL prefix.
        read_file: parses one local file into ``message_id, text, gold_label`` or raises ValueError
            naming what is wrong (the configured format and columns).
        seen: the ledger record of a content hash, or None.
        record: writes the ledger record of a content hash.

    Returns the batches to ingest (each ``commit`` records the hash, then moves the file to
    processed/) and the files rejected as a whole (already moved to rejected/ with a reason).
    """
    import tempfile

    fs, _ = _fs(url)
    batches, rejected = [], []
    for path in list_inbox(url):
        name = path.rsplit("/", 1)[-1]
        data = fs.cat_file(path)
        digest = file_hash(data)
        prior = seen(digest)
        if prior is not None:  # ingested before (a kill after commit, or the same file sent twice)
            log.info("inbox: %s has the content of %s ingested on %s; not read again",
                     name, prior.get("name"), prior.get("night"))
            _move(fs, path, PROCESSED)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / name
            local.write_bytes(data)
            try:
                rows = read_file(local)
            except ValueError as exc:
                reason = f"{name}: {exc}"
                _move(fs, path, REJECTED, reason)
                rejected.append(Rejected("inbox", name, reason))
                continue

        def commit(path=path, name=name, digest=digest, n=len(rows)) -> None:
            record(digest, {"name": name, "rows": n})
            _move(fs, path, PROCESSED)

        def reject(reason: str, path=path) -> None:
            _move(fs, path, REJECTED, reason)

        batches.append(Batch("inbox", name, digest, rows, commit, reject))
    return batches, rejected


# ---- SQL --------------------------------------------------------------------------------------
def _encode(value) -> dict:
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    return {"type": type(value).__name__, "value": value}


def _decode(blob: dict):
    kind, value = blob["type"], blob["value"]
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    return value


def read_sql(url: str, *, table: str, query: str, watermark_column: str, id_column: str,
             text_column: str, label_column: str, watermark: dict | None, limit: int) -> tuple[pd.DataFrame, dict | None]:
    """Rows after ``watermark`` (a ledger blob or None), oldest first, and the watermark after them.

    Returns ``(rows with text, gold_label, <watermark>, <id>), new watermark or None if no rows)``.
    """
    import sqlalchemy as sa

    if bool(table) == bool(query):
        raise ValueError("arrivals.sql: set exactly one of `table` or `query`")
    engine = sa.create_engine(url)
    try:
        q = engine.dialect.identifier_preparer.quote
        source = " ".join(q(p) for p in table.split(".")).replace(" ", ".") if table else f"({query}) AS src"
        wm, idc = q(watermark_column), q(id_column)
        cols = [text_column, watermark_column, id_column] + ([label_column] if label_column else [])
        select = ", ".join(q(c) for c in dict.fromkeys(cols))
        where = ""
        params: dict = {"limit": int(limit)}
        if watermark is not None:
            where = f"WHERE {wm} > :wm OR ({wm} = :wm AND {idc} > :id)"
            params.update(wm=_decode(watermark["watermark"]), id=_decode(watermark["id"]))
        sql = sa.text(f"SELECT {select} FROM {source} {where} ORDER BY {wm}, {idc} LIMIT :limit")
        try:
            with engine.connect() as conn:
                df = pd.read_sql(sql, conn, params=params)
        except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
            cause = exc.__cause__ or exc
            detail = str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]
            raise ValueError(f"arrivals.sql: the query failed: {detail}") from None
    finally:
        engine.dispose()
    if df.empty:
        return df, None
    last = df.iloc[-1]
    new = {"watermark": _encode(last[watermark_column]), "id": _encode(last[id_column])}
    out = pd.DataFrame({"text": df[text_column],
                        "gold_label": df[label_column] if label_column else None})
    return out, new
