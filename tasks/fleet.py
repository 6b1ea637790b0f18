"""Prefect tasks over what devices send back: feedback events and personal-patch uploads."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from data_contracts.lake import Lake
from edgeloop.config import Settings
from models import tracking
from models.stores import StudentStore, champion_folder
from tasks.common import SplitRef, experiment, task, work_dir


@task(name="ingest-feedback", retries=2, retry_delay_seconds=[2, 10])
def ingest_feedback(settings: Settings, lake: Lake, store: StudentStore, data: SplitRef, night: str,
                    parent_run_id: str) -> dict:
    """Device feedback from the inbox into the lake; corrected predictions become gold labels."""
    from data_contracts.feedback_ingest import ingest_feedback as ingest_events
    from models import registry

    known = {f"v{v}" for v in registry.list_versions(store.tracking_uri, store.name)}
    report = ingest_events(lake, settings.feedback_inbox(), settings.feedback_processed(),
                           list(data.labels), known, contracts=settings.contracts)
    with tracking.step_run(experiment(settings), parent_run_id, "feedback"):
        import mlflow

        mlflow.log_metrics({k: v for k, v in report.to_dict().items() if isinstance(v, int)})
    if report.contracts:
        create_table_artifact(key="feedback-contracts", table=report.contracts,
                              description=f"Feedback contracts, night {night}")
    get_run_logger().info("feedback: %d new event(s), %d quarantined, %d correction(s) now gold",
                          report.events_in, report.events_quarantined, report.corrections_added)
    return report.to_dict()


@task(name="learn-back")
def learn_back(settings: Settings, store: StudentStore, data: SplitRef, candidate: dict, night: str,
               parent_run_id: str) -> dict:
    """With ``federated.enabled`` and uploads in the inbox: average them into a second candidate and
    return it instead of ``candidate`` when it is no worse on golden (the gate then decides as usual);
    otherwise return ``candidate`` unchanged."""
    from edge.patch import base_fingerprint
    from models.evaluate import golden_texts
    from models.learn_back import choose, learn_back as build, pending_uploads

    cfg = settings.federated
    inbox = cfg.inbox(settings.home_path())
    if not cfg.enabled or not pending_uploads(inbox):
        return candidate
    _, champion = champion_folder(store)
    report = build(inbox, candidate["folder"], work_dir(settings, night) / "candidate-learned-back",
                   fitted_on=base_fingerprint(champion / "edge") if champion else None, clip_norm=cfg.clip_norm,
                   max_weight=cfg.max_weight, min_devices=cfg.min_devices, noise_sigma=cfg.noise_sigma, batch=night)
    verdict = choose(golden_texts(data.load()), Path(candidate["folder"]) / "edge",
                     Path(report.folder) / "edge") if report.folder else None
    with tracking.step_run(experiment(settings), parent_run_id, "learn-back"):
        import mlflow

        mlflow.log_params({"devices": report.devices, "accepted": report.accepted, "rejected": report.rejected,
                           "features": report.features, "exact": report.exact,
                           "kept": bool(verdict and verdict["keep"])})
        mlflow.log_dict(report.to_dict(), "learn_back.json")
        if verdict:
            mlflow.log_metrics({"golden_accuracy_plain": verdict["accuracy_plain"],
                                "golden_accuracy_learned_back": verdict["accuracy_learned_back"],
                                "fixed": verdict["fixed"], "broken": verdict["broken"],
                                "delta_norm": report.delta_norm, "max_share": report.max_share})
    get_run_logger().info("learn-back: %d upload(s), %d accepted, %d rejected%s", report.devices, report.accepted,
                          report.rejected, "" if not verdict else f"; golden {verdict['accuracy_plain']:.4f} -> "
                          f"{verdict['accuracy_learned_back']:.4f}, {'kept' if verdict['keep'] else 'not kept'}")
    if verdict and verdict["keep"]:
        return {**candidate, "folder": report.folder, "learned_back": True}
    return candidate
