"""Value tests behind the contracts' GX metrics, on pandas columns; no Great Expectations import.

Contract frames are hostile (any Python value may sit in an ``object`` column), so each test looks
only at the values its rule is about and lets the others pass: a number in ``text`` fails the
type rule and nothing else.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

SURROGATE = re.compile("[\ud800-\udfff]")
#: A character that makes text visible: not whitespace, not a format character (zero-width, BOM, marks).
VISIBLE = re.compile("[^\u00ad\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\\s]")


class UnencodableText(str):
    """How GX is shown a string with lone surrogates: the text with them escaped (``\\ud800``).

    GX fingerprints each batch through pyarrow, which refuses lone surrogates, so such a string
    cannot reach GX as it is; the type keeps it a string for the string rules and tells
    :class:`~data_contracts.expectations.ExpectColumnValuesToBeValidUtf8` that it was not valid UTF-8.
    """

    @classmethod
    def of(cls, value: str) -> "UnencodableText":
        return cls(value.encode("utf-8", "backslashreplace").decode("utf-8"))


def on_strings(column: pd.Series, test) -> pd.Series:
    """``test(value)`` for each string in ``column``; True (not this rule's concern) for other values."""
    values = column.to_numpy(dtype=object)
    return pd.Series([test(v) if isinstance(v, str) else True for v in values], index=column.index, dtype=bool)


def missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v))


def has_visible(s: str, k: int) -> bool:
    """At least ``k`` visible characters (stops counting at ``k``: long texts cost one match)."""
    if k <= 1:
        return k <= 0 or VISIBLE.search(s) is not None
    return sum(1 for _ in islice(VISIBLE.finditer(s), k)) >= k


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def aware(v: Any) -> bool:
    return isinstance(v, datetime) and v.tzinfo is not None and v is not pd.NaT


def hashable(v: Any) -> Any:
    """A dictionary key for ``v``: unhashable values by their type and repr."""
    try:
        hash(v)
        return v
    except TypeError:
        return ("repr", type(v).__name__, repr(v))


def between(values: list, lo: Any, hi: Any, strict_min: bool, strict_max: bool) -> list[bool]:
    out = []
    for v in values:
        ok = lo is None or (v > lo if strict_min else v >= lo)
        out.append(ok and (hi is None or (v < hi if strict_max else v <= hi)))
    return out


def probability_matrix(column: pd.Series, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows that are ``length`` finite values in [0, 1], their values as an (n, length) float matrix).

    Vectorised for an Arrow fixed-size-list column (how the teacher contract shows vectors to GX)
    and for float arrays of the right shape; value by value otherwise.
    """
    n = len(column)
    ok = np.zeros(n, dtype=bool)
    dtype = column.dtype
    if isinstance(dtype, pd.ArrowDtype) and getattr(dtype.pyarrow_dtype, "list_size", None) == length \
            and not column.isna().any():
        matrix = np.asarray(pa.array(column.array).flatten(), dtype=float).reshape(n, length)
        ok[:] = True
    else:
        values = column.to_numpy(dtype=object)
        if n and all(isinstance(v, np.ndarray) and v.shape == (length,) and v.dtype.kind == "f" for v in values):
            matrix, ok[:] = np.stack(values).astype(float), True
        else:
            matrix = np.full((n, length), np.nan)
            for i, v in enumerate(values):
                if isinstance(v, (list, tuple, np.ndarray, pd.Series)):
                    try:
                        arr = np.asarray(v, dtype=float).reshape(-1)
                    except (TypeError, ValueError):
                        continue
                    if arr.size == length:
                        matrix[i], ok[i] = arr, True
    with np.errstate(invalid="ignore"):
        ok &= (np.isfinite(matrix) & (matrix >= 0) & (matrix <= 1)).all(axis=1)
    return ok, matrix


def as_vector_column(series: pd.Series, length: int) -> pd.Series:
    """``series`` as an Arrow ``fixed_size_list<double>[length]`` column when every value is a list or
    array of ``length`` numbers; else ``series`` unchanged.

    GX fingerprints each batch with pandas hashing; arrays are unhashable, so it pickles the frame
    instead (0.6 s per 100k rows of 27 probabilities). An Arrow column pickles in milliseconds.
    """
    values = series.to_numpy(dtype=object)
    if not len(values) or not all(type(v) in (list, np.ndarray) and len(v) == length for v in values):
        return series
    try:
        matrix = np.asarray(list(values), dtype=float).reshape(len(values), length)
    except (TypeError, ValueError):
        return series
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), length)
    return pd.Series(pd.arrays.ArrowExtensionArray(vectors), index=series.index, name=series.name)
