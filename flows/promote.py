"""Promotion by hand and rollback: thin flows over ``tasks/rollout.py``.

Both reconcile the channels first (finishing any move a crash interrupted), then act in the
order documented in :mod:`models.rollout`: bundle → tags → alias → channels.
"""

from __future__ import annotations

import getpass

from prefect import flow

from edgeloop.config import settings_from_json
from models.stores import StudentStore
from tasks import rollout


def _user(by: str | None) -> str:
    return by or getpass.getuser()


@flow(name="promote", log_prints=True)
def promote(version: str, reason: str, by: str | None = None, override_failed_gate: bool = False,
            config: dict | None = None) -> dict:
    """Promote a reviewed ``edge-student`` version to champion and publish it to canary.

    Args:
        version: the registry version (``3`` or ``v3``).
        reason: why; required, and recorded in the promotion history and on the version.
        by: who (default: the current user).
        override_failed_gate: needed, with a reason, for a version whose gate failed.
        config: settings overrides.
    """
    store = StudentStore.from_settings(settings_from_json(config))
    rollout.reconcile(store, by=_user(by))
    return rollout.promote(store, version, reason, _user(by), override_failed_gate)


@flow(name="rollback", log_prints=True)
def rollback(reason: str, by: str | None = None, config: dict | None = None) -> dict:
    """Move ``champion`` back to ``previous_champion`` and republish stable and canary to it.

    Args:
        reason: why; required, recorded in the history and as ``rollout.reason`` on the version.
        by: who (default: the current user).
        config: settings overrides.
    """
    store = StudentStore.from_settings(settings_from_json(config))
    rollout.reconcile(store, by=_user(by))
    return rollout.rollback(store, reason, _user(by))
