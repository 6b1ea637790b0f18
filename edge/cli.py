"""``edgeloop-edge``: the device's command line (enroll, sync, predict, feedback, rollback, status, serve, verify,
personalize, patch, patch-upload).

Options fall back to environment variables so a device's service file stays short:
``EDGELOOP_EDGE_HOME``, ``EDGELOOP_EDGE_BUNDLES``, ``EDGELOOP_EDGE_PUBLIC_KEY``,
``EDGELOOP_EDGE_DEVICE_ID``, ``EDGELOOP_EDGE_CANARY_SHARE``, ``EDGELOOP_EDGE_TUF_ROOT``,
``EDGELOOP_EDGE_PERSONALIZE`` (on/off), ``EDGELOOP_EDGE_REFIT_EVERY``, ``EDGELOOP_EDGE_UPLOAD`` (none/dp_delta),
``EDGELOOP_EDGE_DP_EPSILON``, ``EDGELOOP_EDGE_CLOUD_URL`` (where a bundle's collab policy defers;
default http://127.0.0.1:8090, the config's ``collab.cloud_url``; ``none`` = never defer),
``EDGELOOP_EDGE_CLOUD_TIMEOUT_S``, ``EDGELOOP_EDGE_CLOUD_TOKEN``. Every command prints JSON.
Errors go to stderr as JSON.
Exit codes: 0 ok, 1 sync refused or failed (or a bundle failed verification), 2 bad usage or input, 3 no model installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from edge.cloud import DEFAULT_CLOUD_URL, DEFAULT_TIMEOUT_S
from edge.device import Device, NoModelError
from edge.personal import UPLOAD_POLICIES, PersonalConfig
from edge.verify import BundleVerificationError

EXIT_OK, EXIT_SYNC, EXIT_USAGE, EXIT_NO_MODEL = 0, 1, 2, 3


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EDGELOOP_EDGE_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeloop-edge", description="Run an edgeloop edge device.")
    p.add_argument("--home", default=_env("HOME", "edge-home"),
                   help="device folder: models, feedback, device id [$EDGELOOP_EDGE_HOME, ./edge-home]")
    p.add_argument("--bundles", default=_env("BUNDLES"),
                   help="bundles root (or, once enrolled, the TUF repository): a path, file:// or http(s):// URL "
                        "[$EDGELOOP_EDGE_BUNDLES]")
    p.add_argument("--public-key", default=_env("PUBLIC_KEY"),
                   help="PEM public key that signs bundles [$EDGELOOP_EDGE_PUBLIC_KEY; default <home>/edge_signing.pub]")
    p.add_argument("--device-id", default=_env("DEVICE_ID"),
                   help="device id [$EDGELOOP_EDGE_DEVICE_ID; default: generated once, kept in <home>/device_id]")
    p.add_argument("--canary-share", type=float, default=float(_env("CANARY_SHARE", "0.1")),
                   help="share of devices in the canary cohort [$EDGELOOP_EDGE_CANARY_SHARE, 0.1]")
    p.add_argument("--personalize", choices=("on", "off"), default=_env("PERSONALIZE", "on"),
                   help="learn a per-device patch from this device's corrections [$EDGELOOP_EDGE_PERSONALIZE, on]")
    p.add_argument("--refit-every", type=int, default=int(_env("REFIT_EVERY", "10")), metavar="N",
                   help="refit the patch after N new labelled feedback events, 0: only on "
                        "'personalize' [$EDGELOOP_EDGE_REFIT_EVERY, 10]")
    p.add_argument("--upload", choices=UPLOAD_POLICIES, default=_env("UPLOAD", "none"),
                   help="what patch-upload may write: nothing, or a clipped, noised patch delta "
                        "(docs/personalization.md) [$EDGELOOP_EDGE_UPLOAD, none]")
    p.add_argument("--dp-epsilon", type=float, default=float(_env("DP_EPSILON", "1.0")),
                   help="epsilon of one dp_delta upload [$EDGELOOP_EDGE_DP_EPSILON, 1.0]")
    p.add_argument("--cloud-url", default=_env("CLOUD_URL", DEFAULT_CLOUD_URL),
                   help="cloud endpoint (edgeloop.cloud/1) that unsure messages are deferred to; 'none': never "
                        f"defer, answer them here flagged low_confidence [$EDGELOOP_EDGE_CLOUD_URL, {DEFAULT_CLOUD_URL}]")
    p.add_argument("--cloud-timeout-s", type=float, default=float(_env("CLOUD_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))),
                   help="a deferred message waits this long; then the device answers it, flagged "
                        f"cloud_unreachable [$EDGELOOP_EDGE_CLOUD_TIMEOUT_S, {DEFAULT_TIMEOUT_S}]")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    en = sub.add_parser("enroll", help="pin the TUF root: from then on sync follows channels only through TUF")
    en.add_argument("--tuf-root", default=_env("TUF_ROOT"), required=_env("TUF_ROOT") is None, metavar="PATH",
                    help="the night's TUF root (<EDGELOOP_HOME>/tuf/metadata/root.json), "
                         "delivered out of band [$EDGELOOP_EDGE_TUF_ROOT]")
    sub.add_parser("sync", help="install the bundle this device's channel points at")
    pr = sub.add_parser("predict", help="classify messages: label, route (device/cloud/rejected), latency")
    pr.add_argument("text", nargs="+", help="one message (prints one object) or several (prints a list)")
    fb = sub.add_parser("feedback", help="record whether a prediction was right")
    fb.add_argument("message", help="the message text, or the message_id that predict printed")
    fb.add_argument("--predicted", required=True, help="the label the model predicted")
    verdict = fb.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--accepted", dest="accepted", action="store_true", help="the user accepted it")
    verdict.add_argument("--rejected", dest="accepted", action="store_false", help="the user rejected it")
    fb.add_argument("--corrected-label", help="the right label, when the user gave one")
    fb.add_argument("--route", choices=("device", "cloud", "rejected"),
                    help="how the prediction was answered (predict printed it; a serving device remembers it)")
    fb.add_argument("--latency-ms", type=float, help="the prediction's latency_ms, as predict printed it")
    fb.add_argument("--cloud-ms", type=float, help="the prediction's cloud_ms, as predict printed it")
    sub.add_parser("rollback", help="go back to the previous model until the next sync")
    sub.add_parser("status", help="device id, channel, installed versions, TUF enrolment, last refusal, personalization")
    sub.add_parser("personalize", help="fit the device's patch on its stored corrections now (kept if its gate passes)")
    pa = sub.add_parser("patch", help="show the device's patch: active, base version, size, gate, what it changed")
    pa.add_argument("--reset", action="store_true", help="drop the patch (stored examples stay)")
    sub.add_parser("patch-upload", help="write what the upload policy allows about the patch (none: nothing)")
    vf = sub.add_parser("verify", help="verify a bundle folder, load it and answer smoke queries")
    vf.add_argument("folder")
    vf.add_argument("--text", action="append", default=[], help="smoke query (repeatable)")
    sv = sub.add_parser("serve", help="JSON API: POST /predict, POST /feedback, GET /health")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--no-sync", action="store_true", help="do not sync before serving")
    sv.add_argument("--sync-every", type=float, default=0, metavar="SECONDS",
                    help="sync in the background this often while serving (default 0: never)")
    return p


def _device_id(home: Path, given: str | None) -> str:
    if given:
        return given
    path = home / "device_id"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    home.mkdir(parents=True, exist_ok=True)
    device_id = f"dev-{uuid.uuid4().hex[:16]}"
    path.write_text(device_id + "\n", encoding="utf-8")
    return device_id


def make_device(args: argparse.Namespace) -> Device:
    """The :class:`Device` the parsed options describe."""
    home = Path(args.home)
    public_key = Path(args.public_key) if args.public_key else home / "edge_signing.pub"
    personal = PersonalConfig(enabled=args.personalize == "on", refit_every=args.refit_every, upload=args.upload,
                              dp_epsilon=args.dp_epsilon)
    cloud_url = None if args.cloud_url.strip().lower() in ("", "none", "off") else args.cloud_url.strip()
    return Device(_device_id(home, args.device_id), home, args.bundles, public_key, args.canary_share,
                  personal=personal, cloud_url=cloud_url, cloud_timeout_s=args.cloud_timeout_s,
                  cloud_token=os.environ.get("EDGELOOP_EDGE_CLOUD_TOKEN") or None)


def _print(payload: Any, stream=None) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False), file=stream or sys.stdout)


def verify_and_smoke(folder: Path, public_key: Path, texts: list[str]) -> dict[str, Any]:
    """Verify ``folder``, load it with ONNX Runtime and answer ``texts``: the gate's fresh-process check."""
    from edge.predictor import OnnxPredictor
    from edge.verify import verify_bundle

    manifest = verify_bundle(folder, public_key)
    predictor = OnnxPredictor(folder)
    answers = predictor.predict(texts or ["where is my order"])
    return {"model_version": manifest["model_version"], "key_id": manifest["key_id"],
            "size_bytes": manifest["size_bytes"],
            "answers": [{"label": label, "confidence": round(conf, 6)} for label, conf in answers]}


def run(args: argparse.Namespace) -> int:
    """Execute one parsed command; return the exit code."""
    if args.command == "verify":
        if not args.public_key:
            raise ValueError("verify needs --public-key (or $EDGELOOP_EDGE_PUBLIC_KEY)")
        _print(verify_and_smoke(Path(args.folder), Path(args.public_key), args.text))
        return EXIT_OK
    device = make_device(args)
    if args.command == "enroll":
        _print(device.enroll(Path(args.tuf_root)))
        return EXIT_OK
    if args.command == "sync":
        result = device.sync()
        _print(result.to_dict())
        return EXIT_OK if result.ok else EXIT_SYNC
    if args.command == "predict":
        if len(args.text) == 1:
            _print(device.predict(args.text[0]).to_dict())
        else:
            _print([p.to_dict() for p in device.predict_many(args.text)])
    elif args.command == "feedback":
        route = {"route": args.route, "latency_ms": args.latency_ms, "cloud_ms": args.cloud_ms}
        _print(device.feedback(args.message, args.predicted, args.accepted, args.corrected_label, route=route))
    elif args.command == "rollback":
        _print({"model_version": device.rollback()})
    elif args.command == "status":
        _print(device.status())
    elif args.command == "personalize":
        _print(device.personalize())
    elif args.command == "patch":
        _print(device.reset_patch() if args.reset else device.patch_status())
    elif args.command == "patch-upload":
        _print(device.patch_upload())
    elif args.command == "serve":
        from edge.server import serve
        if not args.no_sync and args.bundles:
            logging.getLogger(__name__).info("sync: %s", device.sync().to_dict())
        serve(device, args.host, args.port, args.sync_every if args.bundles else 0)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``edgeloop-edge``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except NoModelError as exc:
        _print({"error": str(exc)}, sys.stderr)
        return EXIT_NO_MODEL
    except BundleVerificationError as exc:
        _print({"error": str(exc)}, sys.stderr)
        return EXIT_SYNC
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        _print({"error": str(exc)}, sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
