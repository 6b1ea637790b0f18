"""The teacher's outputs beside its labels in the lake: sentence vectors and labelled augmented copies.

A mixin of :class:`data_contracts.lake.Lake` (it uses the lake's part writer and pruned scans).
Both folders are partitioned by the arrival date of the message they belong to, so a night that
replays a few past days reads only those days' vectors and copies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class TeacherOutputs:
    """``vectors/<teacher_version>/`` and ``augmented/<teacher_version>/`` of a lake."""

    def append_vectors(self, teacher_version: str, ids, vectors: np.ndarray, dates) -> int:
        """Store the teacher's sentence ``vectors`` (one row per id) under each message's ``dates``."""
        import pyarrow as pa

        ids, dates, vectors = list(ids), np.asarray(list(dates)), np.asarray(vectors, dtype=np.float16)
        for date in sorted(set(dates)):
            rows = np.flatnonzero(dates == date)
            table = pa.table({"message_id": pa.array([ids[i] for i in rows], pa.string()),
                              "vector": _vector_column(vectors[rows])})
            self._write_part(self._path("vectors", str(teacher_version), f"received_date={date}"), table)
        return len(ids)

    def vectors(self, teacher_version: str, ids, dates=None) -> tuple[list[str], np.ndarray]:
        """(ids found, their float32 vectors) among ``ids``, read from the ``dates`` partitions (all if None)."""
        table = self._scan(self._path("vectors", str(teacher_version)), ["message_id", "vector"], ids=ids,
                           dates=dates)
        if table is None or table.num_rows == 0:
            return [], np.zeros((0, 0), np.float32)
        found, first = table.column(0).to_pylist(), {}
        for i, m in enumerate(found):
            first.setdefault(m, i)
        keep = list(first.values())
        return [found[i] for i in keep], _matrix(table.column(1))[keep]

    def append_augmented(self, teacher_version: str, df: pd.DataFrame, probs: np.ndarray,
                         vectors: np.ndarray | None) -> int:
        """Store teacher-labelled copies (``df``: ``parent_id, text, received_date`` of the parent;
        ``probs`` and optional ``vectors`` row by row)."""
        import pyarrow as pa

        dates = df["received_date"].to_numpy()
        for date in sorted(set(dates)):
            rows = np.flatnonzero(dates == date)
            cols = {"parent_id": pa.array(df["parent_id"].iloc[rows].astype(str).tolist(), pa.string()),
                    "text": pa.array(df["text"].iloc[rows].astype(str).tolist(), pa.string()),
                    "probs": _vector_column(np.asarray(probs, np.float32)[rows])}
            if vectors is not None:
                cols["vector"] = _vector_column(np.asarray(vectors, np.float16)[rows])
            self._write_part(self._path("augmented", str(teacher_version), f"received_date={date}"), pa.table(cols))
        return len(df)

    def augmented_parents(self, teacher_version: str, parent_ids, dates=None) -> set[str]:
        """Which of ``parent_ids`` have stored copies (reads the ``parent_id`` column only)."""
        table = self._scan(self._path("augmented", str(teacher_version)), ["parent_id"], ids=parent_ids,
                           id_column="parent_id", dates=dates)
        return set() if table is None else set(table.column(0).to_pylist())

    def augmented(self, teacher_version: str, parent_ids, dates=None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
        """Stored copies of ``parent_ids``: (``parent_id, text`` frame, probs, vectors or None)."""
        folder = self._path("augmented", str(teacher_version))
        data = self._dataset(folder, dates)
        cols = ["parent_id", "text", "probs"] + (["vector"] if data is not None and "vector" in data.schema.names else [])
        table = self._scan(folder, cols, ids=parent_ids, id_column="parent_id", dates=dates)
        if table is None or table.num_rows == 0:
            return pd.DataFrame(columns=["parent_id", "text"]), np.zeros((0, 0), np.float32), None
        df = table.select(["parent_id", "text"]).to_pandas()
        keep = ~df.duplicated(["parent_id", "text"]).to_numpy()
        vec = _matrix(table.column("vector"))[keep] if "vector" in cols else None
        return df[keep].reset_index(drop=True), _matrix(table.column("probs"))[keep], vec


def _vector_column(matrix: np.ndarray):
    """A (rows, width) matrix as an Arrow fixed-size list column (read back whole by :func:`_matrix`)."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1] if matrix.ndim == 2 else 0)


def _matrix(column) -> np.ndarray:
    """A fixed-size list column as a float32 (rows, width) matrix, without a Python object per row."""
    arr = column.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(arr), arr.type.list_size)
