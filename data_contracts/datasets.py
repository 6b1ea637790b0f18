"""Load a labelled data set described by configuration and split it reproducibly.

Every data set becomes a frame with the columns ``message_id, text, label``; no code outside the
configuration names a data set's own columns. The split is stratified by label and seeded: *seed*
(gold labels, the cold start), *stream* (replayed as nightly arrivals without labels) and *golden*
(the frozen test set no training ever sees).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from edge.feedback import message_id  # devices compute the id: one definition, theirs
from edgeloop.config import DatasetConfig

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The data set file does not match its configuration; the message says what was expected."""


def read_table(path: Path, cfg: DatasetConfig) -> pd.DataFrame:
    """Read ``path`` in the configured format into a frame with the file's own columns."""
    if not path.exists():
        raise DatasetError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise DatasetError(f"data file {path} is empty")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        data = path.read_bytes()
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{path} is not valid UTF-8: byte {exc.start} (line {line}) is "
                           f"{data[exc.start:exc.start + 1]!r}; export the file as UTF-8") from None
    try:
        if cfg.format == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        if cfg.format == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if cfg.format == "parquet":
            return pd.read_parquet(path)
        blob = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not valid UTF-8 (byte {exc.start}); export it as UTF-8") from None
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{path} could not be read as {cfg.format}: {exc}") from None
    missing = [k for k in cfg.json_keys if k not in blob]
    if missing:
        raise DatasetError(f"{path}: keys {missing} not found; it has {sorted(blob)}")
    rows = [pair for key in cfg.json_keys for pair in blob[key]]
    return pd.DataFrame(rows, columns=[cfg.text_column, cfg.label_column])


def load_dataset(cfg: DatasetConfig, path: Path | None = None, require_labels: bool = True) -> pd.DataFrame:
    """Load the configured data set as ``message_id, text, label``.

    With ``require_labels`` (the bundled, labelled data set) blank and repeated texts are dropped
    and counted in the log. Without it (a shop's export of new messages) every row is kept, so
    that the data contracts quarantine bad ones with a reason instead of them vanishing here.
    """
    path = path or cfg.resolved_path()
    raw = read_table(path, cfg)
    if raw.empty:
        raise DatasetError(f"{path} has a header but no data rows")
    needed = [cfg.text_column] + ([cfg.label_column] if require_labels else [])
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DatasetError(f"{path}: column(s) {missing} not found; it has {list(raw.columns)} "
                           f"(set dataset.text_column / dataset.label_column)")
    text = raw[cfg.text_column]
    df = pd.DataFrame({"text": text.where(text.map(lambda v: isinstance(v, str)), None).astype(object)})
    if cfg.label_column in raw.columns:  # an empty label cell means "not labelled", not a label ""
        label = raw[cfg.label_column].astype("string").str.strip()
        df["label"] = label.mask(label == "")
    else:
        df["label"] = pd.NA
    df["message_id"] = df["text"].map(lambda t: message_id(t) if isinstance(t, str) else None)
    if not require_labels:
        return df[["message_id", "text", "label"]].reset_index(drop=True)
    n = len(df)
    df = df[df["text"].notna() & (df["text"].str.strip() != "") & df["label"].notna()]
    df = df.drop_duplicates("message_id", keep="first").reset_index(drop=True)
    if len(df) < n:
        log.info("%s: %d of %d rows kept (blank, unlabelled or repeated texts dropped)", path, len(df), n)
    if cfg.max_rows:
        df = df.sample(n=min(cfg.max_rows, len(df)), random_state=cfg.split_seed).reset_index(drop=True)
    return df[["message_id", "text", "label"]]


@dataclass(frozen=True)
class Split:
    """The three parts of a data set and the hash that identifies the split."""

    seed: pd.DataFrame
    stream: pd.DataFrame
    golden: pd.DataFrame
    labels: list[str]
    split_hash: str

    def stream_batch(self, index: int, size: int) -> pd.DataFrame:
        """The ``index``-th nightly batch of the stream (empty once the stream is used up)."""
        return self.stream.iloc[index * size:(index + 1) * size].reset_index(drop=True)


def split_dataset(df: pd.DataFrame, cfg: DatasetConfig) -> Split:
    """Stratified, seeded split into seed / stream / golden."""
    rng = np.random.default_rng(cfg.split_seed)
    parts: dict[str, list[pd.DataFrame]] = {"seed": [], "stream": [], "golden": []}
    for _, group in df.sort_values("message_id").groupby("label", sort=True):
        idx = rng.permutation(len(group))
        n_gold = max(1, round(len(group) * cfg.golden_fraction))
        n_seed = max(1, round(len(group) * cfg.seed_fraction))
        parts["golden"].append(group.iloc[idx[:n_gold]])
        parts["seed"].append(group.iloc[idx[n_gold:n_gold + n_seed]])
        parts["stream"].append(group.iloc[idx[n_gold + n_seed:]])
    frames = {}
    for name, chunks in parts.items():
        part = pd.concat(chunks) if chunks else df.iloc[0:0]
        # The stream is replayed in a fixed but label-mixed order, like real arrivals.
        frames[name] = part.sample(frac=1.0, random_state=cfg.split_seed).reset_index(drop=True)
    h = hashlib.sha256()
    for name in ("seed", "stream", "golden"):
        h.update(name.encode())
        h.update("\n".join(frames[name]["message_id"]).encode())
    labels = sorted(df["label"].dropna().unique().tolist())
    return Split(frames["seed"], frames["stream"], frames["golden"], labels, h.hexdigest()[:16])


def role_files(cfg: DatasetConfig, patterns: list[str], role: str) -> list[Path]:
    """The files a role names (paths or globs), in a stable order; an empty match is an error."""
    import glob

    files: list[Path] = []
    for pattern in patterns:
        p = cfg.resolved_path(pattern)
        matched = sorted(Path(m) for m in glob.glob(str(p))) if glob.has_magic(str(p)) else [p]
        if not matched:
            raise DatasetError(f"dataset.{role}_path: {pattern!r} matches no file")
        files += matched
    return list(dict.fromkeys(files))


def _load_role(cfg: DatasetConfig, patterns: list[str], role: str) -> pd.DataFrame:
    frames = [load_dataset(cfg, path=f) for f in role_files(cfg, patterns, role)]
    return pd.concat(frames, ignore_index=True).drop_duplicates("message_id").reset_index(drop=True)


def roles_split(seed: pd.DataFrame, golden: pd.DataFrame, cfg: DatasetConfig) -> Split:
    """The shop's own seed and golden sets as a split with no stream, checked for overlap.

    Overlap is judged by the id of the redacted text (what the lake stores): two messages that differ
    only in an order number are the same message to the model.
    """
    from edge.redact import redact

    def ids(df: pd.DataFrame) -> pd.Series:
        return df["text"].map(lambda t: message_id(redact(t)[0]))

    unseen = sorted(set(golden["label"]) - set(seed["label"]))
    if unseen:
        raise DatasetError(f"golden labels {unseen[:10]} ({len(unseen)} in all) have no seed example: the "
                           f"model cannot learn them; add seed rows or drop them from the golden file(s)")
    seed_ids = ids(seed)
    shared = seed_ids.isin(set(ids(golden)))
    if shared.any():
        n = int(shared.sum())
        if cfg.overlap == "refuse":
            raise DatasetError(f"{n} seed message(s) are also in golden (same message id after redaction), "
                               f"e.g. {seed.loc[shared, 'text'].iloc[0][:80]!r}: a test set must be unseen. Remove "
                               f"them, or set dataset.overlap: report to drop them from the seed")
        log.warning("%d seed message(s) are also in golden: dropped from the seed (dataset.overlap: report)", n)
        seed = seed[~shared].reset_index(drop=True)
    h = hashlib.sha256()
    for name, part in (("seed", seed), ("golden", golden)):
        h.update(name.encode())
        h.update("\n".join(sorted(part["message_id"])).encode())
    stream = seed.iloc[0:0]
    return Split(seed, stream, golden.reset_index(drop=True), sorted(seed["label"].unique().tolist()),
                 h.hexdigest()[:16])


_SPLITS: dict[str, Split] = {}


def load_split(cfg: DatasetConfig) -> Split:
    """Load and split the configured data set (memoised per configuration within a process).

    With ``seed_path`` and ``golden_path`` the shop's own files are the seed and golden sets and
    there is no split and no replayed stream; otherwise ``path`` is split by the fractions.
    """
    key = cfg.model_dump_json()
    if key not in _SPLITS:
        if cfg.has_roles:
            _SPLITS[key] = roles_split(_load_role(cfg, cfg.seed_path, "seed"),
                                       _load_role(cfg, cfg.golden_path, "golden"), cfg)
        else:
            _SPLITS[key] = split_dataset(load_dataset(cfg), cfg)
    return _SPLITS[key]
