"""The device's side of the cloud: the wire format (defined once, here) and a stdlib client.

The device owns what it sends and receives, so the cloud server (``models.cloud_server``)
imports :func:`parse_request` and :func:`make_response` from here.

``POST /v1/classify``::

    request  {"schema": "edgeloop.cloud/1", "device_id": "dev-…" | null, "model_version": "7" | null,
              "messages": [{"message_id": "<32 hex>", "text": "<redacted text>"}, …]}
    response {"schema": "edgeloop.cloud/1", "teacher_version": "3", "batch_size": 12, "server_ms": 9.1,
              "results": [{"message_id", "label", "confidence", "out_of_scope"}, …]}   # request order
    error    {"error": "<why>", "field": "<JSON field>" | null}  with 400 / 413 / 503 / 504

``batch_size`` is how many messages the server's micro-batch held (several requests' worth when
it batched). ``GET /health`` answers ``{"status": "ok", "teacher_version", "labels"}``.

:class:`CloudClient` redacts again before sending (a no-op on redacted text), so nothing
unredacted leaves the device through it. When the cloud is unreachable, slow, saturated or
answers garbage it returns None and keeps the reason in ``last_error``: the device then answers
locally and flags the answer (:func:`answer`, :func:`answer_many`). ``timeout_s`` bounds the
connect and each socket read (urllib), so a server that trickles bytes can take a little longer.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge.collab import CollabPolicy, decide
from edge.feedback import is_device_id, looks_like_message_id, message_id
from edge.redact import redact

log = logging.getLogger(__name__)

SCHEMA = "edgeloop.cloud/1"
CLASSIFY_PATH = "/v1/classify"
HEALTH_PATH = "/health"
MAX_MESSAGES = 64
MAX_TEXT_CHARS = 2000
MAX_BODY_BYTES = 256 * 1024
#: Where a device defers by default: ``collab.cloud_url``'s default (the server side's config,
#: which a device does not import; tests/test_device_collab.py checks the two agree).
DEFAULT_CLOUD_URL = "http://127.0.0.1:8090"
DEFAULT_TIMEOUT_S = 2.0
LOW_CONFIDENCE = "low_confidence"


class WireError(ValueError):
    """A request or response that does not fit the schema; ``field`` names the JSON field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CloudRequest:
    message_ids: list[str]
    texts: list[str]
    device_id: str | None
    model_version: str | None


@dataclass(frozen=True)
class CloudResult:
    message_id: str
    label: str
    confidence: float
    out_of_scope: bool


@dataclass(frozen=True)
class CloudReply:
    results: list[CloudResult]
    teacher_version: str
    batch_size: int
    server_ms: float
    latency_ms: float  # round trip measured by the client


def make_request(texts: list[str], device_id: str | None = None, model_version: str | None = None) -> dict:
    """The request object for already redacted ``texts``."""
    return {"schema": SCHEMA, "device_id": device_id, "model_version": model_version,
            "messages": [{"message_id": message_id(t), "text": t} for t in texts]}


def _optional_str(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise WireError(f"'{name}' must be a string or null", name)
    return value


def parse_request(obj: Any, max_messages: int = MAX_MESSAGES, max_text_chars: int = MAX_TEXT_CHARS) -> CloudRequest:
    """Validate a decoded request body; :class:`WireError` names the first bad field."""
    if not isinstance(obj, dict):
        raise WireError("the body must be a JSON object")
    if obj.get("schema") != SCHEMA:
        raise WireError(f"'schema' must be {SCHEMA!r}, got {obj.get('schema')!r}", "schema")
    device_id, version = _optional_str(obj, "device_id"), _optional_str(obj, "model_version")
    if device_id is not None and not is_device_id(device_id):
        raise WireError(f"'device_id' {device_id!r} is not dev-<4-32 lowercase letters/digits>", "device_id")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise WireError("'messages' must be a non-empty list", "messages")
    if len(msgs) > max_messages:
        raise WireError(f"'messages' holds {len(msgs)} messages; at most {max_messages} per request", "messages")
    ids, texts = [], []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise WireError(f"messages[{i}] must be an object", f"messages[{i}]")
        text, mid = m.get("text"), m.get("message_id")
        if not isinstance(text, str) or not text.strip():
            raise WireError(f"messages[{i}].text must be a non-empty string", f"messages[{i}].text")
        if len(text) > max_text_chars:
            raise WireError(f"messages[{i}].text has {len(text)} characters; at most {max_text_chars}",
                            f"messages[{i}].text")
        if not isinstance(mid, str) or not looks_like_message_id(mid):
            raise WireError(f"messages[{i}].message_id must be 32 lowercase hex characters",
                            f"messages[{i}].message_id")
        ids.append(mid)
        texts.append(text)
    return CloudRequest(ids, texts, device_id, version)


def make_response(request: CloudRequest, labels: list[str], confidences: list[float], out_of_scope: list[bool],
                  teacher_version: str, batch_size: int, server_ms: float) -> dict:
    """The response object, results in request order."""
    return {"schema": SCHEMA, "teacher_version": teacher_version, "batch_size": int(batch_size),
            "server_ms": round(float(server_ms), 3),
            "results": [{"message_id": i, "label": lbl, "confidence": round(float(c), 6), "out_of_scope": bool(o)}
                        for i, lbl, c, o in zip(request.message_ids, labels, confidences, out_of_scope)]}


def parse_response(obj: Any, message_ids: list[str], latency_ms: float) -> CloudReply:
    """Validate a decoded response against the ids that were sent; WireError names the field."""
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise WireError(f"response 'schema' must be {SCHEMA!r}", "schema")
    results = obj.get("results")
    if not isinstance(results, list) or len(results) != len(message_ids):
        raise WireError(f"'results' must list one result per message ({len(message_ids)})", "results")
    out = []
    for i, (r, mid) in enumerate(zip(results, message_ids)):
        if not isinstance(r, dict) or r.get("message_id") != mid:
            raise WireError(f"results[{i}].message_id does not match the message sent", f"results[{i}].message_id")
        conf = r.get("confidence")
        if not isinstance(r.get("label"), str) or not isinstance(conf, (int, float)) \
                or not math.isfinite(conf) or not 0 <= conf <= 1 or not isinstance(r.get("out_of_scope"), bool):
            raise WireError(f"results[{i}] needs a string label, a confidence in [0, 1] and a boolean "
                            "out_of_scope", f"results[{i}]")
        out.append(CloudResult(mid, r["label"], float(conf), r["out_of_scope"]))
    return CloudReply(out, str(obj.get("teacher_version", "")), int(obj.get("batch_size", len(out))),
                      float(obj.get("server_ms", 0.0)), latency_ms)


class CloudClient:
    """Send deferred messages to the cloud endpoint; None (and ``last_error``) when it fails."""

    def __init__(self, url: str, timeout_s: float = 1.0, device_id: str | None = None,
                 model_version: str | None = None, token: str | None = None):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"cloud url must start with http:// or https://, got {url!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"cloud timeout_s must be > 0, got {timeout_s!r}")
        self.url = url.rstrip("/") + CLASSIFY_PATH
        self.timeout_s = timeout_s
        self.device_id, self.model_version, self.token = device_id, model_version, token
        self.last_error: str | None = None

    def classify(self, texts: list[str], model_version: str | None = None) -> CloudReply | None:
        """The cloud's answers for ``texts`` (redacted again here), or None when it fails."""
        reply, self.last_error = self.request(texts, model_version)
        return reply

    def request(self, texts: list[str], model_version: str | None = None) -> tuple[CloudReply | None, str | None]:
        """(reply, None) or (None, why it failed): :meth:`classify` without shared state, for
        callers on several threads. ``model_version`` overrides the client's for this request."""
        sent = [redact(t)[0] for t in texts]
        body = json.dumps(make_request(sent, self.device_id, model_version or self.model_version)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read(MAX_BODY_BYTES + 1)
            latency = (time.perf_counter() - start) * 1e3
            if len(raw) > MAX_BODY_BYTES:
                raise WireError(f"response larger than {MAX_BODY_BYTES} bytes")
            return parse_response(json.loads(raw), [message_id(t) for t in sent], latency), None
        except urllib.error.HTTPError as exc:
            return self._fail(f"http {exc.code}: {exc.read(500).decode('utf-8', 'replace')}")
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            return self._fail(f"unreachable: {type(reason).__name__}: {reason}")
        except (WireError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            return self._fail(f"bad response: {exc}")

    def _fail(self, reason: str) -> tuple[None, str]:
        log.warning("cloud %s: %s", self.url, reason)
        return None, reason


@dataclass(frozen=True)
class Answer:
    """What the device answers for one message, with its route and latency (recorded in feedback).

    ``route`` says who answered: ``device``, ``cloud`` or ``rejected`` (out of scope, hand off;
    ``label`` is None). ``deferred`` is True when the policy sent the message to the cloud, even
    if the cloud failed; then the device answered locally and ``flag`` says why. A device with no
    cloud endpoint answers such a message itself, not deferred, flagged ``low_confidence: …``.
    """

    label: str | None
    confidence: float
    route: str
    deferred: bool
    local_label: str
    local_confidence: float
    latency_ms: float
    cloud_ms: float | None = None
    teacher_version: str | None = None
    flag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def unsure(self) -> bool:
        """True when the device's policy did not let it answer alone (deferred, or no cloud to defer to)."""
        return self.deferred or (self.flag or "").startswith(LOW_CONFIDENCE)


def answer(text: str, logits: Any, labels: list[str], policy: CollabPolicy, cloud: CloudClient | None,
           started: float | None = None) -> Answer:
    """Route one redacted message given the device model's ``logits`` (one row) for it.

    ``started`` is the ``time.perf_counter()`` taken before the device model ran, so
    ``latency_ms`` covers tokenization, inference and the cloud round trip.
    """
    row = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    if row.shape != (1, len(labels)):
        raise ValueError(f"logits must be one row of {len(labels)} values, got shape {row.shape}")
    return answer_many([text], row, labels, policy, cloud, started)[0]


def answer_many(texts: list[str], logits: Any, labels: list[str], policy: CollabPolicy, cloud: CloudClient | None,
                started: float | None = None, model_version: str | None = None) -> list[Answer]:
    """Route redacted ``texts`` given the device model's ``logits`` (one row each).

    The deferred ones go to the cloud together (requests of at most :data:`MAX_MESSAGES`); every
    answer's ``latency_ms`` runs from ``started`` to the end of the batch. ``cloud`` None (a device
    with no endpoint) never defers: what the policy would defer is answered by the device with
    ``flag`` ``low_confidence: …`` and ``deferred`` false.
    """
    started = time.perf_counter() if started is None else started
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape != (len(texts), len(labels)):
        raise ValueError(f"logits must be {len(texts)} row(s) of {len(labels)} values, got shape {z.shape}")
    decisions = decide(z, policy) if len(texts) else []
    deferred = [i for i, d in enumerate(decisions) if d.route == "cloud"]
    results: dict[int, tuple[CloudResult, CloudReply]] = {}
    failed: dict[int, str] = {}
    for start in range(0, len(deferred) if cloud is not None else 0, MAX_MESSAGES):
        chunk = deferred[start:start + MAX_MESSAGES]
        reply, why = cloud.request([texts[i] for i in chunk], model_version)
        for k, i in enumerate(chunk):
            if reply is None:
                failed[i] = f"cloud_unreachable: {why}"
            else:
                results[i] = (reply.results[k], reply)
    latency = round((time.perf_counter() - started) * 1e3, 3)
    out = []
    for i, d in enumerate(decisions):
        local = labels[d.index]
        mine = (local, round(d.confidence, 6), d.route)  # the device's own answer and the policy's route
        if d.route != "cloud":
            out.append(_answer(mine, None if d.route == "rejected" else local, d.confidence, d.route, latency))
        elif cloud is None:
            out.append(_answer(mine, local, d.confidence, "device", latency, deferred=False,
                               flag=f"{LOW_CONFIDENCE}: no cloud endpoint configured"))
        elif i in failed:
            out.append(_answer(mine, local, d.confidence, "device", latency, flag=failed[i]))
        else:
            r, reply = results[i]
            out.append(_answer(mine, None if r.out_of_scope else r.label, r.confidence,
                               "rejected" if r.out_of_scope else "cloud", latency,
                               cloud_ms=round(reply.latency_ms, 3), teacher_version=reply.teacher_version))
    return out


def _answer(mine: tuple[str, float, str], label: str | None, confidence: float, route: str, latency: float,
            deferred: bool | None = None, **extra) -> Answer:
    local, local_conf, decided = mine
    return Answer(label, round(float(confidence), 6), route, decided == "cloud" if deferred is None else deferred,
                  local, local_conf, latency, **extra)
