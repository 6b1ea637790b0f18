"""Prefect tasks of a night: each a few lines around a function in models/ or data_contracts/.

The flow builds the shared things once (the lake, the student store, the split reference) and
passes them in; a task picks the config sections its function needs from the settings.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from data_contracts.lake import Lake
from edgeloop.config import Settings, TeacherConfig
from models import tracking
from models.stores import StudentStore, champion_folder
from models.teacher_store import TeacherRef
from tasks.common import SplitRef, experiment, task, work_dir


@task(name="start-night-run", retries=2, retry_delay_seconds=[2, 10])
def start_night_run(settings: Settings, data: SplitRef, night: str, flow_name: str) -> str:
    """Point MLflow's fluent API at the configured server for this run and open the night's parent
    run; returns its id."""
    tracking.activate(settings.tracking_uri())
    run_id = tracking.start_parent_run(experiment(settings), f"{flow_name}-{night}", {
        "edgeloop.flow": flow_name, "edgeloop.night": night, "dataset": settings.dataset.name,
        "split_hash": data.split_hash}, settings.to_flat_params())
    get_run_logger().info("MLflow parent run %s (split %s)", run_id, data.split_hash)
    return run_id


def _retry_io_only(task, task_run, state) -> bool:
    """Retry transient failures, not bad input: a broken file stays broken on the second try."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, ValueError)  # DatasetError, ContractError, ConfigError are ValueErrors


@task(name="ingest", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_io_only)
def ingest(settings: Settings, lake: Lake, data: SplitRef, night: str, input_file: str | None,
           parent_run_id: str) -> dict:
    """Redact, validate and append tonight's arrivals (and the seed on the first night).

    A rerun of a night whose ingest finished (ledger record + saved report) reuses that report.
    """
    from data_contracts.contracts import data_docs_index
    from data_contracts.ingest import ingest_night
    from data_contracts.ingest_resume import finished_ingest, save_report

    saved = work_dir(settings, night) / "ingest_report.json"
    resumed = finished_ingest(lake, saved, night, input_file)
    if resumed is not None:
        get_run_logger().info("night %s was ingested already: reusing its report, nothing re-ingested", night)
        return resumed
    report = ingest_night(settings, data.load(), lake, night, input_file)
    with tracking.step_run(experiment(settings), parent_run_id, "ingest"):
        import mlflow

        mlflow.log_params({"source": report.source, "batch_index": report.batch_index,
                           "split_hash": data.split_hash, "input_file": input_file})
        mlflow.log_metrics({"rows_in": report.rows_in, "rows_accepted": report.rows_accepted,
                            "rows_quarantined": report.rows_quarantined, "rows_added": report.rows_added,
                            **{f"redacted_{k}": v for k, v in report.redactions.items()}})
        mlflow.log_dict(report.to_dict(), "ingest_report.json")
        docs = data_docs_index([Path(p) for p in report.report_files])
        for path in report.report_files:
            if path != str(docs):
                mlflow.log_artifact(path, "contracts")
        if docs is not None:  # the whole site: its index links the validation pages beside it
            mlflow.log_artifacts(str(docs.parent), "contracts/data_docs")
            mlflow.set_tag("data_docs", docs.as_uri())
    where = f"; Data Docs: {docs.as_uri()}" if docs is not None else ""
    create_table_artifact(key="contracts", table=report.contracts + report.files_rejected,
                          description=f"Data contracts, night {night}{where}")
    save_report(saved, report.to_dict())
    return report.to_dict()


@task(name="resolve-teacher", retries=2, retry_delay_seconds=5)
def resolve_teacher(settings: Settings) -> TeacherRef:
    from models.teacher_store import resolve_teacher

    return resolve_teacher(settings.tracking_uri(), settings.teacher, settings.home_path() / "cache")


@task(name="plan-relabel", retries=2, retry_delay_seconds=[2, 10])
def plan_relabel(cfg: TeacherConfig, lake: Lake, ref: TeacherRef) -> list[list[str]]:
    """Shards of the message ids this teacher version has not labeled yet."""
    from models.relabel import pending_shards

    shards = pending_shards(lake, ref, cfg.relabel_shards)
    get_run_logger().info("teacher %s: %d messages to label in %d shards", ref.cache_key,
                          sum(map(len, shards)), len(shards))
    return shards


@task(name="relabel-shard", retries=1, retry_delay_seconds=5)
def relabel_shard(cfg: TeacherConfig, lake: Lake, ref: TeacherRef, ids: list[str]) -> dict:
    """Teacher soft labels for one shard of message ids; returns the label contract's accounting."""
    from models.relabel import label_shard

    return label_shard(cfg, lake, ref, ids)


@task(name="check-teacher-labels")
def check_labels(settings: Settings, lake: Lake, data: SplitRef, ref: TeacherRef, night: str,
                 parent_run_id: str) -> dict:
    """Batch-level teacher-label contract (drift vs seed, mean confidence); stops the night on failure."""
    from models.relabel import check_batch_labels

    result, files, mean_confidence = check_batch_labels(lake, ref, data.load(), settings.contracts,
                                                        work_dir(settings, night) / "contracts" / "teacher", night)
    with tracking.step_run(experiment(settings), parent_run_id, "teacher-labels"):
        import mlflow

        mlflow.log_metrics({"rows_in": result.rows_in, "rows_accepted": result.rows_accepted,
                            "rows_quarantined": result.rows_quarantined, "mean_confidence": mean_confidence})
        for path in files:
            mlflow.log_artifact(str(path), "contracts")
    create_table_artifact(key="teacher-label-contract", table=[result.summary()])
    result.raise_for_failures()
    return result.summary()


@task(name="train-student")
def train_student(settings: Settings, lake: Lake, store: StudentStore, data: SplitRef, ref: TeacherRef,
                  night: str, parent_run_id: str, full_retrain: bool = False) -> dict:
    """Distill, quantize and export the candidate (bounded, or on every row with ``full_retrain``);
    records the training kind in the night's ledger; returns its folder and training summary."""
    from models.candidate import train_candidate
    from models.teacher_store import load_teacher
    from tasks.hooks import crash_point

    crash_point("train-student")  # test hook: a no-op unless EDGELOOP_TEST_CRASH_AT=train-student
    with tracking.step_run(experiment(settings), parent_run_id, "distill") as run:
        import mlflow

        result = train_candidate(settings.student, lake, ref, load_teacher(settings.teacher, ref),
                                 list(data.labels), work_dir(settings, night) / "candidate", champion_folder(store),
                                 threads=settings.torch_threads, full_retrain=full_retrain,
                                 last_full=lake.last_full_training(), night=night, collab=settings.collab,
                                 on_epoch=lambda e: mlflow.log_metrics({"loss": e.loss, **e.extra}, step=e.epoch))
        mlflow.log_params({k: v for k, v in result.items() if k not in ("history", "folder", "seconds")})
        mlflow.log_metrics({f"seconds_{k}": v for k, v in result["seconds"].items()})
        mlflow.log_param("teacher_version", ref.version)
        result["run_id"] = run.info.run_id
    lake.record_training(night, {"kind": result["training_kind"], "reason": result["training_reason"],
                                 **{k: result[k] for k in ("n_train", "n_new", "n_replay", "n_rows_trained")}})
    get_run_logger().info("student: %s training (%s) on %d rows (%d new, %d replay, %d gold), %d params, "
                          "final loss %.4f%s", result["training_kind"], result["training_reason"], result["n_train"],
                          result["n_new"], result["n_replay"] + result["n_replay_gold"], result["n_gold"],
                          result["n_params"], result["final_loss"],
                          f", warm start from v{result['warm_start_from']}" if result["warm_start_from"] else "")
    return result


@task(name="evaluate")
def evaluate(settings: Settings, lake: Lake, store: StudentStore, data: SplitRef, ref: TeacherRef,
             candidate: dict, parent_run_id: str) -> dict:
    """Teacher, candidate (as shipped) and champion on golden, the candidate's behaviour checks;
    logged to MLflow. Returns the results and the gate's smoke queries."""
    from models.evaluate import evaluate_night, golden_texts, smoke_queries, teacher_stream_accuracy
    from models.teacher_store import load_teacher

    cfg, split = settings.evaluation, data.load()
    golden = golden_texts(split)
    _, champion = champion_folder(store)
    results, behaviour = evaluate_night(
        golden, load_teacher(settings.teacher, ref), ref.folder, Path(candidate["folder"]) / "edge",
        champion / "edge" if champion else None, latency_runs=cfg.latency_runs,
        teacher_latency_runs=cfg.teacher_latency_runs, behaviour_texts=cfg.behaviour_texts)
    stream_acc = teacher_stream_accuracy(split, lake.labels(ref.cache_key, ["message_id", "label"]))
    with tracking.step_run(experiment(settings), parent_run_id, "evaluate") as run:
        import mlflow

        for name, res in results.items():
            tracking.log_eval(f"{name}.", res)
        if stream_acc is not None:
            mlflow.log_metric("teacher.stream_label_accuracy", stream_acc)
        tracking.log_eval_artifacts(results)
        mlflow.log_dict(behaviour.to_dict(), "evaluation/behaviour.json")
    rows = [{"model": k, "accuracy": round(r.accuracy, 4), "macro_f1": round(r.macro_f1, 4),
             "size_mb": round(r.size_mb or 0, 3), "p50_ms": round(r.p50_ms or 0, 3), "p95_ms": round(r.p95_ms or 0, 3)}
            for k, r in results.items()]
    create_table_artifact(key="evaluation", table=rows, description="Golden set: teacher vs student")
    return {"results": results, "run_id": run.info.run_id, "teacher_stream_accuracy": stream_acc,
            "smoke_queries": smoke_queries(golden[0], cfg.smoke_queries)}


@task(name="gate")
def gate(settings: Settings, evaluation: dict, candidate: dict, contracts_ok: bool, collab=None):
    """The promotion decision, with every check (and ``collab``'s coverage and out-of-scope checks,
    a :class:`models.collab_night.CollabNight` or None), as a Prefect artifact."""
    from models.evaluate import behaviour_rates
    from models.gate import decide

    results = evaluation["results"]
    decision = decide(results, settings.gate, contracts_ok=contracts_ok,
                      edge_dir=Path(candidate["folder"]) / "edge", smoke_texts=evaluation["smoke_queries"],
                      behaviour=behaviour_rates(results["candidate"]),
                      extra=collab.checks() if collab is not None else None)
    logger = get_run_logger()
    for check in decision.checks:
        logger.info("gate %s", check.line())
    create_table_artifact(key="gate", table=[
        {"check": c.name, "value": c.value, "threshold": f"{c.op} {c.threshold}", "verdict": "pass" if c.passed else "FAIL",
         "detail": c.detail} for c in decision.checks], description=f"Gate: {'PASS' if decision.passed else 'FAIL'}")
    return decision


@task(name="lineage")
def lineage(settings: Settings, data: SplitRef, ref: TeacherRef, night: str, parent_run_id: str,
            evaluation: dict, collab=None) -> dict:
    """What the registered version records about where it came from (with ``collab``'s policy,
    which its bundle signs in)."""
    from models.report import lineage as version_lineage

    meta = version_lineage(night, parent_run_id, ref.version, settings.dataset.name, data.split_hash,
                           settings.student.quantize, evaluation["results"]["candidate"])
    return {**meta, "collab": collab.policy.to_dict()} if collab is not None else meta


@task(name="register-candidate", retries=2, retry_delay_seconds=5)
def register(store: StudentStore, evaluation: dict, candidate: dict, decision, meta: dict, collab=None) -> str:
    """Register the candidate with its gate tags; its model card (with the history and ``collab``'s
    lines) shows in Prefect too."""
    from models.registration import register_candidate

    version, card = register_candidate(store, candidate["run_id"], Path(candidate["folder"]), decision,
                                       evaluation["results"], meta, eval_run_id=evaluation["run_id"],
                                       collab_lines=collab.card_lines() if collab is not None else None)
    create_markdown_artifact(key="model-card", markdown=card,
                             description=f"{store.name} v{version}: gate {'PASS' if decision.passed else 'FAIL'}")
    return version


@task(name="summarize")
def summarize(store: StudentStore, night: str, run_id: str, report: dict, labeled: list[dict], candidate: dict,
              evaluation: dict, decision, version: str, published: dict | None, collab=None) -> dict:
    """The night in one dict: what a person looks at first (``collab_*``: the policy's figures)."""
    from models.report import night_summary

    summary = night_summary(store, night, run_id, report, labeled, candidate, evaluation["results"],
                            evaluation["teacher_stream_accuracy"], decision, version, published)
    return {**summary, **{f"collab_{k}": v for k, v in collab.summary().items()}} if collab is not None else summary


@task(name="finish-night-run", retries=2, retry_delay_seconds=[2, 10])
def finish(settings: Settings, parent_run_id: str, summary: dict) -> None:
    """Close the parent run with the night's summary and show it in Prefect."""
    from models import registry

    c = registry.client(settings.tracking_uri())
    c.log_dict(parent_run_id, summary, "night_summary.json")
    for k in ("gate_decision", "model_version", "champion_version"):
        if summary.get(k) is not None:
            c.set_tag(parent_run_id, k, str(summary[k]))
    tracking.end_run(settings.tracking_uri(), parent_run_id, "FINISHED")
    create_markdown_artifact(key="night-summary", markdown="\n".join(
        ["# Night summary", ""] + [f"- **{k}**: {v}" for k, v in summary.items()]))


@task(name="abort-night-run", retries=1, retry_delay_seconds=2)
def abort(settings: Settings, parent_run_id: str, exc: BaseException) -> None:
    """Mark the parent run failed with the reason; the champion is untouched."""
    from models import registry

    registry.client(settings.tracking_uri()).set_tag(parent_run_id, "failure_reason",
                                                     f"{type(exc).__name__}: {exc}"[:5000])
    tracking.end_run(settings.tracking_uri(), parent_run_id, "FAILED")
