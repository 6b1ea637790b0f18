"""What a night records about itself: the lineage of its model version, and its summary for people."""

from __future__ import annotations

from models import registry
from models.evaluate import EvalResult
from models.gate import GateDecision
from models.stores import StudentStore


def lineage(night: str, night_run_id: str, teacher_version: str, dataset: str, split_hash: str, backend: str,
            candidate: EvalResult) -> dict:
    """Where a registered version came from (tagged ``meta.*`` on it, signed into its bundle)."""
    return {"night": night, "night_run_id": night_run_id, "teacher_version": teacher_version,
            "dataset": dataset, "split_hash": split_hash, "backend": backend,
            "metrics": {"accuracy": round(candidate.accuracy, 4), "macro_f1": round(candidate.macro_f1, 4),
                        "size_mb": round(candidate.size_mb or 0, 3), "p95_ms": round(candidate.p95_ms or 0, 3)}}


def night_summary(store: StudentStore, night: str, run_id: str, ingest: dict, labeled: list[dict], candidate: dict,
                  results: dict[str, EvalResult], teacher_stream_accuracy: float | None, decision: GateDecision,
                  version: str, published: dict | None) -> dict:
    """The night in one flat dict: what a person looks at first.

    ``ingest`` is the ingest report, ``labeled`` the relabel shards' accounting, ``candidate`` the
    training summary and ``published`` the promotion (None when the gate failed).
    """
    teacher, cand = results["teacher"], results["candidate"]
    return {
        "night": night, "mlflow_run_id": run_id, "tracking_uri": store.tracking_uri,
        "model_name": store.name, "model_version": version,
        "gate_decision": "pass" if decision.passed else "fail", "gate_reason": decision.reason(),
        "champion_version": store.alias(registry.CHAMPION),
        "rows_ingested": ingest["rows_added"], "rows_quarantined": ingest["rows_quarantined"],
        "rows_relabeled": sum(s["rows_accepted"] for s in labeled), "train_rows": candidate["n_train"],
        "warm_start_from": candidate["warm_start_from"],
        "teacher_accuracy": round(teacher.accuracy, 4), "student_accuracy": round(cand.accuracy, 4),
        "teacher_macro_f1": round(teacher.macro_f1, 4), "student_macro_f1": round(cand.macro_f1, 4),
        "retention": round(cand.accuracy / teacher.accuracy, 4) if teacher.accuracy else None,
        "agreement_with_teacher": round(cand.agreement_with_teacher or 0, 4),
        "teacher_size_mb": round(teacher.size_mb or 0, 2), "student_size_mb": round(cand.size_mb or 0, 3),
        "teacher_p50_ms": round(teacher.p50_ms or 0, 2), "student_p50_ms": round(cand.p50_ms or 0, 3),
        "student_p95_ms": round(cand.p95_ms or 0, 3),
        "teacher_stream_label_accuracy": teacher_stream_accuracy,
        "bundle": published["bundle"] if published else None,
    }
