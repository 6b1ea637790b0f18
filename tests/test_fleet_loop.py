"""The closed loop on a 20-device in-process fleet: feedback → lake → canary verdict → rollback."""

from __future__ import annotations

import shutil

from data_contracts.feedback_ingest import ingest_feedback
from data_contracts.lake import Lake
from edge.device import Device
from models import canary, registry, rollout
from rollout_fixtures import LABELS, NAME, aliases, channels, register, settings, store  # noqa: F401
from edge_fixtures import edge_model_dirs, signing_keys  # noqa: F401

CANARY_SHARE = 0.3
TEXTS = ["where is my order 1137", "i want a refund", "cancel my order", "track my package please",
         "give me my money back"]


def _use(devices, bad_version: str, round_: int) -> None:
    """Users accept 9 in 10 answers of a good model and reject (correcting) 4 in 5 of the bad one."""
    for i, d in enumerate(devices):
        for j, text in enumerate(TEXTS):
            p = d.predict(f"{text} ({d.device_id} round {round_})")
            bad = p.model_version == bad_version
            k = (i * len(TEXTS) + j) % 10
            if (bad and k < 8) or (not bad and k == 0):
                right = next(label for label in LABELS if label != p.label)
                d.feedback(p.message_id, p.label, accepted=False, corrected_label=right)
            else:
                d.feedback(p.message_id, p.label, accepted=True)


def _upload(devices, inbox) -> None:
    """What a device's uploader does: its feedback files land in the night's inbox."""
    for d in devices:
        for f in (d.home / "feedback").glob("*.jsonl"):
            target = inbox / d.device_id / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(f, target)


def _known(settings):  # noqa: F811
    return {f"v{v}" for v in registry.list_versions(settings.tracking_uri(), NAME)}


def test_bad_canary_detected_from_feedback_and_fleet_converges_back(settings, edge_model_dirs, tmp_path, store):  # noqa: F811
    good, bad = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"])
    rollout.promote(store, good, "first champion", "alice")
    rollout.release(store, good, "first release", "alice")
    devices = [Device(f"dev-{i:04d}", tmp_path / "homes" / f"dev-{i:04d}", settings.bundles_root().as_uri(),
                      settings.public_key_path(), CANARY_SHARE) for i in range(20)]
    canaries = [d for d in devices if d.channel() == "canary"]
    assert 2 <= len(canaries) <= 12
    assert all(d.sync().ok for d in devices) and {d.current_version() for d in devices} == {f"v{good}"}

    rollout.promote(store, bad, "gate passed, night 2", "nightly:n2")  # the canary goes out
    assert all(d.sync().ok for d in devices)
    assert {d.current_version() for d in canaries} == {f"v{bad}"}
    _use(devices, f"v{bad}", 1)
    inbox, processed, lake = settings.feedback_inbox(), settings.feedback_processed(), Lake(settings.home_path() / "lake")
    _upload(devices, inbox)

    report = ingest_feedback(lake, inbox, processed, LABELS, _known(settings))
    assert report.events_in == 100 and report.events_accepted == 100 and report.events_added == 100
    assert not list(inbox.rglob("*.jsonl")) and len(list(processed.rglob("*.jsonl"))) == 20
    out = canary.settle_canary(store, settings.bundle, lake.feedback(), "nightly:n3")
    assert out["action"] == "rollback", out["verdict"]
    assert aliases(settings)[0] == good and channels(settings) == {"canary": f"v{good}", "stable": f"v{good}"}
    assert registry.version_tags(settings.tracking_uri(), NAME, bad)["rollout.status"] == "rolled_back"

    assert all(d.sync().ok for d in devices)
    assert {d.current_version() for d in devices} == {f"v{good}"}  # the fleet converged back
    assert all(d.predict("refund please").model_version == f"v{good}" for d in devices)


def test_feedback_corrections_become_gold_once(settings, edge_model_dirs, tmp_path, store):  # noqa: F811
    v1 = register(settings, edge_model_dirs["v1"])
    rollout.promote(store, v1, "first", "alice")
    rollout.release(store, v1, "first", "alice")
    devices = [Device(f"dev-{i:04d}", tmp_path / f"dev-{i:04d}", settings.bundles_root().as_uri(),
                      settings.public_key_path(), 0.0) for i in range(3)]
    for d in devices:
        d.sync()
    lake, inbox = Lake(settings.home_path() / "lake"), settings.feedback_inbox()
    # A stream message is already in the lake, unlabeled; a device user then corrects its prediction.
    import pandas as pd
    from data_contracts.datasets import message_id

    lake.append_messages(pd.DataFrame({"message_id": [message_id("cancel my order")], "text": ["cancel my order"]}),
                         source="stream")
    p = devices[0].predict("cancel my order")
    wrong = next(label for label in LABELS if label != "cancel_order")
    devices[0].feedback(p.message_id, wrong, accepted=False, corrected_label="cancel_order")
    p2 = devices[1].predict("i want a refund for order 1137")
    devices[1].feedback(p2.message_id, "track_order", accepted=False, corrected_label="get_refund")
    p3 = devices[2].predict("where is my order")
    devices[2].feedback(p3.message_id, p3.label, accepted=True)
    _upload(devices, inbox)
    (inbox / "junk.jsonl").write_text('{"event_id": "x"}\nnot json\n')  # a broken upload is not fatal

    report = ingest_feedback(lake, inbox, settings.feedback_processed(), LABELS, _known(settings))
    assert (report.events_in, report.corrections_added) == (3, 2)
    gold = lake.training_messages().set_index("message_id")["gold_label"]
    assert gold[message_id("cancel my order")] == "cancel_order"  # corrected after ingestion
    assert gold[p2.message_id] == "get_refund"  # new text, ingested with source=feedback
    assert pd.isna(gold[p3.message_id])  # an accept is not gold: the teacher labels it
    msgs = lake.messages().set_index("message_id")
    assert msgs.loc[p2.message_id, "source"] == "feedback" and "1137" not in msgs.loc[p2.message_id, "text"]

    # The same files delivered again add nothing.
    for f in settings.feedback_processed().rglob("*.jsonl"):
        shutil.copy(f, inbox / f"again-{f.parent.name}-{f.name}")
    again = ingest_feedback(lake, inbox, settings.feedback_processed(), LABELS, _known(settings))
    assert (again.events_in, again.events_seen_before, again.corrections_added) == (0, 3, 0)
    assert len(lake.feedback()) == 3 and len(lake.corrections()) == 2


def test_feedback_from_unknown_versions_is_quarantined(settings, edge_model_dirs, tmp_path, store):  # noqa: F811
    v1 = register(settings, edge_model_dirs["v1"])
    rollout.promote(store, v1, "first", "alice")
    d = Device("dev-abcd1", tmp_path / "dev", settings.bundles_root().as_uri(), settings.public_key_path(), 1.0)
    d.sync()
    p = d.predict("where is my order")
    d.feedback(p.message_id, p.label, accepted=True)
    d.feedback(p.message_id, p.label, accepted=True, model_version="v99")  # a version nobody published
    lake = Lake(settings.home_path() / "lake")
    _upload([d], settings.feedback_inbox())
    report = ingest_feedback(lake, settings.feedback_inbox(), settings.feedback_processed(), LABELS,
                             _known(settings))
    assert (report.events_accepted, report.events_quarantined) == (1, 1)
    q = lake.quarantined()
    assert (q["contract"] == "feedback@1").sum() == 1 and "model_version" in q["reason"].iloc[0]
