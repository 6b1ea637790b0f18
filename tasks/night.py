"""Prefect tasks of a night: each a few lines around a function in models/ or data_contracts/."""

from __future__ import annotations

import json
from pathlib import Path

from functools import partial

import prefect
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from data_contracts.datasets import load_split
from data_contracts.lake import Lake
from edgeloop.config import Settings
from models import pipeline, tracking

# Inputs here are settings, frames' paths and results, not cache keys: nothing is cached by input.
task = partial(prefect.task, cache_policy=NO_CACHE)


def _lake(settings: Settings) -> Lake:
    return Lake(settings.lake_root())


@task(name="start-night-run", retries=2, retry_delay_seconds=[2, 10])
def start_night_run(settings: Settings, night: str, flow_name: str) -> str:
    """Open the night's parent MLflow run; returns its id."""
    split = load_split(settings.dataset)
    run_id = tracking.start_parent_run(settings, f"{flow_name}-{night}", {
        "edgeloop.flow": flow_name, "edgeloop.night": night, "dataset": settings.dataset.name,
        "split_hash": split.split_hash})
    get_run_logger().info("MLflow parent run %s (split %s)", run_id, split.split_hash)
    return run_id


def _retry_io_only(task, task_run, state) -> bool:
    """Retry transient failures, not bad input: a broken file stays broken on the second try."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, ValueError)  # DatasetError, ContractError, ConfigError are ValueErrors


@task(name="ingest", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_io_only)
def ingest(settings: Settings, night: str, input_file: str | None, parent_run_id: str) -> dict:
    """Redact, validate and append tonight's arrivals (and the seed on the first night).

    A rerun of a night whose ingest finished (ledger record + saved report) reuses that report.
    """
    from data_contracts.ingest import ingest_night

    saved = settings.home_path() / "work" / night / "ingest_report.json"
    record = _lake(settings).night_record(night)
    if record and saved.exists() and record.get("input_file") == input_file:
        get_run_logger().info("night %s was ingested at %s: reusing its report, nothing re-ingested",
                              night, record.get("ingested_at"))
        return {**json.loads(saved.read_text()), "resumed": True}

    split = load_split(settings.dataset)
    report = ingest_night(settings, split, _lake(settings), night, input_file)
    with tracking.step_run(settings, parent_run_id, "ingest"):
        import mlflow

        mlflow.log_params({"source": report.source, "batch_index": report.batch_index,
                           "split_hash": split.split_hash, "input_file": input_file})
        mlflow.log_metrics({"rows_in": report.rows_in, "rows_accepted": report.rows_accepted,
                            "rows_quarantined": report.rows_quarantined, "rows_added": report.rows_added,
                            **{f"redacted_{k}": v for k, v in report.redactions.items()}})
        mlflow.log_dict(report.to_dict(), "ingest_report.json")
        for path in report.report_files:
            mlflow.log_artifact(path, "contracts")
    create_table_artifact(key="contracts", table=report.contracts, description=f"Data contracts, night {night}")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(report.to_dict(), default=str))
    return report.to_dict()


@task(name="resolve-teacher", retries=2, retry_delay_seconds=5)
def resolve_teacher(settings: Settings) -> pipeline.TeacherRef:
    return pipeline.resolve_teacher(settings)


@task(name="plan-relabel", retries=2, retry_delay_seconds=[2, 10])
def plan_relabel(settings: Settings, ref: pipeline.TeacherRef) -> list[list[str]]:
    """Shards of the message ids this teacher version has not labeled yet."""
    shards = pipeline.pending_shards(_lake(settings), ref, settings.teacher.relabel_shards)
    get_run_logger().info("teacher %s: %d messages to label in %d shards", ref.cache_key,
                          sum(map(len, shards)), len(shards))
    return shards


@task(name="relabel-shard", retries=1, retry_delay_seconds=5)
def relabel_shard(settings: Settings, ref: pipeline.TeacherRef, ids: list[str]) -> dict:
    """Teacher soft labels for one shard of message ids; returns the label contract's accounting."""
    return pipeline.label_shard(settings, _lake(settings), ref, ids)


@task(name="train-student")
def train_student(settings: Settings, ref: pipeline.TeacherRef, night: str, parent_run_id: str) -> dict:
    """Distill, quantize and export the candidate; returns its folder and training summary."""
    from tasks.hooks import crash_point

    crash_point("train-student")  # test hook: a no-op unless EDGELOOP_TEST_CRASH_AT=train-student
    split = load_split(settings.dataset)
    out = settings.home_path() / "work" / night / "candidate"
    with tracking.step_run(settings, parent_run_id, "distill") as run:
        import mlflow

        result = pipeline.train_candidate(settings, _lake(settings), ref, split.labels, out,
                                          on_epoch=lambda e: mlflow.log_metrics(
                                              {"loss": e.loss, **e.extra}, step=e.epoch))
        mlflow.log_params({k: v for k, v in result.items() if k not in ("history", "folder")})
        mlflow.log_param("teacher_version", ref.version)
        result["run_id"] = run.info.run_id
    get_run_logger().info("student: %d rows (%d gold), %d params, final loss %.4f%s", result["n_train"],
                          result["n_gold"], result["n_params"], result["final_loss"],
                          f", warm start from v{result['warm_start_from']}" if result["warm_start_from"] else "")
    return result


@task(name="evaluate")
def evaluate(settings: Settings, ref: pipeline.TeacherRef, candidate: dict, parent_run_id: str) -> dict:
    """Teacher, candidate (as shipped) and champion on golden; logged to MLflow."""
    split = load_split(settings.dataset)
    results = pipeline.evaluate_all(settings, split, ref, Path(candidate["folder"]))
    stream_acc = pipeline.teacher_stream_accuracy(split, _lake(settings), ref)
    with tracking.step_run(settings, parent_run_id, "evaluate") as run:
        import mlflow

        for name, res in results.items():
            tracking.log_eval(f"{name}.", res)
        if stream_acc is not None:
            mlflow.log_metric("teacher.stream_label_accuracy", stream_acc)
        tracking.log_eval_artifacts(results)
    rows = [{"model": k, "accuracy": round(r.accuracy, 4), "macro_f1": round(r.macro_f1, 4),
             "size_mb": round(r.size_mb or 0, 3), "p50_ms": round(r.p50_ms or 0, 3), "p95_ms": round(r.p95_ms or 0, 3)}
            for k, r in results.items()]
    create_table_artifact(key="evaluation", table=rows, description="Golden set: teacher vs student")
    return {"results": results, "run_id": run.info.run_id, "teacher_stream_accuracy": stream_acc}


@task(name="gate")
def gate(settings: Settings, evaluation: dict, candidate: dict, contracts_ok: bool):
    """The promotion decision, with every check, as a Prefect artifact."""
    split = load_split(settings.dataset)
    decision = pipeline.decide(settings, split, evaluation["results"], Path(candidate["folder"]), contracts_ok)
    logger = get_run_logger()
    for check in decision.checks:
        logger.info("gate %s", check.line())
    create_table_artifact(key="gate", table=[
        {"check": c.name, "value": c.value, "threshold": f"{c.op} {c.threshold}", "verdict": "pass" if c.passed else "FAIL",
         "detail": c.detail} for c in decision.checks], description=f"Gate: {'PASS' if decision.passed else 'FAIL'}")
    return decision


@task(name="register-candidate", retries=2, retry_delay_seconds=5)
def register(settings: Settings, evaluation: dict, candidate: dict, decision, meta: dict) -> str:
    """Register the candidate with its gate tags; its model card (with the history) shows in Prefect too."""
    from models import registry
    from models.card import render_card

    version = pipeline.register_candidate(settings, candidate["run_id"], Path(candidate["folder"]), decision,
                                          evaluation["results"], meta)
    name = settings.mlflow.student_model_name
    create_markdown_artifact(key="model-card", description=f"{name} v{version}: gate {'PASS' if decision.passed else 'FAIL'}",
                             markdown=render_card(name, version, decision, evaluation["results"], meta,
                                                  registry.read_history(settings.home_path(), name)))
    return version


@task(name="promote-and-publish")
def promote(settings: Settings, version: str, candidate: dict, meta: dict, why: str, by: str) -> dict:
    return pipeline.promote_and_publish(settings, version, Path(candidate["folder"]), meta, why, by)


@task(name="finish-night-run", retries=2, retry_delay_seconds=[2, 10])
def finish(settings: Settings, parent_run_id: str, summary: dict) -> None:
    """Close the parent run with the night's summary and show it in Prefect."""
    import mlflow

    from models import registry

    registry.client(settings.tracking_uri())
    c = mlflow.MlflowClient()
    c.log_dict(parent_run_id, summary, "night_summary.json")
    for k in ("gate_decision", "model_version", "champion_version"):
        if summary.get(k) is not None:
            c.set_tag(parent_run_id, k, str(summary[k]))
    tracking.end_run(settings, parent_run_id, "FINISHED")
    create_markdown_artifact(key="night-summary", markdown="\n".join(
        ["# Night summary", ""] + [f"- **{k}**: {v}" for k, v in summary.items()]))


@task(name="check-teacher-labels")
def check_labels(settings: Settings, ref: pipeline.TeacherRef, night: str, parent_run_id: str) -> dict:
    """Batch-level teacher-label contract (drift vs seed, mean confidence); stops the night on failure."""
    from data_contracts.contracts import validate_teacher_labels, write_report

    split = load_split(settings.dataset)
    labels = _lake(settings).labels(ref.cache_key)
    seed_dist = split.seed["label"].value_counts(normalize=True).to_dict()
    result = validate_teacher_labels(labels, split.labels, seed_dist, max_drift=settings.contracts.max_label_drift,
                                     min_mean_confidence=settings.contracts.min_mean_confidence)
    files = write_report([result], settings.home_path() / "work" / night / "contracts" / "teacher")
    with tracking.step_run(settings, parent_run_id, "teacher-labels"):
        import mlflow

        mlflow.log_metrics({"rows_in": result.rows_in, "rows_accepted": result.rows_accepted,
                            "rows_quarantined": result.rows_quarantined,
                            "mean_confidence": float(labels["confidence"].mean()) if len(labels) else 0.0})
        for path in files:
            mlflow.log_artifact(str(path), "contracts")
    create_table_artifact(key="teacher-label-contract", table=[result.summary()])
    result.raise_for_failures()
    return result.summary()


@task(name="lineage")
def lineage(settings: Settings, ref: pipeline.TeacherRef, night: str, parent_run_id: str, evaluation: dict) -> dict:
    """What the registered version records about where it came from."""
    split = load_split(settings.dataset)
    cand = evaluation["results"]["candidate"]
    return {"night": night, "night_run_id": parent_run_id, "teacher_version": ref.version,
            "dataset": settings.dataset.name, "split_hash": split.split_hash, "backend": settings.student.quantize,
            "metrics": {"accuracy": round(cand.accuracy, 4), "macro_f1": round(cand.macro_f1, 4),
                        "size_mb": round(cand.size_mb or 0, 3), "p95_ms": round(cand.p95_ms or 0, 3)}}


@task(name="summarize")
def summarize(settings: Settings, night: str, run_id: str, report: dict, labeled: list[dict], candidate: dict,
              evaluation: dict, decision, version: str, published: dict | None) -> dict:
    """The night in one dict: what a person looks at first."""
    res = evaluation["results"]
    teacher, cand = res["teacher"], res["candidate"]
    from models import registry

    return {
        "night": night, "mlflow_run_id": run_id, "tracking_uri": settings.tracking_uri(),
        "model_name": settings.mlflow.student_model_name, "model_version": version,
        "gate_decision": "pass" if decision.passed else "fail", "gate_reason": decision.reason(),
        "champion_version": registry.alias_version(settings.tracking_uri(), settings.mlflow.student_model_name,
                                                   registry.CHAMPION),
        "rows_ingested": report["rows_added"], "rows_quarantined": report["rows_quarantined"],
        "rows_relabeled": sum(s["rows_accepted"] for s in labeled), "train_rows": candidate["n_train"],
        "warm_start_from": candidate["warm_start_from"],
        "teacher_accuracy": round(teacher.accuracy, 4), "student_accuracy": round(cand.accuracy, 4),
        "teacher_macro_f1": round(teacher.macro_f1, 4), "student_macro_f1": round(cand.macro_f1, 4),
        "retention": round(cand.accuracy / teacher.accuracy, 4) if teacher.accuracy else None,
        "agreement_with_teacher": round(cand.agreement_with_teacher or 0, 4),
        "teacher_size_mb": round(teacher.size_mb or 0, 2), "student_size_mb": round(cand.size_mb or 0, 3),
        "teacher_p50_ms": round(teacher.p50_ms or 0, 2), "student_p50_ms": round(cand.p50_ms or 0, 3),
        "student_p95_ms": round(cand.p95_ms or 0, 3),
        "teacher_stream_label_accuracy": evaluation["teacher_stream_accuracy"],
        "bundle": published["bundle"] if published else None,
    }


@task(name="abort-night-run", retries=1, retry_delay_seconds=2)
def abort(settings: Settings, parent_run_id: str, exc: BaseException) -> None:
    """Mark the parent run failed with the reason; the champion is untouched."""
    from models import registry

    c = registry.client(settings.tracking_uri())
    c.set_tag(parent_run_id, "failure_reason", f"{type(exc).__name__}: {exc}"[:5000])
    tracking.end_run(settings, parent_run_id, "FAILED")


@task(name="ingest-feedback", retries=2, retry_delay_seconds=[2, 10])
def ingest_feedback(settings: Settings, night: str, parent_run_id: str) -> dict:
    """Device feedback from the inbox into the lake; corrected predictions become gold labels."""
    from data_contracts.ingest import ingest_feedback as ingest_events
    from models import registry

    split = load_split(settings.dataset)
    known = {f"v{v}" for v in registry.list_versions(settings.tracking_uri(), settings.mlflow.student_model_name)}
    report = ingest_events(_lake(settings), settings.feedback_inbox(), settings.feedback_processed(),
                           split.labels, known, contracts=settings.contracts)
    with tracking.step_run(settings, parent_run_id, "feedback"):
        import mlflow

        mlflow.log_metrics({k: v for k, v in report.to_dict().items() if isinstance(v, int)})
    if report.contracts:
        create_table_artifact(key="feedback-contracts", table=report.contracts,
                              description=f"Feedback contracts, night {night}")
    get_run_logger().info("feedback: %d new event(s), %d quarantined, %d correction(s) now gold",
                          report.events_in, report.events_quarantined, report.corrections_added)
    return report.to_dict()
