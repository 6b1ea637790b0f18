"""Device feedback into the lake: feedback@1, corrections as gold, texts screened like any arrival;
messages the devices deferred arrive with ``source="deferred"`` (the teacher labels them first)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from data_contracts.ingest import screen_and_store
from data_contracts.lake import Lake
from edgeloop.config import ContractsConfig

log = logging.getLogger(__name__)
#: The lake ``source`` of messages devices deferred (models/relabel.py labels them first).
DEFERRED_SOURCE = "deferred"


@dataclass
class FeedbackReport:
    """What one feedback ingest did; ``events_in == events_accepted + events_quarantined``."""

    files: int = 0
    events_in: int = 0
    events_seen_before: int = 0
    events_accepted: int = 0
    events_quarantined: int = 0
    events_added: int = 0
    corrections_added: int = 0
    messages_added: int = 0
    deferred_in: int = 0          # deferral records read (each a message a device was unsure of)
    deferred_added: int = 0       # of their messages, new to the lake (source "deferred")
    deferred_by_cloud: int = 0    # records the cloud answered
    deferred_flagged: int = 0     # records the device answered itself: cloud down, or no cloud
    contracts: list[dict] = field(default_factory=list)
    moved_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


_EVENT_KEY = ["device_id", "message_id", "at"]  # what feedback@1 keeps unique


def _validated_events(fresh: pd.DataFrame, labels: list[str], known_versions: set[str], now: datetime):
    """Run feedback@1 on the contract's columns and give accepted rows back their event_id and text."""
    from data_contracts.contracts import FEEDBACK_COLUMNS, validate_feedback

    result = validate_feedback(fresh[FEEDBACK_COLUMNS], labels, known_versions, now=now)
    # The contract keeps the first of each (device, message, at), so that key finds the row again.
    extra = fresh.drop_duplicates(_EVENT_KEY)[_EVENT_KEY + ["event_id", "text"]]
    accepted = result.accepted.merge(extra, on=_EVENT_KEY, how="left", validate="one_to_one")
    return result, accepted


def ingest_feedback(lake: Lake, inbox: Path, processed: Path, labels: list[str], known_versions: set[str],
                    now: datetime | None = None, contracts: ContractsConfig | None = None) -> FeedbackReport:
    """Feedback files in ``inbox`` into the lake; processed files move to ``processed/<date>/``.

    Events are validated with ``feedback@1`` (rejects are quarantined, never dropped). A corrected
    prediction becomes gold: a correction (``lake.append_corrections``) and, with its redacted
    text, a message with ``source="feedback"`` and the corrected label. Accepted predictions are
    *not* gold (users accept wrong answers out of habit, and the model would learn its own
    mistakes); their text comes in unlabeled, so the teacher labels real device traffic, and the
    event itself measures the canary. Idempotent: events already in ``lake/feedback`` (by
    ``event_id``) are skipped, the events are written last (after messages and corrections) and
    files move only after every write succeeded, so a crash at any point is repaired by a rerun.

    Deferral records go first: their redacted texts become messages with ``source="deferred"``
    through the same contracts, once per message id (a message already in the lake stays as it
    is). The cloud's answer is not gold: the teacher labels these messages, first (models/relabel.py).
    """
    from data_contracts.feedback_inbox import collect
    from edge.feedback import FIELDS

    now = now or datetime.now(timezone.utc)
    inbox, processed = Path(inbox), Path(processed)
    files = sorted(inbox.rglob("*.jsonl")) if inbox.is_dir() else []  # snapshot: later drops wait
    report = FeedbackReport(files=len(files))
    if not files:
        return report
    records, deferrals = collect(inbox)
    if deferrals:
        _deferred_messages(lake, deferrals, labels, now, report, contracts)
    events = pd.DataFrame(records, columns=list(FIELDS))
    # Devices write ISO strings; the contract checks real timestamps (unparseable → NaT → quarantined).
    events["at"] = pd.to_datetime(events["at"], utc=True, format="ISO8601", errors="coerce")
    fresh = events[~events["event_id"].isin(set(lake.feedback()["event_id"]))].reset_index(drop=True)
    report.events_in, report.events_seen_before = len(fresh), len(events) - len(fresh)
    if len(fresh):
        result, accepted = _validated_events(fresh, labels, known_versions, now)
        lake.quarantine(result.quarantined, at=now)
        report.contracts.append(result.summary())
        report.events_accepted, report.events_quarantined = result.rows_accepted, result.rows_quarantined
        _store_feedback(lake, accepted, labels, now, report, contracts)
    report.moved_to = str(_move_processed(files, inbox, processed / f"{now:%Y-%m-%d}"))
    log.info("feedback: %d file(s), %d new event(s), %d accepted, %d quarantined, %d correction(s), "
             "%d message(s) added; %d deferred message(s), %d new", report.files, report.events_in,
             report.events_accepted, report.events_quarantined, report.corrections_added, report.messages_added,
             report.deferred_in, report.deferred_added)
    return report


def _store_feedback(lake: Lake, accepted: pd.DataFrame, labels: list[str], now: datetime,
                    report: FeedbackReport, contracts: ContractsConfig | None) -> None:
    corrected = accepted[accepted["corrected_label"].notna()]
    with_text = accepted[accepted["text"].map(lambda v: isinstance(v, str) and bool(v.strip()))]
    if len(with_text):
        rows = pd.DataFrame({"message_id": with_text["message_id"].values, "text": with_text["text"].values,
                             "gold_label": with_text["corrected_label"].astype(object).where(
                                 with_text["corrected_label"].notna(), None).values})
        # A correction wins over an earlier accept of the same message.
        rows = rows.iloc[::-1].drop_duplicates("message_id").iloc[::-1]
        report.messages_added = _feedback_messages(lake, rows, labels, now, report, contracts)
    if len(corrected):
        report.corrections_added = lake.append_corrections(pd.DataFrame({
            "message_id": corrected["message_id"].astype(str).values,
            "gold_label": corrected["corrected_label"].astype(str).values,
            "at": list(pd.to_datetime(corrected["at"], utc=True, format="ISO8601"))}))
    report.events_added = len(lake.append_feedback(accepted))  # last: it marks the events as done


def _feedback_messages(lake: Lake, rows: pd.DataFrame, labels: list[str], now: datetime,
                       report: FeedbackReport, contracts: ContractsConfig | None) -> int:
    """Feedback texts through the same redaction and raw/no-PII contracts as any arrival."""
    added, results, _ = screen_and_store(lake, rows, "feedback", labels, now, contracts)
    report.contracts += [{**r.summary(), "source": "feedback"} for r in results]
    return added


def _deferred_messages(lake: Lake, deferrals: list[dict], labels: list[str], now: datetime,
                       report: FeedbackReport, contracts: ContractsConfig | None) -> None:
    """Deferred texts into the lake as unlabeled messages, ``source="deferred"``."""
    df = pd.DataFrame(deferrals)
    report.deferred_in = len(df)
    report.deferred_by_cloud = int((df["route"] == "cloud").sum())
    report.deferred_flagged = int(df["flag"].notna().sum())
    rows = df.drop_duplicates("message_id")[["message_id", "text"]].assign(gold_label=None).reset_index(drop=True)
    added, results, _ = screen_and_store(lake, rows, DEFERRED_SOURCE, labels, now, contracts)
    report.deferred_added = added
    report.contracts += [{**r.summary(), "source": DEFERRED_SOURCE} for r in results]


def _move_processed(files: list[Path], inbox: Path, dest: Path) -> Path:
    for path in files:
        target = dest / path.relative_to(inbox)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # the same name delivered twice in a day: keep both
            target = target.with_name(f"{target.stem}-{datetime.now(timezone.utc):%H%M%S%f}{target.suffix}")
        os.replace(path, target)
    return dest
