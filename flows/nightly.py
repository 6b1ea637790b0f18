"""The night: ingest → contracts → relabel → distill → quantize → evaluate → collab policy → gate → publish."""

from __future__ import annotations

from prefect import flow

from data_contracts.lake import Lake
from edgeloop.config import settings_from_json
from flows.guard import exclusive_night, mark_completed
from flows.relabel import relabel_all
from flows.schedule import import_night, night_of, scheduled_start
from models.stores import StudentStore
from tasks import collab as c
from tasks import fleet
from tasks import night as t
from tasks import rollout
from tasks.alerts import emit_gate_failed
from tasks.common import load_data


class NightStopped(RuntimeError):
    """A batch-level contract failed: the night stops before training, the champion stays."""


class InputNotIngested(RuntimeError):
    """An explicit ``input_file`` would not be ingested (its import already ran, or a night is running)."""


@flow(name="nightly", log_prints=True)
def nightly(night: str | None = None, input_file: str | None = None, config: dict | None = None,
            force: bool = False, full_retrain: bool = False) -> dict:
    """One night of the loop.

    Args:
        night: the night's date (YYYY-MM-DD); default: a scheduled run's scheduled date in
            ``schedule_timezone``, else today there. Rerunning a night adds nothing twice.
        input_file: a shop's export of new messages (the configured format) to ingest tonight
            instead of the other arrival sources. On a night already completed it runs as its
            own import (ledger entry ``<night>+import-<hash>``); if that import ran too, or
            another night is running, the run fails with the reason: an explicit input is never
            silently dropped.
        config: settings overrides, e.g. ``{"student": {"epochs": 4}}``.
        force: run a night the ledger records as completed again (otherwise it is skipped).
        full_retrain: train tonight's student on every row of the lake, not on the new rows plus
            a bounded replay (see ``student.replay_size`` and ``student.full_retrain_every_days``).

    Only one night runs at a time (``flows.guard.exclusive_night``); a night that finds another
    running, or finds itself already completed, returns ``{"night": ..., "skipped": reason}``.
    """
    settings = settings_from_json(config)
    night = night or night_of(scheduled_start(), settings.schedule_timezone)
    if input_file and not force and Lake(settings.lake_root()).completed_night(night):
        night = import_night(night, input_file)  # its own ledger entry, not a skip
    with exclusive_night(settings, night, force=force) as skipped:
        if skipped and input_file:
            raise InputNotIngested(f"{input_file} was not ingested: {skipped}. To import it again anyway: "
                                   f"edgeloop night --night {night.split('+')[0]} --input {input_file} --force")
        if skipped:
            return {"night": night, "skipped": skipped}
        summary = _night(settings, night, input_file, full_retrain)
        mark_completed(settings, night, summary)
        return summary


def _night(settings, night: str, input_file: str | None, full_retrain: bool = False) -> dict:
    """The night's steps, run under :func:`nightly`'s guard."""
    lake, store = Lake(settings.lake_root()), StudentStore.from_settings(settings)  # one each per night
    data = load_data(settings)
    run_id = t.start_night_run(settings, data, night, "nightly")
    by = f"nightly:{run_id}"
    try:
        fleet.ingest_feedback(settings, lake, store, data, night, run_id)  # device feedback: corrections become gold
        rollout.settle_canary(store, settings.bundle, lake, by=by)  # canary → stable, or rolled back
        report = t.ingest(settings, lake, data, night, input_file, run_id)
        if report["batch_failures"]:
            raise NightStopped("; ".join(report["batch_failures"]))
        ref = t.resolve_teacher(settings)
        shards = t.plan_relabel(settings.teacher, lake, ref)
        labeled = relabel_all(settings, lake, ref, shards)
        label_contract = t.check_labels(settings, lake, data, ref, night, run_id)
        candidate = t.train_student(settings, lake, store, data, ref, night, run_id, full_retrain)
        if settings.federated.enabled:  # device patches averaged in; kept only if no worse on golden
            candidate = fleet.learn_back(settings, store, data, candidate, night, run_id)
        evaluation = t.evaluate(settings, lake, store, data, ref, candidate, run_id)
        # calibration, deferral threshold, out-of-scope cut: gate checks, card lines, the bundle's policy
        collab = c.choose_policy(settings, lake, store, data, ref, candidate, run_id) \
            if settings.collab.enabled else None
        decision = t.gate(settings, evaluation, candidate, contracts_ok=report["ok"] and label_contract["ok"],
                          collab=collab)
        meta = t.lineage(settings, data, ref, night, run_id, evaluation, collab)
        version = t.register(store, evaluation, candidate, decision, meta, collab)
        if not decision.passed:
            emit_gate_failed(night=night, model_version=version, mlflow_run_id=run_id,
                             failed_checks=[c.line() for c in decision.failed])
        published = rollout.promote(store, version, f"gate passed, night {night}", by,
                                    edge_dir=f"{candidate['folder']}/edge") if decision.passed else None
        summary = t.summarize(store, night, run_id, report, labeled, candidate, evaluation,
                              decision, version, published, collab)
        t.finish(settings, run_id, summary)
        return summary
    except Exception as exc:
        t.abort(settings, run_id, exc)
        raise
