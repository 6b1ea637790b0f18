"""``edgeloop``: start the flows as ad-hoc runs from a terminal.

Each command runs the Prefect flow in this process (Prefect's ephemeral API, or the server named by
``PREFECT_API_URL``), prints where to look, and exits non-zero with a one-line reason on failure.
The console script ``edgeloop`` and ``python -m flows.cli`` are the same program.
"""

from __future__ import annotations

import argparse
import json
import sys

from edgeloop.config import ConfigError, load_settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML settings file (default: $EDGELOOP_CONFIG or ./edgeloop.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting, e.g. --set student.epochs=4 (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeloop", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    night = sub.add_parser("night", help="run one night of the loop now",
                           description="Ingest tonight's arrivals, relabel, distill, evaluate, gate, publish.")
    night.add_argument("--night", help="the night's date, YYYY-MM-DD (default: today, UTC)")
    night.add_argument("--input", metavar="FILE",
                       help="a shop's export of new messages (configured format) instead of the replayed stream")
    night.add_argument("--force", action="store_true", help="run the night even if the ledger says it completed")
    night.add_argument("--full-retrain", action="store_true",
                       help="train on every row of the lake tonight, not on the new rows plus a bounded replay")
    _common(night)
    boot = sub.add_parser("bootstrap-teacher", help="fine-tune and register the teacher",
                          description="Fine-tune the MiniLM teacher on the seed and register teacher@production.")
    boot.add_argument("--no-promote", action="store_true", help="register without moving the production alias")
    boot.add_argument("--if-missing", action="store_true",
                      help="do nothing when a teacher is already registered under the production alias")
    _common(boot)
    prom = sub.add_parser("promote", help="promote a reviewed student version to champion + canary",
                          description="Move champion to VERSION and publish its bundle to the canary channel.")
    prom.add_argument("version", metavar="VERSION", help="registry version of the student (3 or v3)")
    prom.add_argument("--reason", required=True, help="why (recorded in the promotion history)")
    prom.add_argument("--override-failed-gate", action="store_true",
                      help="allow a version whose gate failed (the reason is recorded as the override)")
    prom.add_argument("--by", help="who (default: the current user)")
    _common(prom)
    back = sub.add_parser("rollback", help="champion back to previous_champion; republish stable + canary",
                          description="Move champion back to previous_champion and republish both channels.")
    back.add_argument("--reason", required=True, help="why (recorded in the history and on the version)")
    back.add_argument("--by", help="who (default: the current user)")
    _common(back)
    rot = sub.add_parser("rotate-key", help="rotate a TUF role's signing keys (devices follow the new root)",
                         description="Replace the keys of a TUF role: a new root version lists the new keys, "
                         "signed by the old and the new root keys; the revoked private keys are deleted.")
    rot.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    _common(rot)
    hist = sub.add_parser("history", help="print the student's promotion history",
                          description="Every promotion, rollback and stable release, oldest first.")
    hist.add_argument("--last", type=int, default=0, help="only the last N entries")
    _common(hist)
    return parser


def _history(settings, last: int, as_json: bool) -> None:
    from models.registry import read_history

    history = read_history(settings.home_path(), settings.mlflow.student_model_name, settings.tracking_uri())
    history = history[-last:] if last > 0 else history
    if as_json:
        print(json.dumps(history, indent=2))
        return
    if not history:
        print("no promotions yet")
    for h in history:
        override = "  [failed gate overridden]" if h.get("override_failed_gate") else ""
        print(f"{h['at']}  {h['action']:<8} v{h.get('from') or '-'} -> v{h['to']}  by {h['by']}: {h['why']}{override}")


def _promotion(args, config: dict) -> dict:
    if args.command == "promote":
        from flows.promote import promote

        r = promote(version=args.version, reason=args.reason, by=args.by,
                    override_failed_gate=args.override_failed_gate, config=config)
        return {**r["promotion"], "canary": r["channel"]["model_version"], "bundle": r["bundle"]}
    from flows.promote import rollback

    r = rollback(reason=args.reason, by=args.by, config=config)
    return {**r["promotion"], "rolled_back": f"v{r['rolled_back']}",
            "channels": ", ".join(f"{c['channel']}={c['model_version']}" for c in r["channels"])}


def _print_summary(title: str, summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    print(f"\n== {title} ==")
    width = max(map(len, summary))
    for k, v in summary.items():
        print(f"  {k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edgeloop.runtime import prepare_process

    try:
        settings = load_settings(args.config, assignments=args.set)  # --set reads as EDGELOOP__… variables
        settings = prepare_process(settings)  # attaches to `make up`'s servers while they run
    except ConfigError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 2
    config = settings.model_dump(mode="json")
    if args.command == "history":
        _history(settings, args.last, args.json)
        return 0
    if args.command == "rotate-key":
        from models.rollout import tuf_repository
        from models.stores import StudentStore

        keys = tuf_repository(StudentStore.from_settings(settings)).rotate_key(args.role)
        _print_summary("key rotated", {"role": args.role, "new_key_ids": ", ".join(keys)}, args.json)
        return 0
    try:
        if args.command in ("promote", "rollback"):
            _print_summary(f"{args.command} done", _promotion(args, config), args.json)
        elif args.command == "night":
            from flows.nightly import nightly

            summary = nightly(night=args.night, input_file=args.input, config=config, force=args.force,
                              full_retrain=args.full_retrain)
            if summary.get("skipped"):
                _print_summary("night skipped", summary, args.json)
                return 0
            uri = settings.tracking_uri()
            ui = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri} "
            summary["where_to_look"] = (f"{ui} → experiment '{settings.mlflow.experiment}', run "
                                        f"{summary['mlflow_run_id']}; Models → {summary['model_name']} "
                                        f"v{summary['model_version']}")
            _print_summary("night finished", summary, args.json)
        else:
            from models.registry import alias_version

            existing = alias_version(settings.tracking_uri(), settings.teacher.registered_name, settings.teacher.alias)
            if args.if_missing and existing:
                print(f"teacher {settings.teacher.registered_name}@{settings.teacher.alias} is v{existing}: nothing to do")
                return 0
            from flows.teacher_bootstrap import teacher_bootstrap

            _print_summary("teacher registered", teacher_bootstrap(config=config, promote=not args.no_promote),
                           args.json)
    except Exception as exc:  # the flow already logged the traceback; say why in one line
        print(f"edgeloop {args.command}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
