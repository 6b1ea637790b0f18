"""A small JSON API over one :class:`edge.device.Device`, stdlib ``http.server`` only, with limits.

``POST /predict {"text"}`` → ``{"label", "confidence", "model_version", "message_id", "patched",
"base_label", "route", "deferred", "latency_ms", "cloud_ms", "teacher_version", "local_label",
"local_confidence", "flag"}`` (edge/route.py ``Prediction``: ``label`` is the answer given, null when
``route`` is ``rejected``; ``base_label`` the base model's answer without the device's patch);
``POST /predict {"texts": [...]}`` (at most 64) → ``{"predictions": [...]}`` in one model call;
``POST /feedback {"text" | "message_id", "predicted", "accepted", "corrected_label"?, "route"?,
"latency_ms"?, "cloud_ms"?}`` → the event id (route fields default to what the device remembers); ``GET /health`` → device status with ``personalization`` (503 until a model is
installed); ``GET /patch`` → the device's patch (active, base version, size, gate, what it changed,
upload policy); ``POST /patch/reset`` drops it. Bad input answers 400 with ``{"error", "field"}``.
Binds to loopback unless told otherwise.

Limits (edge/http_limits.py): a request must fully arrive within 10 s (408 otherwise: slow clients
cannot hold a worker), bodies above 64 KB get 413 before they are read, and beyond 32 open
connections the server answers 503. The stdlib server with these limits was chosen over
uvicorn/starlette: the device install has a 150 MB budget that ONNX Runtime and numpy nearly fill,
and the API is three small routes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from typing import Any

from edge.device import Device, NoModelError
from edge.http_limits import Limits, LimitedHandler, LimitedServer

log = logging.getLogger(__name__)

_FIELD = re.compile(r"field '([\w\[\]]+)'")  # "texts[3]" names the item


class BadRequest(ValueError):
    """Input the API cannot use; ``field`` names the offending JSON field."""

    def __init__(self, message: str, field: str | None = None,
                 status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.field, self.status = field, status


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"field '{name}' is required", name)
        return None
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadRequest(f"field '{name}' must be {expected}", name)
    return value


class _Handler(LimitedHandler):
    server_version = "edgeloop-edge"
    protocol_version = "HTTP/1.1"
    server: "EdgeServer"

    @property
    def device(self) -> Device:
        return self.server.device

    def log_message(self, fmt: str, *args: Any) -> None:  # route access logs to logging, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        limit = self.server.limits.max_body
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("a Content-Length header is required", status=HTTPStatus.LENGTH_REQUIRED) from None
        if length < 0:
            raise BadRequest(f"Content-Length {length} is negative")
        if length > limit:
            raise BadRequest(f"body is {length} bytes, above {limit}", status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise BadRequest(f"body ended after {len(raw)} of {length} bytes")
        try:
            body = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    def _dispatch(self, routes: dict[str, Any]) -> None:
        route = routes.get(self.path.split("?", 1)[0])
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.command} {self.path}"})
            return
        try:
            self._send(*route())
        except BadRequest as exc:
            if exc.status != HTTPStatus.BAD_REQUEST:
                self.close_connection = True  # the unread body would poison the next request
            self._send(exc.status, {"error": str(exc), "field": exc.field})
        except TimeoutError:
            self.close_connection, self._reader.timed_out = True, False  # answered here
            self._send(HTTPStatus.REQUEST_TIMEOUT, {"error": "the request body did not arrive within "
                                                    f"{self.server.limits.request_timeout_s:g} s"})
        except NoModelError as exc:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except ValueError as exc:
            match = _FIELD.search(str(exc))
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc), "field": match and match.group(1)})
        except Exception:  # noqa: BLE001 - a request must never kill the server
            log.exception("request %s %s failed", self.command, self.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error; see the device log"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch({"/health": self._health, "/patch": self._patch})

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch({"/predict": self._predict, "/feedback": self._feedback, "/patch/reset": self._patch_reset})

    def _health(self) -> tuple[int, dict[str, Any]]:
        status = self.device.status()
        ready = status["model_version"] is not None
        return (HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
                {"status": "ok" if ready else "no_model", **status})

    def _patch(self) -> tuple[int, dict[str, Any]]:
        return HTTPStatus.OK, self.device.patch_status()

    def _patch_reset(self) -> tuple[int, dict[str, Any]]:
        if self.headers.get("Content-Length", "0") != "0":
            self._body()  # read (and check) a body if one came, so the connection stays usable
        return HTTPStatus.OK, self.device.reset_patch()

    def _predict(self) -> tuple[int, dict[str, Any]]:
        body = self._body()
        if "texts" in body:
            texts = _field(body, "texts", list)
            return HTTPStatus.OK, {"predictions": [p.to_dict() for p in self.device.predict_many(texts)]}
        return HTTPStatus.OK, self.device.predict(_field(body, "text", str)).to_dict()

    def _feedback(self) -> tuple[int, dict[str, Any]]:
        body = self._body()
        message = _field(body, "message_id", str, required=False) or _field(body, "text", str, required=False)
        if message is None:
            raise BadRequest("field 'text' or 'message_id' is required", "text")
        route = {"route": _field(body, "route", str, required=False),
                 **{f: _field(body, f, (int, float), required=False) for f in ("latency_ms", "cloud_ms")}}
        event = self.device.feedback(
            message, _field(body, "predicted", str), _field(body, "accepted", bool),
            _field(body, "corrected_label", str, required=False),
            model_version=_field(body, "model_version", str, required=False), route=route)
        return HTTPStatus.CREATED, {"event_id": event["event_id"], "message_id": event["message_id"]}


class EdgeServer(LimitedServer):
    """The device's API server: :class:`LimitedServer` holding the :class:`Device` it answers for."""

    def __init__(self, address: tuple[str, int], device: Device, limits: Limits):
        self.device = device
        super().__init__(address, _Handler, limits)


def make_server(device: Device, host: str = "127.0.0.1", port: int = 0,
                limits: Limits | None = None) -> EdgeServer:
    """A bound (not yet serving) server; port 0 picks a free port (see ``server_address``)."""
    return EdgeServer((host, port), device, limits or Limits())


def start_sync_loop(device: Device, interval_s: float) -> threading.Event:
    """Sync ``device`` every ``interval_s`` seconds in a daemon thread; set the event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            result = device.sync()
            if result.status != "up_to_date":
                log.info("periodic sync: %s", result.to_dict())

    threading.Thread(target=loop, name="edge-sync", daemon=True).start()
    return stop


def serve(device: Device, host: str = "127.0.0.1", port: int = 8765, sync_interval_s: float = 0,
          limits: Limits | None = None) -> None:
    """Serve until interrupted; with ``sync_interval_s`` > 0, also follow the channel meanwhile."""
    server = make_server(device, host, port, limits)
    stop = start_sync_loop(device, sync_interval_s) if sync_interval_s > 0 else threading.Event()
    log.info("edgeloop-edge serving %s on http://%s:%d (%s)", device.device_id,
             *server.server_address[:2], server.limits)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.server_close()
