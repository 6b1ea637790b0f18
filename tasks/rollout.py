"""Prefect tasks for promotion and rollout: a few lines around :mod:`models.rollout` each.

Every task that moves an alias or a channel leaves a Markdown artifact with the decision and
the promotion history, so the Prefect UI shows who moved what and why.
"""

from __future__ import annotations

from functools import partial

import prefect
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from data_contracts.lake import Lake
from edgeloop.config import Settings
from models import registry, rollout

task = partial(prefect.task, cache_policy=NO_CACHE)


def _history_md(settings: Settings, last: int = 10) -> list[str]:
    from models.card import history_lines

    history = registry.read_history(settings.home_path(), settings.mlflow.student_model_name)
    return ["", f"## Promotion history (last {last})", ""] + history_lines(history[-last:])


def _artifact(settings: Settings, key: str, title: str, facts: dict) -> None:
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()] + _history_md(settings)
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=title)


@task(name="reconcile-channels", retries=2, retry_delay_seconds=5)
def reconcile(settings: Settings, by: str) -> list[dict]:
    """Finish any move a crash interrupted (canary := champion; no channel on a rolled-back version)."""
    moves = rollout.reconcile_channels(settings, by)
    for m in moves:
        get_run_logger().warning("reconciled %s -> %s: %s", m["channel"], m["model_version"], m["reason"])
    return moves


@task(name="promote-version")
def promote_version(settings: Settings, version: str, reason: str, by: str, override_failed_gate: bool) -> dict:
    """Champion + canary for a reviewed version (a failed gate needs an override and a reason)."""
    result = rollout.promote_version(settings, version, reason, by, override_failed_gate=override_failed_gate)
    _artifact(settings, "promotion", f"Promoted {settings.mlflow.student_model_name} v{rollout.registry_version(version)}",
              {"by": by, "reason": reason, "failed gate overridden": result["overridden"],
               "canary": result["channel"]["model_version"], "bundle": result["bundle"]})
    return result


@task(name="rollback")
def rollback(settings: Settings, reason: str, by: str) -> dict:
    """Champion back to previous_champion; stable and canary republished to it."""
    result = rollout.rollback(settings, reason, by)
    _artifact(settings, "rollback", f"Rolled back v{result['rolled_back']} → v{result['promotion']['to']}",
              {"by": by, "reason": reason, "channels": ", ".join(c["channel"] for c in result["channels"])})
    return result


@task(name="settle-canary", retries=1, retry_delay_seconds=5)
def settle_canary(settings: Settings, by: str) -> dict:
    """Judge the canary on the lake's feedback: promote it to stable, roll it back, or wait."""
    feedback = Lake(settings.lake_root()).feedback()
    result = rollout.settle_canary(settings, feedback, by)
    verdict = result["verdict"]
    get_run_logger().info("canary %s: %s (%s)", verdict["canary_version"], verdict["action"], verdict["reason"])
    _artifact(settings, "canary", f"Canary {verdict['canary_version']}: {verdict['action']}", verdict)
    return {"action": result["action"], "verdict": verdict}
