"""Tonight's arrivals into the lake: redact, validate, quarantine, append, commit.

Arrivals are the inbox's new files, the SQL source's new rows, the next replayed stream batch
(the bundled demo), or a one-off export given as a file (:mod:`data_contracts.arrivals`). Seed rows (gold
labels, the cold start) are ingested on the first night. PII is redacted before any row, accepted
or quarantined, is written, and every row in is accounted for: accepted + quarantined.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from data_contracts.arrivals import Batch, Rejected, read_inbox, read_sql
from data_contracts.datasets import Split, load_dataset, message_id
from data_contracts.lake import Lake
from edgeloop.config import ContractsConfig, Settings

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
    items: list[dict] = field(default_factory=list)  # per source item: rows in / accepted / added / quarantined
    files_rejected: list[dict] = field(default_factory=list)  # whole items set aside, with the reason
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


def replays_stream(settings: Settings) -> bool:
    """Whether the split's stream is replayed as arrivals (the bundled demo's default)."""
    a = settings.arrivals
    if a.replay_stream is not None:
        return a.replay_stream
    return not (a.inbox or a.sql.url or settings.dataset.has_roles)


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"label": "gold_label"})[["message_id", "text", "gold_label"]]


def arrivals(settings: Settings, split: Split, lake: Lake, night: str,
             input_file: str | None) -> tuple[list[Batch], list[Rejected], int | None]:
    """Tonight's batches (rows ``message_id, text, gold_label`` each), refused files, stream index.

    ``input_file`` is a one-off import and replaces every other source tonight. Otherwise the
    inbox, the SQL source and (for the demo) the replayed stream each give their batches.
    """
    if input_file:
        df = load_dataset(settings.dataset, path=Path(input_file), require_labels=False)
        return [Batch("import", Path(input_file).name, "", _labelled(df))], [], None
    batches: list[Batch] = []
    rejected: list[Rejected] = []
    if settings.arrivals.inbox:
        def read(path: Path) -> pd.DataFrame:
            return _labelled(load_dataset(settings.dataset, path=path, require_labels=False))

        found, rejected = read_inbox(settings.arrivals.inbox, read, lambda h: lake.source_record("inbox", h),
                                     lambda h, rec: lake.record_source("inbox", h, {**rec, "night": night}))
        batches += found
    if settings.arrivals.sql.url:
        batches += _sql_batches(settings, lake, night)
    index = None
    if replays_stream(settings):
        record = lake.night_record(night)
        if record and record.get("batch_index") is not None:
            index = int(record["batch_index"])
        else:
            index = sum(1 for r in lake.nights() if r.get("batch_index") is not None)
        batch = split.stream_batch(index, settings.dataset.stream_batch_size)
        # The stream's labels stay hidden: the teacher labels these rows.
        batches.append(Batch("stream", f"stream batch {index}", str(index),
                             batch.assign(gold_label=None)[["message_id", "text", "gold_label"]]))
    return batches, rejected, index


def _sql_batches(settings: Settings, lake: Lake, night: str) -> list[Batch]:
    sql = settings.arrivals.sql
    mark = lake.source_record("sql", "watermark")
    rows, new = read_sql(sql.url, table=sql.table, query=sql.query, watermark_column=sql.watermark_column,
                         id_column=sql.id_column, text_column=sql.text_column or settings.dataset.text_column,
                         label_column=sql.label_column, watermark=mark, limit=sql.batch_limit)
    if new is None:
        return []
    rows = rows.assign(message_id=None)[["message_id", "text", "gold_label"]]
    return [Batch("sql", f"{len(rows)} row(s) of {sql.table or 'the query'}", json.dumps(new, sort_keys=True),
                  rows, lambda: lake.record_source("sql", "watermark", {**new, "night": night}))]


def screen_and_store(lake: Lake, rows: pd.DataFrame, source: str, labels: list[str], now: datetime,
                     contracts: ContractsConfig | None = None,
                     quarantine_on_failure: bool = True) -> tuple[int, list, dict[str, int]]:
    """Redact ``rows``, run the raw and no-PII contracts, quarantine rejects, append the rest.

    Returns (rows added to the lake, [raw result, no-PII result], redaction counts). Nothing is
    appended when either contract has a batch-level failure.
    """
    from data_contracts.contracts import validate_no_pii, validate_raw_messages

    c = contracts or ContractsConfig()
    redacted, counts = redact_messages(rows.assign(source=source, received_at=pd.Timestamp(now)))
    raw = validate_raw_messages(redacted, labels, min_rows=c.min_rows, max_chars=c.max_chars,
                                min_chars=c.min_chars, now=now)
    pii = validate_no_pii(raw.accepted)
    ok = raw.ok and pii.ok
    if ok or quarantine_on_failure:  # a batch set aside whole keeps its rows in its own file instead
        for result in (raw, pii):
            lake.quarantine(result.quarantined, at=now)
    added = lake.append_messages(pii.accepted, source=source, received_at=now) if ok else 0
    return added, [raw, pii], counts


def _store_batch(lake: Lake, batch: Batch, labels: list[str], now: datetime, report: IngestReport,
                 results: list, settings: Settings) -> int:
    """Screen and store one batch and commit it; an inbox file that fails a batch check is set aside."""
    added, (raw, pii), counts = screen_and_store(lake, batch.rows, batch.source, labels, now, settings.contracts,
                                                 quarantine_on_failure=batch.reject is None)
    failures = [f"{r.contract}: {f}" for r in (raw, pii) for f in r.batch_failures]
    if failures and batch.reject is not None:  # the file goes to rejected/ whole; the other files go on
        reason = f"{batch.name}: " + "; ".join(failures)
        batch.reject(reason)
        report.files_rejected.append({"source": batch.source, "name": batch.name, "reason": reason})
        return 0
    for k, v in counts.items():
        report.redactions[k] = report.redactions.get(k, 0) + int(v)
    results += [raw, pii]
    for result in (raw, pii):
        report.contracts.append({**result.summary(), "source": batch.source, "item": batch.name})
    report.batch_failures += failures
    report.rows_in += raw.rows_in
    report.rows_accepted += pii.rows_accepted
    report.rows_quarantined += raw.rows_quarantined + pii.rows_quarantined
    report.items.append({"source": batch.source, "name": batch.name, "rows_in": raw.rows_in,
                         "rows_accepted": pii.rows_accepted, "rows_added": added,
                         "rows_quarantined": raw.rows_quarantined + pii.rows_quarantined})
    if not failures:
        batch.commit()  # after the append: a kill before this re-reads the item, and the lake dedups
    return added


def ingest_night(settings: Settings, split: Split, lake: Lake, night: str, input_file: str | None = None,
                 now: datetime | None = None) -> IngestReport:
    """Ingest the seed (first night only, idempotent) and tonight's arrivals into ``lake``."""
    now = now or datetime.now(timezone.utc)
    batches, rejected, index = arrivals(settings, split, lake, night, input_file)
    source = "+".join(dict.fromkeys(b.source for b in batches)) or "none"
    report = IngestReport(night, source, index, 0, 0, 0, 0, 0,
                          files_rejected=[{"source": r.source, "name": r.name, "reason": r.reason} for r in rejected])
    results: list = []
    if not lake.has_source("seed"):  # cold start: the gold-labelled seed goes in once
        seed = Batch("seed", "seed", "", _labelled(split.seed))
        report.seed_rows_added = _store_batch(lake, seed, split.labels, now, report, results, settings)
    for batch in batches:
        if batch.rows.empty:
            batch.commit()
            continue
        report.rows_added += _store_batch(lake, batch, split.labels, now, report, results, settings)
    if index is not None and not any(b.source == "stream" and len(b.rows) for b in batches):
        log.warning("the replayed stream is used up (batch %s): tonight trains on what the lake holds", index)
    from data_contracts.contracts import write_report

    report.report_files = [str(p) for p in write_report(
        results, settings.home_path() / "work" / night / "contracts" / "ingest")]
    if report.ok:
        lake.record_night(night, {"night": night, "source": source, "batch_index": index,
                                  "input_file": input_file, "rows_added": report.rows_added,
                                  "files_rejected": len(report.files_rejected), "ingested_at": now.isoformat()})
    log.info("ingest %s: %d in, %d accepted, %d quarantined, %d new in the lake (seed +%d), %d file(s) rejected; "
             "redactions %s", source, report.rows_in, report.rows_accepted, report.rows_quarantined,
             report.rows_added, report.seed_rows_added, len(report.files_rejected), report.redactions)
    for r in report.files_rejected:
        log.warning("rejected %s", r["reason"])
    return report
