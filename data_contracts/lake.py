"""The append-only lake: Parquet parts under ``<home>/lake``.

* ``messages/received_date=YYYY-MM-DD/part-<hash>.parquet``: one row per message, keyed by the
  content hash ``message_id``. Appending a message that is already there adds nothing.
* ``labels/<teacher_version>/part-<hash>.parquet``: teacher soft labels; the cache key is
  (message_id, teacher_version).
* ``quarantine/received_date=.../part-<hash>.parquet``: rows a contract rejected, with a reason.
* ``feedback/received_date=.../part-<hash>.parquet``: edge feedback events, one per ``event_id``.
* ``nights/<night>.json``: which stream batch a night ingested, so a rerun re-reads the same one.

Parts are written to a temporary name and renamed, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

MESSAGE_COLUMNS = ["message_id", "text", "source", "gold_label", "received_at"]
#: ``lake/feedback`` rows: the feedback contract's columns keyed by the device's ``event_id``.
FEEDBACK_LAKE_COLUMNS = ["event_id", "device_id", "model_version", "message_id", "predicted", "accepted",
                         "corrected_label", "at"]


class Lake:
    """Append-only Parquet store rooted at ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- generic parts -----------------------------------------------------
    def _write_part(self, folder: Path, df: pd.DataFrame) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{uuid.uuid4().hex}.parquet"
        df.to_parquet(tmp, index=False)
        # Named by content: writing the very same rows twice leaves one part.
        final = folder / f"part-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]}.parquet"
        os.replace(tmp, final)
        return final

    @staticmethod
    def _read_parts(folder: Path, columns: list[str] | None = None) -> pd.DataFrame:
        files = sorted(folder.rglob("part-*.parquet")) if folder.exists() else []
        if not files:
            return pd.DataFrame(columns=columns or [])
        frames = [pd.read_parquet(f, columns=columns) for f in files]
        return pd.concat(frames, ignore_index=True)

    # ---- messages ------------------------------------------------------------
    @property
    def messages_dir(self) -> Path:
        return self.root / "messages"

    def message_ids(self) -> set[str]:
        return set(self._read_parts(self.messages_dir, ["message_id"])["message_id"])

    def append_messages(self, df: pd.DataFrame, source: str, received_at: datetime | None = None) -> int:
        """Append rows (``message_id, text`` and optional ``gold_label``) not yet in the lake.

        Returns the number of rows added; a second call with the same rows adds 0.
        """
        received_at = received_at or datetime.now(timezone.utc)
        new = df[~df["message_id"].isin(self.message_ids())].drop_duplicates("message_id")
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
        self._write_part(self.messages_dir / f"received_date={received_at:%Y-%m-%d}", out)
        return len(out)

    def has_source(self, source: str) -> bool:
        return bool((self._read_parts(self.messages_dir, ["source"])["source"] == source).any())

    def messages(self) -> pd.DataFrame:
        df = self._read_parts(self.messages_dir, MESSAGE_COLUMNS)
        return df.drop_duplicates("message_id", keep="first").reset_index(drop=True)

    # ---- gold label corrections (from feedback) -----------------------------
    def append_corrections(self, df: pd.DataFrame) -> int:
        """Record gold labels learnt after ingestion (``message_id, gold_label, at``)."""
        if df.empty:
            return 0
        self._write_part(self.root / "corrections", df[["message_id", "gold_label", "at"]])
        return len(df)

    def corrections(self) -> pd.DataFrame:
        return self._read_parts(self.root / "corrections", ["message_id", "gold_label", "at"])

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
        self._write_part(self.root / "feedback" / f"received_date={day:%Y-%m-%d}", out)
        return out

    def feedback(self) -> pd.DataFrame:
        """Every feedback event in the lake, one row per ``event_id``."""
        df = self._read_parts(self.root / "feedback", FEEDBACK_LAKE_COLUMNS)
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
        self._write_part(self.root / "quarantine" / f"received_date={at:%Y-%m-%d}", out)
        return len(out)

    def quarantined(self) -> pd.DataFrame:
        return self._read_parts(self.root / "quarantine")

    # ---- teacher labels --------------------------------------------------------
    def labels_dir(self, teacher_version: str) -> Path:
        return self.root / "labels" / str(teacher_version)

    def labels(self, teacher_version: str) -> pd.DataFrame:
        df = self._read_parts(self.labels_dir(teacher_version))
        return df.drop_duplicates("message_id", keep="first").reset_index(drop=True) if len(df) else df

    def unlabeled(self, teacher_version: str) -> pd.DataFrame:
        """Messages this teacher version has not labeled yet."""
        msgs = self.messages()
        done = set(self.labels(teacher_version).get("message_id", pd.Series(dtype=str)))
        return msgs[~msgs["message_id"].isin(done)].reset_index(drop=True)

    def append_labels(self, teacher_version: str, df: pd.DataFrame) -> int:
        """Store soft labels (``message_id, probs, label, confidence``)."""
        if df.empty:
            return 0
        self._write_part(self.labels_dir(teacher_version), df)
        return len(df)

    # ---- night ledger ---------------------------------------------------------
    def night_record(self, night: str) -> dict | None:
        p = self.root / "nights" / f"{night}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def nights(self) -> list[dict]:
        folder = self.root / "nights"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def record_night(self, night: str, record: dict) -> None:
        folder = self.root / "nights"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{night}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        os.replace(tmp, folder / f"{night}.json")
