"""Tonight's arrivals into the lake: redact, validate, quarantine, append.

Arrivals are the next replayed stream batch, or a shop's export given as a file. Seed rows (gold
labels, the cold start) are ingested on the first night. PII is redacted before any row, accepted
or quarantined, is written, and every row in is accounted for: accepted + quarantined.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from data_contracts.datasets import Split, load_dataset, message_id
from data_contracts.lake import Lake
from edgeloop.config import Settings

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest did; ``rows_in == rows_accepted + rows_quarantined`` per contract."""

    night: str
    source: str
    batch_index: int | None
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    rows_added: int
    seed_rows_added: int
    redactions: dict[str, int] = field(default_factory=dict)
    contracts: list[dict] = field(default_factory=list)
    batch_failures: list[str] = field(default_factory=list)
    report_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.batch_failures

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def redact_messages(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Redact the ``text`` column and re-key rows by the hash of the redacted text."""
    from data_contracts.redaction import redact_frame

    out, counts = redact_frame(df, column="text")
    is_text = out["text"].map(lambda v: isinstance(v, str))
    out.loc[is_text, "message_id"] = out.loc[is_text, "text"].map(message_id)
    return out, counts


def arrivals(settings: Settings, split: Split, lake: Lake, night: str,
             input_file: str | None) -> tuple[pd.DataFrame, str, int | None]:
    """Tonight's raw rows (``message_id, text, gold_label``), their source and stream batch index."""
    if input_file:
        df = load_dataset(settings.dataset, path=Path(input_file), require_labels=False)
        return df.rename(columns={"label": "gold_label"}), "import", None
    record = lake.night_record(night)
    if record and record.get("batch_index") is not None:
        index = int(record["batch_index"])
    else:
        index = sum(1 for r in lake.nights() if r.get("source") == "stream")
    batch = split.stream_batch(index, settings.dataset.stream_batch_size)
    # The stream's labels stay hidden: the teacher labels these rows.
    return batch.assign(gold_label=None)[["message_id", "text", "gold_label"]], "stream", index


def _validate_and_store(lake: Lake, rows: pd.DataFrame, source: str, labels: list[str], now: datetime,
                        report: IngestReport, results: list) -> int:
    from data_contracts.contracts import validate_no_pii, validate_raw_messages

    rows = rows.assign(source=source, received_at=pd.Timestamp(now))
    redacted, counts = redact_messages(rows)
    for k, v in counts.items():
        report.redactions[k] = report.redactions.get(k, 0) + int(v)
    raw = validate_raw_messages(redacted, labels, now=now)
    pii = validate_no_pii(raw.accepted)
    added = 0
    results += [raw, pii]
    for result in (raw, pii):
        lake.quarantine(result.quarantined, at=now)
        report.contracts.append({**result.summary(), "source": source})
        report.batch_failures += [f"{result.contract}: {f}" for f in result.batch_failures]
    if raw.ok and pii.ok:
        added = lake.append_messages(pii.accepted, source=source, received_at=now)
    report.rows_in += raw.rows_in
    report.rows_accepted += pii.rows_accepted
    report.rows_quarantined += raw.rows_quarantined + pii.rows_quarantined
    return added


def ingest_night(settings: Settings, split: Split, lake: Lake, night: str, input_file: str | None = None,
                 now: datetime | None = None) -> IngestReport:
    """Ingest the seed (first night only, idempotent) and tonight's arrivals into ``lake``."""
    now = now or datetime.now(timezone.utc)
    rows, source, index = arrivals(settings, split, lake, night, input_file)
    report = IngestReport(night, source, index, 0, 0, 0, 0, 0)
    results: list = []
    if not lake.has_source("seed"):  # cold start: the gold-labelled seed goes in once
        seed = split.seed.rename(columns={"label": "gold_label"})
        report.seed_rows_added = _validate_and_store(lake, seed, "seed", split.labels, now, report, results)
    if not rows.empty:
        report.rows_added = _validate_and_store(lake, rows, source, split.labels, now, report, results)
    elif source == "stream":
        log.warning("the replayed stream is used up (batch %s): tonight trains on what the lake holds", index)
    from data_contracts.contracts import write_report

    report.report_files = [str(p) for p in write_report(
        results, settings.home_path() / "work" / night / "contracts" / "ingest")]
    if report.ok:
        lake.record_night(night, {"night": night, "source": source, "batch_index": index,
                                  "input_file": input_file, "rows_added": report.rows_added,
                                  "ingested_at": now.isoformat()})
    log.info("ingest %s: %d in, %d accepted, %d quarantined, %d new in the lake (seed +%d); redactions %s",
             source, report.rows_in, report.rows_accepted, report.rows_quarantined, report.rows_added,
             report.seed_rows_added, report.redactions)
    return report
