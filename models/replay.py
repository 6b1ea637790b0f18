"""Which lake rows a night's student trains on: everything, or tonight's rows plus a bounded replay.

A warm-started night trains on the rows its champion has not seen (messages that arrived after the
champion's training cut-off, and messages whose gold label was corrected since) plus
``student.replay_size`` earlier rows: a share from the gold rows (seed, corrections) and the rest
from a few randomly chosen past days, both sampled in proportion to each intent. So a night reads,
and trains on, about the same number of rows whatever the size of the lake.

A full retrain (``kind="full"``) trains on every labelled row; a cold start (no compatible champion)
does too. What a student was trained on is saved beside its weights (:data:`MARK_FILE`). Messages
of the calibration slice (:func:`models.calibration.in_calibration_slice`) are left out of every
kind, so no student ever trains on them (nor on their augmented copies, which follow their parents).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from data_contracts.lake import Lake
from edgeloop.config import StudentConfig
from models.calibration import in_calibration_slice

#: Beside a saved student: its training kind, row counts, and the cut-offs a warm start reads.
MARK_FILE = "training.json"
#: The replay's days hold at least this many times the rows it draws, so the sample has a choice.
POOL_FACTOR = 4
ROW_COLUMNS = ["message_id", "text", "gold_label", "received_at", "received_date"]


def read_mark(student_dir: Path | None) -> dict | None:
    """What the student in ``student_dir`` was trained on, or None (none saved: an older student)."""
    p = Path(student_dir) / MARK_FILE if student_dir else None
    return json.loads(p.read_text()) if p and p.exists() else None


def write_mark(student_dir: Path, mark: dict) -> None:
    (Path(student_dir) / MARK_FILE).write_text(json.dumps(mark, indent=2, sort_keys=True))


def training_kind(cfg: StudentConfig, warm: bool, mark: dict | None, teacher_key: str, full_retrain: bool,
                  last_full: str | None, night: str | None) -> tuple[str, str]:
    """(``cold`` | ``full`` | ``bounded``, why) for tonight's student.

    ``last_full`` is the night of the ledger's last full (or cold) training; with
    ``cfg.full_retrain_every_days`` a night that many days later trains on everything.
    """
    if not warm:
        return "cold", "no compatible champion to start from"
    if full_retrain:
        return "full", "full retrain requested"
    if mark is None or not mark.get("trained_through"):
        return "full", "the champion records no training cut-off"
    if mark.get("teacher_version") != teacher_key:
        return "full", f"teacher changed ({mark.get('teacher_version')} -> {teacher_key})"
    every = cfg.full_retrain_every_days
    if every and night:
        age = (date.fromisoformat(night[:10]) - date.fromisoformat(last_full[:10])).days if last_full else None
        if age is None or age >= every:
            return "full", f"scheduled: last full retrain {last_full or 'never'}, every {every} days"
    return "bounded", f"{cfg.replay_size} replay rows"


def _with_corrections(rows: pd.DataFrame, corrections: pd.DataFrame) -> pd.DataFrame:
    if corrections.empty or rows.empty:
        return rows
    latest = corrections.sort_values("at").drop_duplicates("message_id", keep="last").set_index("message_id")
    fix = rows["message_id"].map(latest["gold_label"])
    return rows.assign(gold_label=fix.where(fix.notna(), rows["gold_label"]))


def _labelled(lake: Lake, teacher_key: str, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` joined with their teacher labels (``probs``, ``label``); unlabelled rows dropped."""
    if rows.empty:
        return rows.assign(probs=pd.Series(dtype=object), label=pd.Series(dtype=str))
    soft = lake.labels(teacher_key, ["message_id", "probs", "label"], ids=rows["message_id"])
    return rows.merge(soft, on="message_id", how="inner")


def stratified(df: pd.DataFrame, key: pd.Series, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` rows of ``df`` (all if fewer), each value of ``key`` in proportion to its share."""
    if n >= len(df):
        return df
    if n <= 0:
        return df.iloc[:0]
    counts = key.value_counts().sort_index()
    quota = counts * n / len(df)
    take = np.floor(quota).astype(int)
    take[(quota - take).sort_values(ascending=False).index[: n - int(take.sum())]] += 1  # largest remainders
    picks = [rng.choice(np.flatnonzero((key == k).to_numpy()), size=int(t), replace=False)
             for k, t in take.items() if t > 0]
    return df.iloc[np.sort(np.concatenate(picks))] if picks else df.iloc[:0]


def intent(rows: pd.DataFrame) -> pd.Series:
    """Gold label where there is one, else the teacher's: what a row teaches."""
    return rows["gold_label"].where(rows["gold_label"].notna(), rows["label"]).astype(str)


def labelled_rows(lake: Lake, teacher_key: str, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with their teacher labels (``probs``, ``label``) and their latest gold corrections."""
    return _with_corrections(_labelled(lake, teacher_key, rows), lake.corrections())


def _outside(rows: pd.DataFrame, share: float) -> pd.DataFrame:
    """``rows`` without the calibration slice's messages."""
    return rows[~in_calibration_slice(rows["message_id"], share)] if share and len(rows) else rows


def _utc(value) -> pd.Timestamp:
    """A cut-off as a UTC timestamp (a mark written without a zone means UTC)."""
    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def select_rows(lake: Lake, teacher_key: str, cfg: StudentConfig, kind: str, mark: dict | None,
                seed: int, exclude_share: float = 0.0) -> pd.DataFrame:
    """The night's training rows: :data:`ROW_COLUMNS` + ``probs, label, role`` (new / gold / replay).

    ``kind`` ``cold`` or ``full``: every labelled message (role ``new``). ``bounded``: the rows
    after ``mark``'s cut-offs plus the replay (see the module's docstring). ``exclude_share``: the
    calibration slice's share (``collab.calibration_share``), whose messages are never selected.
    """
    corrections = lake.corrections()
    if kind != "bounded":
        rows = _labelled(lake, teacher_key, _outside(lake.messages(columns=ROW_COLUMNS), exclude_share))
        return _with_corrections(rows, corrections).assign(role="new").reset_index(drop=True)
    cut = _utc(mark["trained_through"])
    fixed_after = _utc(mark.get("corrections_through") or cut)
    parts = lake.partitions()
    # A day's margin: a partition is named by the arrival date in the writer's timezone, cut-offs are UTC.
    new = lake.messages(dates=[d for d in parts if d >= f"{cut - pd.Timedelta(days=1):%Y-%m-%d}"],
                        columns=ROW_COLUMNS)
    new = new[new["received_at"] > cut]
    corrected = corrections[corrections["at"] > fixed_after]["message_id"] if len(corrections) else []
    extra = set(corrected) - set(new["message_id"])
    if extra:
        new = pd.concat([new, lake.messages(ids=extra, columns=ROW_COLUMNS)], ignore_index=True)
    new = _outside(new, exclude_share)
    new = _with_corrections(_labelled(lake, teacher_key, new), corrections).assign(role="new")
    rng = np.random.default_rng([seed, len(new), int(cut.value % 2**32)])
    taken = set(new["message_id"])
    gold = _gold_sample(lake, teacher_key, cfg, corrections, cut, taken, rng, exclude_share)
    taken |= set(gold["message_id"])
    replay = _day_sample(lake, teacher_key, corrections, parts, cut, taken, cfg.replay_size - len(gold), rng,
                         exclude_share)
    return pd.concat([new, gold, replay], ignore_index=True)


def _gold_sample(lake: Lake, teacher_key: str, cfg: StudentConfig, corrections: pd.DataFrame,
                 cut: pd.Timestamp, taken: set, rng, exclude_share: float = 0.0) -> pd.DataFrame:
    """``replay_gold_share`` of the replay from the gold rows that arrived up to ``cut``, by intent."""
    n = int(round(cfg.replay_size * cfg.replay_gold_share))
    if n <= 0:
        return pd.DataFrame(columns=ROW_COLUMNS + ["probs", "label", "role"])
    cols = ["message_id", "gold_label", "received_at", "received_date"]
    gold = lake.gold_messages(cols)
    if len(corrections):
        gold = pd.concat([gold, lake.messages(ids=set(corrections["message_id"]) - set(gold["message_id"]),
                                              columns=cols)], ignore_index=True)
    gold = _with_corrections(gold, corrections)
    gold = _outside(gold[(gold["received_at"] <= cut) & gold["gold_label"].notna() & ~gold["message_id"].isin(taken)],
                    exclude_share)
    pick = stratified(gold, gold["gold_label"].astype(str), n, rng)
    rows = lake.messages(ids=pick["message_id"], dates=pick["received_date"], columns=ROW_COLUMNS)
    return _with_corrections(_labelled(lake, teacher_key, rows), corrections).assign(role="gold")


def _day_sample(lake: Lake, teacher_key: str, corrections: pd.DataFrame, parts: dict[str, int],
                cut: pd.Timestamp, taken: set, n: int, rng, exclude_share: float = 0.0) -> pd.DataFrame:
    """``n`` earlier rows by intent, from past days drawn at random until they hold POOL_FACTOR x n rows."""
    if n <= 0:
        return pd.DataFrame(columns=ROW_COLUMNS + ["probs", "label", "role"])
    days = [d for d in parts if d <= f"{cut + pd.Timedelta(days=1):%Y-%m-%d}"]
    chosen, pool = [], 0
    for i in rng.permutation(len(days)):
        if pool >= POOL_FACTOR * n:
            break
        chosen.append(days[i])
        pool += parts[days[i]]
    rows = lake.messages(dates=chosen, columns=ROW_COLUMNS)
    rows = _outside(rows[(rows["received_at"] <= cut) & ~rows["message_id"].isin(taken)], exclude_share)
    rows = _with_corrections(_labelled(lake, teacher_key, rows), corrections)
    return stratified(rows, intent(rows), n, rng).assign(role="replay")


def cutoffs(rows: pd.DataFrame, lake: Lake, mark: dict | None, kind: str) -> dict[str, str | None]:
    """The cut-offs a student trained on ``rows`` carries forward: the latest arrival and correction it saw."""
    through = rows["received_at"].max() if len(rows) else None
    if kind == "bounded" and mark and mark.get("trained_through"):
        through = max(filter(None, [through, pd.Timestamp(mark["trained_through"])]))
    corr = lake.corrections()
    fixed = corr["at"].max() if len(corr) else None
    return {"trained_through": through.isoformat() if through is not None else None,
            "corrections_through": pd.Timestamp(fixed).isoformat() if fixed is not None else None}
