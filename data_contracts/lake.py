"""The append-only lake: Parquet parts under ``<home>/lake``.

* ``messages/received_date=YYYY-MM-DD/part-<hash>.parquet``: one row per message, keyed by the
  content hash ``message_id``. Appending a message that is already there adds nothing.
* ``labels/<teacher_version>/part-<hash>.parquet``: teacher soft labels; the cache key is
  (message_id, teacher_version).
* ``vectors/<teacher_version>/received_date=.../part-<hash>.parquet``: the teacher's sentence
  vectors (float16) of messages, under their message's arrival date; written once per
  (message_id, teacher_version).
* ``augmented/<teacher_version>/received_date=.../part-<hash>.parquet``: teacher-labelled
  perturbed copies of messages (``parent_id, text, probs`` and a ``vector``), under the parent's
  arrival date; a message's copies are made once per teacher version.
* ``quarantine/received_date=.../part-<hash>.parquet``: rows a contract rejected, with a reason.
* ``feedback/received_date=.../part-<hash>.parquet``: edge feedback events, one per ``event_id``.
* ``nights/<night>.json``: the night ledger. Ingest records which stream batch a night read, so a
  rerun re-reads the same one; the night's end marks it completed (``completed_at`` and its
  outcome), so a completed night is not run again by mistake.

The root is a folder or any fsspec URL (``s3://bucket/lake``). Parts are named by the hash of
their content and written whole (a temporary name, then a rename), so a crash never leaves half a
file behind and a retried write adds no second copy. Reads go through ``pyarrow.dataset`` and
touch only what they need: the named columns, the named ``received_date`` partitions, and rows
filtered by id in Arrow (an append's dedup reads the ``message_id`` column, not the texts).
"""

from __future__ import annotations

import hashlib
import io
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from data_contracts.lake_ledger import Ledger
from data_contracts.lake_outputs import TeacherOutputs
from edge.feedback import FIELDS as FEEDBACK_FIELDS

#: ``lake/messages`` rows; the raw-messages contract checks exactly these.
MESSAGE_COLUMNS = ["message_id", "text", "source", "gold_label", "received_at"]
#: ``lake/feedback`` rows: a device's event without its text, which goes to ``lake/messages``
#: (keyed by ``message_id``) through the same redaction and contracts as any arrival.
FEEDBACK_LAKE_COLUMNS = [f for f in FEEDBACK_FIELDS if f != "text"]


class Lake(TeacherOutputs, Ledger):
    """Append-only Parquet store rooted at ``root``: a local folder or any fsspec URL (s3://, gs://, memory://)."""

    def __init__(self, root: str | Path):
        import fsspec

        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.root = self.root.rstrip("/")

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # ---- generic parts -----------------------------------------------------
    def _write_part(self, folder: str, df) -> str:
        """Write ``df`` (a DataFrame or an Arrow table) as one part of ``folder``; returns its path."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        if isinstance(df, pd.DataFrame):
            df.to_parquet(buf, index=False)
        else:
            pq.write_table(df, buf)
        data = buf.getvalue()
        # Named by content: writing the very same rows twice leaves one part.
        final = f"{folder}/part-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        if self.fs.exists(final):
            return final
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}.parquet"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, final)  # a rename on local disks: readers never see half a part
        return final

    def _files(self, folder: str, dates=None) -> list[str]:
        """Part files under ``folder``; with ``dates``, only those of these ``received_date`` partitions."""
        roots = [folder] if dates is None else [f"{folder}/received_date={d}" for d in sorted(set(dates))]
        return sorted(f for r in roots if self.fs.exists(r) for f in self.fs.find(r)
                      if f.rsplit("/", 1)[-1].startswith("part-") and f.endswith(".parquet"))

    def _dataset(self, folder: str, dates=None):
        """The parts of ``folder`` as one ``pyarrow.dataset`` (with its ``received_date`` partition
        column), or None when there are none."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        files = self._files(folder, dates)
        if not files:
            return None
        hive = ds.HivePartitioning(pa.schema([("received_date", pa.string())]))
        return ds.dataset(files, filesystem=self.fs, format="parquet", partitioning=hive,
                          partition_base_dir=folder)

    def _scan(self, folder: str, columns: list[str], ids=None, id_column: str = "message_id", dates=None,
              where=None):
        """Arrow table of ``columns`` of ``folder``: only the ``dates`` partitions, only rows whose
        ``id_column`` is in ``ids`` (and that match the expression ``where``); None when empty."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        data = self._dataset(folder, dates)
        if data is None:
            return None
        flt = where
        if ids is not None:
            flt = ds.field(id_column).isin(pa.array(list(ids), pa.string()))
            flt = flt if where is None else flt & where
            if set(columns) - {id_column, "received_date"}:
                # Two passes: the id column says which parts hold these rows; only those are read whole.
                hits = data.to_table(columns=["__filename"], filter=flt).column(0).unique().to_pylist()
                if not hits:
                    return data.to_table(columns=columns, filter=flt).slice(0, 0)
                hive = ds.HivePartitioning(pa.schema([("received_date", pa.string())]))
                data = ds.dataset(sorted(hits), filesystem=self.fs, format="parquet", partitioning=hive,
                                  partition_base_dir=folder)
        return data.to_table(columns=columns, filter=flt)

    def _frame(self, folder: str, columns: list[str], **kw) -> pd.DataFrame:
        table = self._scan(folder, columns, **kw)
        return pd.DataFrame(columns=columns) if table is None else table.to_pandas()

    def _read_parts(self, folder: str, columns: list[str] | None = None) -> pd.DataFrame:
        """Every part of ``folder``, read whole (small folders whose parts differ in columns: quarantine)."""
        files = self._files(folder)
        if not files:
            return pd.DataFrame(columns=columns or [])
        frames = []
        for f in files:
            with self.fs.open(f, "rb") as fh:
                frames.append(pd.read_parquet(fh, columns=columns))
        return pd.concat(frames, ignore_index=True)

    # ---- messages ------------------------------------------------------------
    @property
    def messages_dir(self) -> str:
        return self._path("messages")

    def partitions(self) -> dict[str, int]:
        """Rows per ``received_date`` partition of the messages (from the parts' footers only)."""
        data = self._dataset(self.messages_dir)
        counts: dict[str, int] = {}
        for frag in [] if data is None else data.get_fragments():
            date = frag.path.rsplit("received_date=", 1)[-1].split("/", 1)[0]
            counts[date] = counts.get(date, 0) + frag.count_rows()
        return dict(sorted(counts.items()))

    def append_messages(self, df: pd.DataFrame, source: str, received_at: datetime | None = None) -> int:
        """Append rows (``message_id, text`` and optional ``gold_label``) not yet in the lake.

        Returns the number of rows added; a second call with the same rows adds 0. The dedup reads
        only the lake's ``message_id`` column, filtered to this batch's ids in Arrow.
        """
        received_at = received_at or datetime.now(timezone.utc)
        batch = df.drop_duplicates("message_id")
        known = self._scan(self.messages_dir, ["message_id"], ids=batch["message_id"].astype(str))
        known_ids = set() if known is None else set(known.column(0).to_pylist())
        new = batch[~batch["message_id"].astype(str).isin(known_ids)]
        if new.empty:
            return 0
        out = pd.DataFrame({
            "message_id": new["message_id"].astype(str).values,
            "text": new["text"].astype(str).values,
            "source": source,
            "gold_label": (new["gold_label"] if "gold_label" in new else pd.Series([None] * len(new)))
            .astype("string").values,
            "received_at": pd.Timestamp(received_at).tz_convert("UTC"),
        })
        self._write_part(f"{self.messages_dir}/received_date={received_at:%Y-%m-%d}", out)
        return len(out)

    def has_source(self, source: str) -> bool:
        import pyarrow.dataset as ds

        table = self._scan(self.messages_dir, ["source"], where=ds.field("source") == source)
        return table is not None and table.num_rows > 0

    def messages(self, ids=None, dates=None, columns: list[str] | None = None) -> pd.DataFrame:
        """Messages (:data:`MESSAGE_COLUMNS`, or ``columns``; ``received_date`` is the partition),
        all or only those whose id is in ``ids`` / that arrived on ``dates``; one row per id."""
        df = self._frame(self.messages_dir, columns or MESSAGE_COLUMNS, ids=ids, dates=dates)
        return df.drop_duplicates("message_id", keep="first").reset_index(drop=True)

    def arrival(self, at=None) -> list[str]:
        """Ids of the messages stored by the ingest at ``at`` (a timestamp; default the latest one)."""
        table = self._scan(self.messages_dir, ["message_id", "received_at"])
        if table is None or table.num_rows == 0:
            return []
        df = table.to_pandas()
        at = df["received_at"].max() if at is None else pd.Timestamp(at)
        return df.loc[df["received_at"] == at, "message_id"].drop_duplicates().tolist()

    def gold_messages(self, columns: list[str]) -> pd.DataFrame:
        """``columns`` of the messages that arrived with a gold label (corrections not applied)."""
        import pyarrow.dataset as ds

        df = self._frame(self.messages_dir, columns, where=ds.field("gold_label").is_valid())
        return df.drop_duplicates("message_id", keep="first").reset_index(drop=True)

    # ---- gold label corrections (from feedback) -----------------------------
    def append_corrections(self, df: pd.DataFrame) -> int:
        """Record gold labels learnt after ingestion (``message_id, gold_label, at``; ``at`` is
        stored in UTC, a time without a zone taken as UTC)."""
        if df.empty:
            return 0
        df = df[["message_id", "gold_label", "at"]].assign(at=pd.to_datetime(df["at"], utc=True))
        self._write_part(self._path("corrections"), df)
        return len(df)

    def corrections(self) -> pd.DataFrame:
        """Every correction, ``at`` in UTC (parts written without a zone are read as UTC)."""
        df = self._read_parts(self._path("corrections"), ["message_id", "gold_label", "at"])
        return df.assign(at=pd.to_datetime(df["at"], utc=True)) if len(df) else df

    def training_messages(self) -> pd.DataFrame:
        """Messages with gold labels updated by the latest correction for each message."""
        msgs = self.messages()
        corr = self.corrections()
        if corr.empty:
            return msgs
        latest = corr.sort_values("at").drop_duplicates("message_id", keep="last").set_index("message_id")
        fix = msgs["message_id"].map(latest["gold_label"])
        msgs["gold_label"] = fix.where(fix.notna(), msgs["gold_label"])
        return msgs

    # ---- edge feedback ------------------------------------------------------------
    def append_feedback(self, df: pd.DataFrame) -> pd.DataFrame:
        """Append feedback events (:data:`FEEDBACK_LAKE_COLUMNS`) not yet in the lake.

        Idempotent by ``event_id``: returns the rows actually added (empty on a re-ingest).
        """
        new = df[~df["event_id"].isin(set(self.feedback()["event_id"]))].drop_duplicates("event_id")
        if new.empty:
            return new[FEEDBACK_LAKE_COLUMNS].reset_index(drop=True)
        out = new[FEEDBACK_LAKE_COLUMNS].reset_index(drop=True).astype(
            {"event_id": str, "device_id": str, "model_version": str, "message_id": str, "predicted": str,
             "accepted": bool})
        out["corrected_label"] = out["corrected_label"].astype("string")
        out["at"] = pd.to_datetime(out["at"], utc=True, format="ISO8601")
        day = out["at"].min()
        self._write_part(self._path("feedback", f"received_date={day:%Y-%m-%d}"), out)
        return out

    def feedback(self) -> pd.DataFrame:
        """Every feedback event in the lake, one row per ``event_id``."""
        df = self._read_parts(self._path("feedback"), FEEDBACK_LAKE_COLUMNS)
        return df.drop_duplicates("event_id", keep="first").reset_index(drop=True) if len(df) else df

    # ---- quarantine -----------------------------------------------------------
    def quarantine(self, df: pd.DataFrame, at: datetime | None = None) -> int:
        """Keep rejected rows (any columns plus ``reason`` and ``contract``); never dropped."""
        if df.empty:
            return 0
        at = at or datetime.now(timezone.utc)
        out = df.copy()
        for col in out.columns:  # rejected rows can hold anything; store it as text
            if col not in ("reason", "contract"):
                out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        out["quarantined_at"] = pd.Timestamp(at).tz_convert("UTC")
        self._write_part(self._path("quarantine", f"received_date={at:%Y-%m-%d}"), out)
        return len(out)

    def quarantined(self) -> pd.DataFrame:
        return self._read_parts(self._path("quarantine"))

    # ---- teacher labels --------------------------------------------------------
    def labels_dir(self, teacher_version: str) -> str:
        return self._path("labels", str(teacher_version))

    def labels(self, teacher_version: str, columns: list[str] | None = None, ids=None) -> pd.DataFrame:
        """Soft labels of this teacher version (every column, or ``columns``; all ids or ``ids``)."""
        folder = self.labels_dir(teacher_version)
        if columns is None:
            data = self._dataset(folder)
            columns = [] if data is None else [c for c in data.schema.names if c != "received_date"]
        df = self._frame(folder, columns, ids=ids)
        return df.drop_duplicates("message_id", keep="first").reset_index(drop=True) if len(df) else df

    def unlabeled_ids(self, teacher_version: str) -> list[str]:
        """Ids of the messages this teacher version has not labeled yet, in lake order (ids only)."""
        import pyarrow.compute as pc

        msgs = self._scan(self.messages_dir, ["message_id"])
        if msgs is None:
            return []
        done = self._scan(self.labels_dir(teacher_version), ["message_id"])
        ids = msgs.column(0) if done is None else msgs.column(0).filter(
            pc.invert(pc.is_in(msgs.column(0), value_set=done.column(0).combine_chunks())))
        return list(dict.fromkeys(ids.to_pylist()))

    def unlabeled(self, teacher_version: str) -> pd.DataFrame:
        """Messages this teacher version has not labeled yet (texts read for those rows only)."""
        ids = self.unlabeled_ids(teacher_version)
        msgs = self.messages(ids=ids) if ids else self.messages(ids=[])
        return msgs.set_index("message_id").loc[ids].reset_index() if ids else msgs

    def append_labels(self, teacher_version: str, df: pd.DataFrame) -> int:
        """Store soft labels (``message_id, probs, label, confidence``)."""
        if df.empty:
            return 0
        self._write_part(self.labels_dir(teacher_version), df)
        return len(df)
