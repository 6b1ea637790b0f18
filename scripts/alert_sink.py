"""The local alert receiver that `make up` starts: Prefect's alert automations call it as a webhook.

Each ``POST /alert`` is appended as one JSON line (``received_at`` plus the alert, or its raw text
when it is not JSON) to ``--out`` (``$EDGELOOP_HOME/alerts/alerts.jsonl``) and logged to stdout;
``GET /health`` answers 200. Loopback only, stdlib only, bodies above 1 MB refused. To alert a
person instead, point the ``edgeloop-alerts`` webhook block elsewhere (README, "Alerts").

    python scripts/alert_sink.py --port 4290 --out var/alerts/alerts.jsonl
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 1 << 20


class _Sink(BaseHTTPRequestHandler):
    server_version = "edgeloop-alert-sink"
    timeout = 10  # a stuck client cannot hold a thread for long
    out: Path
    lock = threading.Lock()

    def _answer(self, status: int, text: str) -> None:
        data = (json.dumps({"status": text}) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(200 if self.path == "/health" else 404, "ok" if self.path == "/health" else "no route")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/alert":
            return self._answer(404, "no route")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._answer(411, "a Content-Length header is required")
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return self._answer(413, f"body above {MAX_BODY} bytes")
        raw = self.rfile.read(length).decode("utf-8", "replace")
        try:
            alert = json.loads(raw)
        except json.JSONDecodeError:
            alert = {"raw": raw}
        line = json.dumps({"received_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "alert": alert}, ensure_ascii=False)
        with self.lock:
            with self.out.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        print(f"ALERT {line}", flush=True)
        self._answer(200, "recorded")

    def log_message(self, fmt: str, *args) -> None:  # alerts are printed above; no access log
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Record alerts POSTed by Prefect automations as JSON lines.")
    p.add_argument("--port", type=int, default=4290)
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file the alerts are appended to")
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _Sink.out = args.out
    # down.sh stops with SIGINT first; a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Sink)
    server.daemon_threads = True
    print(f"alert sink on http://127.0.0.1:{args.port}/alert -> {args.out}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
