"""What the night's collaboration step reads: the lake's calibration slice and the out-of-scope lists.

The calibration slice is the share ``collab.calibration_share`` of lake messages that
:func:`models.calibration.in_calibration_slice` picks by message-id hash: the student never trains
on them (:func:`models.replay.select_rows` leaves them out), the night fits the temperature on
them. Their labels are the ones the student learns from elsewhere: the gold label (corrections
included) where there is one, else the teacher's.

The out-of-scope lists come from ``collab.oos_path`` (CLINC150's layout): the train list is the
student's outlier exposure, the val list picks the rejection threshold, the test list measures it;
each list leaves out texts of the lists before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from data_contracts.lake import Lake
from edgeloop.config import CollabConfig
from models.calibration import slice_position
from models.replay import ROW_COLUMNS, intent, labelled_rows

#: At most this many slice messages a night (those first by slice position, a fixed order), so the
#: calibration pass does not grow with the lake.
MAX_CALIBRATION_ROWS = 3000


def calibration_slice(lake: Lake, teacher_key: str, share: float,
                      max_rows: int = MAX_CALIBRATION_ROWS) -> pd.DataFrame:
    """The slice's messages that the teacher ``teacher_key`` labelled: ``message_id, text, label``
    (gold where known, else the teacher's), at most ``max_rows`` of them, in slice order."""
    empty = pd.DataFrame({"message_id": pd.Series(dtype=str), "text": pd.Series(dtype=str),
                          "label": pd.Series(dtype=str)})
    if not share:
        return empty
    ids = lake.messages(columns=["message_id", "received_date"])
    ids = ids.assign(position=slice_position(ids["message_id"]))  # each id hashed once
    ids = ids[ids["position"] < share].sort_values("position").head(max_rows)
    if ids.empty:
        return empty
    rows = lake.messages(ids=ids["message_id"], dates=set(ids["received_date"]), columns=ROW_COLUMNS)
    rows = labelled_rows(lake, teacher_key, rows)
    if rows.empty:
        return empty
    rows = rows.assign(label=intent(rows), position=rows["message_id"].map(ids.set_index("message_id")["position"]))
    return rows.sort_values("position")[["message_id", "text", "label"]].reset_index(drop=True)


@dataclass(frozen=True)
class OutOfScope:
    """Out-of-scope texts (redacted, no duplicates across the three lists)."""

    train: list[str]
    val: list[str]
    test: list[str]


def out_of_scope(cfg: CollabConfig) -> OutOfScope | None:
    """The three lists of ``cfg.oos_path``; None when no path is configured (no rejection)."""
    if not cfg.oos_path:
        return None
    from models.outliers import load_outlier_texts

    train = load_outlier_texts(cfg.oos_path, (cfg.oos_train_key,))
    val = load_outlier_texts(cfg.oos_path, (cfg.oos_val_key,), exclude=set(train))
    test = load_outlier_texts(cfg.oos_path, (cfg.oos_test_key,), exclude=set(train) | set(val))
    return OutOfScope(train, val, test)


def outlier_training_texts(cfg: CollabConfig | None) -> list[str]:
    """The outlier-exposure texts a night's student trains on: none when collaboration is off or
    no out-of-scope path is configured."""
    if cfg is None or not cfg.enabled or not cfg.oos_path:
        return []
    from models.outliers import load_outlier_texts

    return load_outlier_texts(cfg.oos_path, (cfg.oos_train_key,))
