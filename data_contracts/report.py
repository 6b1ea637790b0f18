"""What a contract decided (:class:`ContractResult`) and the per-night report of it (:func:`write_report`)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")
#: Where write_report puts the Data Docs site, under its ``out_dir``.
DATA_DOCS_DIR = "data_docs"


class ContractError(ValueError):
    """A batch failed its contract; the message lists every batch-level failure."""


@dataclass
class ContractResult:
    """What a contract decided about one frame.

    ``results_json`` holds the GX results (trimmed) and contract extras such as ``drift``;
    ``gx_docs`` the same results shaped for Data Docs (see :func:`write_report`).
    """

    contract: str
    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    batch_failures: list[str]
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    results_json: dict = field(default_factory=dict)
    gx_docs: list[dict] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.rows_in != self.rows_accepted + self.rows_quarantined:  # a bug here, never data
            raise AssertionError(f"{self.contract}: {self.rows_in} rows in but {self.rows_accepted} "
                                 f"accepted + {self.rows_quarantined} quarantined")

    @property
    def ok(self) -> bool:
        """True when no batch-level check failed (rows may still have been quarantined)."""
        return not self.batch_failures

    def summary(self) -> dict[str, Any]:
        """One row of a summary table (MLflow metrics / Prefect table artifact)."""
        reasons = self.reason_counts()
        return {
            "contract": self.contract,
            "ok": self.ok,
            "rows_in": self.rows_in,
            "rows_accepted": self.rows_accepted,
            "rows_quarantined": self.rows_quarantined,
            "quarantine_rate": round(self.rows_quarantined / self.rows_in, 4) if self.rows_in else 0.0,
            "batch_failures": "; ".join(self.batch_failures),
            "top_reason": reasons.most_common(1)[0][0] if reasons else "",
        }

    def reason_counts(self) -> Counter:
        """How many quarantined rows each single reason applies to (values stripped)."""
        counts: Counter = Counter()
        for reason in self.quarantined.get("reason", pd.Series(dtype=object)):
            for part in str(reason).split(" | "):
                counts[part.split("; got")[0]] += 1
        return counts

    def raise_for_failures(self) -> "ContractResult":
        """Raise :class:`ContractError` when a batch-level check failed; else return self."""
        if self.batch_failures:
            raise ContractError(f"contract {self.contract} failed for this batch "
                                f"({self.rows_in} rows): " + "; ".join(self.batch_failures))
        return self


def short(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for a reason: lone surrogates escaped, cut to ``limit`` characters."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        value = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def trim(obj: Any, max_list: int = 50, max_str: int = 300) -> Any:
    """Keep GX result JSON small enough to log: long lists and strings are cut (and say so)."""
    if isinstance(obj, dict):
        return {k: trim(v, max_list, max_str) for k, v in obj.items()}
    if isinstance(obj, list):
        head = [trim(v, max_list, max_str) for v in obj[:max_list]]
        return head + ([f"... {len(obj) - max_list} more"] if len(obj) > max_list else [])
    if isinstance(obj, str) and len(obj) > max_str:
        return obj[:max_str] + f"... ({len(obj)} characters)"
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def storable(df: pd.DataFrame) -> pd.DataFrame:
    """Quarantined rows must be writable to Parquet: escape lone surrogates in text values."""
    out = df.copy()
    for i in range(out.shape[1]):  # by position: a rejected frame may repeat a column name
        col = out.iloc[:, i]
        if col.dtype == object and col.map(lambda v: isinstance(v, str) and bool(_SURROGATE.search(v))).any():
            out.iloc[:, i] = col.map(lambda v: v.encode("utf-8", "backslashreplace").decode("utf-8")
                                     if isinstance(v, str) else v)
    return out


def finish(contract: str, df: pd.DataFrame, reasons: dict[int, list[str]], batch_failures: list[str],
           extra_json: dict, gx_docs: list[dict]) -> ContractResult:
    """Split ``df`` by the row reasons (positions) into accepted and quarantined rows with their reasons."""
    n = len(df)
    bad = np.zeros(n, dtype=bool)
    if reasons:
        bad[list(reasons)] = True
    accepted = df.iloc[np.flatnonzero(~bad)].reset_index(drop=True)
    quarantined = storable(df.iloc[np.flatnonzero(bad)]).reset_index(drop=True)
    quarantined["reason"] = pd.Series([" | ".join(dict.fromkeys(reasons[i])) for i in np.flatnonzero(bad)],
                                      dtype=object)
    quarantined["contract"] = contract
    results_json = {"contract": contract, "success": not batch_failures and not reasons,
                    "batch_failures": list(batch_failures), **extra_json}
    return ContractResult(contract, accepted, quarantined, list(batch_failures), n,
                          len(accepted), len(quarantined), results_json, list(gx_docs))


def write_report(results: list[ContractResult], out_dir: str | Path) -> list[Path]:
    """Write each contract's GX result JSON, a Markdown report and a Data Docs site; return the paths.

    Files: ``<contract>.json`` (``raw_messages@1`` -> ``raw_messages_v1.json``), ``contracts.md``
    (summary table, batch failures, quarantine reasons, sample rows) and, last,
    ``data_docs/index.html``: the GX Data Docs site of these results (its folder is replaced on
    each call). If GX cannot render the site, the report says why and the index is left out.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for res in results:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", res.contract.replace("@", "_v"))
        p, i = out / f"{stem}.json", 1
        while p in paths:  # the same contract run on several frames
            i += 1
            p = out / f"{stem}_{i}.json"
        p.write_text(json.dumps(res.results_json, indent=2, default=str, ensure_ascii=True))
        paths.append(p)
    index, docs_error = None, ""
    try:
        from data_contracts.gx_engine import build_data_docs

        index = build_data_docs([(r.contract, vr) for r in results for vr in r.gx_docs], out / DATA_DOCS_DIR)
    except Exception as exc:  # noqa: BLE001 - the report must not stop the night; it says what failed
        log.warning("Data Docs could not be built in %s: %s", out / DATA_DOCS_DIR, exc)
        docs_error = f"{type(exc).__name__}: {exc}"
    md = out / "contracts.md"
    md.write_text(_markdown(results, out, index.relative_to(out) if index else None, docs_error), encoding="utf-8")
    paths.append(md)
    if index:
        paths.append(index)
    return paths


def data_docs_index(files: list[Path]) -> Path | None:
    """The Data Docs ``index.html`` among :func:`write_report`'s files (None if the site was not built).

    The site is the index's folder: log or link that folder, not the index alone.
    """
    return next((p for p in files if p.name == "index.html" and p.parent.name == DATA_DOCS_DIR), None)


def _md_cell(value: Any, limit: int = 80) -> str:
    text = short(value, limit) if not isinstance(value, str) else short(value, limit)[1:-1]
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(results: list[ContractResult], out: Path, docs: Path | None, docs_error: str) -> str:
    """The report; ``docs``: the Data Docs index relative to ``out``."""
    lines = ["# Data contracts", "",
             f"Great Expectations Data Docs: [{docs.as_posix()}]({docs.as_posix()})" if docs
             else f"Great Expectations Data Docs could not be built: {docs_error}"]
    if docs:  # the index lists results with scripts from a CDN; these links work offline
        lines += [f"- [{p.relative_to(out).as_posix()}]({p.relative_to(out).as_posix()})"
                  for p in sorted((out / docs.parent / "validations").rglob("*.html"))]
    lines += ["", "| contract | ok | rows in | accepted | quarantined | batch failures |", "|---|---|---|---|---|---|"]
    for r in results:
        s = r.summary()
        lines.append(f"| {s['contract']} | {'yes' if s['ok'] else '**NO**'} | {s['rows_in']} | "
                     f"{s['rows_accepted']} | {s['rows_quarantined']} | {_md_cell(s['batch_failures'], 200)} |")
    for r in results:
        lines += ["", f"## {r.contract}", ""]
        lines += [f"- batch failure: {f}" for f in r.batch_failures] or ["- no batch failure"]
        drift = r.results_json.get("drift")
        if drift:
            lines.append(f"- drift: {drift}")
        reasons = r.reason_counts()
        if reasons:
            lines += ["", "| reason | rows |", "|---|---|"]
            lines += [f"| {_md_cell(k, 200)} | {v} |" for k, v in reasons.most_common(20)]
            sample = r.quarantined.head(10)
            cols = [c for c in sample.columns if c != "contract"]
            lines += ["", "Sample of quarantined rows:", "", "| " + " | ".join(cols) + " |",
                      "|" + "---|" * len(cols)]
            for _, row in sample.iterrows():
                lines.append("| " + " | ".join(_md_cell(row[c], 200 if c == "reason" else 40)
                                                for c in cols) + " |")
    return "\n".join(lines) + "\n"
