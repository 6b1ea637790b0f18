"""Prefect tasks for promotion and rollout: a few lines around :mod:`models.rollout` and
:mod:`models.canary` each, named as they are (promote, rollback, reconcile, settle_canary).

Every task that moves an alias or a channel leaves a Markdown artifact with the decision and
the promotion history, so the Prefect UI shows who moved what and why.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from data_contracts.lake import Lake
from edgeloop.config import BundleConfig
from models import canary, rollout
from models.stores import StudentStore
from tasks.common import task


def _history_md(store: StudentStore, last: int = 10) -> list[str]:
    from models.card import history_lines

    return ["", f"## Promotion history (last {last})", ""] + history_lines(store.history()[-last:])


def _artifact(store: StudentStore, key: str, title: str, facts: dict) -> None:
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in facts.items()] + _history_md(store)
    create_markdown_artifact(key=key, markdown="\n".join(lines), description=title)


@task(name="reconcile-channels", retries=2, retry_delay_seconds=5)
def reconcile(store: StudentStore, by: str) -> list[dict]:
    """Finish any move a crash interrupted (canary := champion; no channel on a rolled-back version)."""
    moves = rollout.reconcile(store, by)
    for m in moves:
        get_run_logger().warning("reconciled %s -> %s: %s", m["channel"], m["model_version"], m["reason"])
    return moves


@task(name="promote")
def promote(store: StudentStore, version: str, reason: str, by: str, override_failed_gate: bool = False,
            edge_dir: str | Path | None = None) -> dict:
    """Champion + canary for ``version`` (a failed gate needs an override and a reason). The night
    passes its candidate's ``edge_dir`` so the bundle is signed from it rather than downloaded."""
    result = rollout.promote(store, version, reason, by, override_failed_gate=override_failed_gate,
                             edge_dir=edge_dir)
    _artifact(store, "promotion", f"Promoted {store.name} v{rollout.registry_version(version)}",
              {"by": by, "reason": reason, "failed gate overridden": result["overridden"],
               "canary": result["channel"]["model_version"], "bundle": result["bundle"]})
    return result


@task(name="rollback")
def rollback(store: StudentStore, reason: str, by: str) -> dict:
    """Champion back to previous_champion; stable and canary republished to it."""
    result = rollout.rollback(store, reason, by)
    _artifact(store, "rollback", f"Rolled back v{result['rolled_back']} → v{result['promotion']['to']}",
              {"by": by, "reason": reason, "channels": ", ".join(c["channel"] for c in result["channels"])})
    return result


@task(name="settle-canary", retries=1, retry_delay_seconds=5)
def settle_canary(store: StudentStore, cfg: BundleConfig, lake: Lake, by: str) -> dict:
    """Judge the canary on the lake's feedback: release it to stable, roll it back, or wait."""
    result = canary.settle_canary(store, cfg, lake.feedback(), by)
    verdict = result["verdict"]
    get_run_logger().info("canary %s: %s (%s)", verdict["canary_version"], verdict["action"], verdict["reason"])
    _artifact(store, "canary", f"Canary {verdict['canary_version']}: {verdict['action']}", verdict)
    return {"action": result["action"], "verdict": verdict}
