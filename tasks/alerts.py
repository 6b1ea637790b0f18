"""Alerts: Prefect automations that call a webhook when a night fails or its gate fails.

- ``edgeloop: night failed`` fires on a flow run of flow ``nightly`` entering Failed, Crashed or
  TimedOut (Prefect emits ``prefect.flow-run.<state>`` events itself).
- ``edgeloop: gate failed`` fires on the event :data:`GATE_FAILED_EVENT`, which the night emits
  with :func:`emit_gate_failed` when a candidate fails its gate (a failed gate is a completed
  night, so the first automation does not see it).

Both call the webhook block :data:`BLOCK_NAME` with :data:`PAYLOAD` (JSON with a Slack-style
``text``). ``make up`` points the block at the local receiver ``scripts/alert_sink.py``, which
appends to ``$EDGELOOP_HOME/alerts/alerts.jsonl``; ``$EDGELOOP_ALERT_WEBHOOK_URL`` (or editing the
block in the UI) sends them anywhere else.

    python -m tasks.alerts setup --webhook-url http://127.0.0.1:4290/alert   # PREFECT_API_URL set
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)

GATE_FAILED_EVENT = "edgeloop.gate.failed"
NIGHT_FLOW = "nightly"
BLOCK_NAME = "edgeloop-alerts"
NIGHT_FAILED, GATE_FAILED = "edgeloop: night failed", "edgeloop: gate failed"
# Every value goes through tojson, so quotes in a reason cannot break the JSON.
PAYLOAD = """{"text": {{ (automation.name ~ " (" ~ event.event ~ ", " ~ event.resource.name ~ ")") | tojson }},
 "automation": {{ automation.name | tojson }},
 "event": {{ event.event | tojson }},
 "occurred": {{ event.occurred.isoformat() | tojson }},
 "resource": {{ event.resource.id | tojson }},
 "resource_name": {{ event.resource.name | tojson }},
 "related": {{ event.related | map(attribute="name") | select | list | tojson }},
 "payload": {{ event.payload | tojson }}}"""


def emit_gate_failed(night: str, model_version: str | None, failed_checks: list[str],
                     mlflow_run_id: str | None = None) -> bool:
    """Emit :data:`GATE_FAILED_EVENT` for ``night``; True when an events client took it.

    Call it inside the night's flow run (Prefect then relates the event to that run). It never
    raises: an alert that cannot be sent must not fail the night; the reason is logged instead.
    """
    try:
        from prefect.events import emit_event

        event = emit_event(
            event=GATE_FAILED_EVENT,
            resource={"prefect.resource.id": f"edgeloop.night.{night}",
                      "prefect.resource.name": f"nightly-{night}"},
            payload={"night": night, "model_version": model_version, "failed_checks": list(failed_checks),
                     "mlflow_run_id": mlflow_run_id})
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not emit %s for night %s: %s", GATE_FAILED_EVENT, night, exc)
        return False
    return event is not None


def alert_automations(block_document_id) -> list:
    """The two automations (not yet created), both calling the webhook block ``block_document_id``."""
    from prefect.automations import AutomationCore as Automation, CallWebhook, EventTrigger, Posture

    action = CallWebhook(block_document_id=block_document_id, payload=PAYLOAD)
    night = EventTrigger(
        expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": NIGHT_FLOW},
        posture=Posture.Reactive, threshold=1, within=0)
    gate = EventTrigger(expect={GATE_FAILED_EVENT}, match={"prefect.resource.id": "edgeloop.night.*"},
                        posture=Posture.Reactive, threshold=1, within=0)
    return [Automation(name=NIGHT_FAILED, description=f"A flow run of '{NIGHT_FLOW}' failed or crashed.",
                       trigger=night, actions=[action]),
            Automation(name=GATE_FAILED, description="A night's candidate failed its gate "
                       "(event emitted by tasks.alerts.emit_gate_failed).", trigger=gate, actions=[action])]


def ensure_alerts(webhook_url: str) -> dict[str, str]:
    """Save the webhook block and (re)create both automations on the current Prefect API.

    Idempotent: automations of the same names are replaced, the block is overwritten.
    Returns ``{name: id}`` for the block and the automations.
    """
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    if not webhook_url.startswith(("http://", "https://")):
        raise ValueError(f"webhook_url must be an http(s) URL, got {webhook_url!r}")
    block_id = Webhook(method="POST", url=webhook_url,
                       headers={"Content-Type": "application/json"}).save(BLOCK_NAME, overwrite=True)
    ids = {BLOCK_NAME: str(block_id)}
    with get_client(sync_client=True) as client:
        for automation in alert_automations(block_id):
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            ids[automation.name] = str(client.create_automation(automation))
    return ids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.alerts", description="edgeloop's Prefect alert automations.")
    sub = p.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup", help="create the webhook block and the automations (PREFECT_API_URL)")
    setup.add_argument("--webhook-url", required=True, help="where alerts are POSTed")
    args = p.parse_args(argv)
    print(json.dumps(ensure_alerts(args.webhook_url), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
