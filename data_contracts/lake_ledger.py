"""The lake's ledgers: one JSON record per night, and per arrival source item (an inbox file's
content hash, the SQL watermark). Each record is written whole (a temporary name, then a rename).

A mixin of :class:`data_contracts.lake.Lake`: it uses the lake's ``fs`` and ``_path``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

#: The fields of a night's summary that its ledger record keeps once the night completed.
NIGHT_OUTCOME = ("mlflow_run_id", "model_version", "gate_decision")


class Ledger:
    """Night and source ledgers under ``<lake>/nights`` and ``<lake>/sources/<kind>``."""

    # ---- night ledger ---------------------------------------------------------
    def night_record(self, night: str) -> dict | None:
        """The ledger record of ``night``, or None before its ingest."""
        p = self._path("nights", f"{night}.json")
        return json.loads(self.fs.cat_file(p)) if self.fs.exists(p) else None

    def completed_night(self, night: str) -> dict | None:
        """The ledger record of ``night`` if the night ran to its summary, else None."""
        rec = self.night_record(night)
        return rec if rec and rec.get("completed_at") else None

    def complete_night(self, night: str, summary: dict) -> dict:
        """Mark ``night`` completed now, with the :data:`NIGHT_OUTCOME` fields of its ``summary``.

        Adds to the record ingest wrote (or starts one); returns the record.
        """
        rec = self.night_record(night) or {"night": night}
        rec.update({"completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **{k: summary.get(k) for k in NIGHT_OUTCOME}})
        self.record_night(night, rec)
        return rec

    def nights(self) -> list[dict]:
        folder = self._path("nights")
        if not self.fs.exists(folder):
            return []
        return [json.loads(self.fs.cat_file(p)) for p in sorted(self.fs.find(folder)) if p.endswith(".json")]

    def record_training(self, night: str, training: dict) -> None:
        """Add what ``night``'s student trained on (``kind``, row counts) to its ledger record."""
        self.record_night(night, {**(self.night_record(night) or {"night": night}), "training": training})

    def last_full_training(self) -> str | None:
        """The latest night whose student trained on the whole lake (a full retrain or a cold start)."""
        full = [r["night"] for r in self.nights() if (r.get("training") or {}).get("kind") in ("full", "cold")]
        return max(full) if full else None

    def record_night(self, night: str, record: dict) -> None:
        self._put_json("nights", night, record)

    # ---- arrival sources' ledger (inbox files by content hash, the SQL watermark) ----------------
    def source_record(self, kind: str, key: str) -> dict | None:
        """What the ledger holds for ``key`` of source ``kind`` (e.g. an inbox file's hash), or None."""
        p = self._path("sources", kind, f"{key}.json")
        return json.loads(self.fs.cat_file(p)) if self.fs.exists(p) else None

    def record_source(self, kind: str, key: str, record: dict) -> None:
        """Commit ``record`` for ``key`` of source ``kind`` (written whole: a temporary name, then a rename)."""
        self._put_json(f"sources/{kind}", key, record)

    def _put_json(self, folder: str, name: str, record: dict) -> None:
        folder = self._path(folder)
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(tmp, json.dumps(record, indent=2, sort_keys=True, default=str).encode())
        self.fs.mv(tmp, f"{folder}/{name}.json")

