"""The cloud side: the registered teacher behind an HTTP endpoint (FastAPI on uvicorn).

``python -m models.cloud_server --model-dir FOLDER`` serves an ONNX edge folder (the teacher's
fp32 export the night makes for relabelling: ``<home>/cache/teacher/<v>/onnx-fp32-48``);
``python -m models.cloud_server`` with no folder resolves ``teacher@production`` from the
configured registry and serves what the night relabels with (the ONNX export, or the torch model
with ``teacher.relabel_runtime=torch``, or — with ``teacher.kind=endpoint`` — an LLM behind the
OpenAI-compatible :class:`models.teacher.EndpointTeacher`, so the device's cloud can be an LLM
with the same wire format). Wire format: :mod:`edge.cloud` (the device owns it).

Serving limits (:class:`ServeLimits`):
- micro-batching: messages of concurrent requests are run in one model call of about
  ``max_batch`` messages; the batcher waits at most ``max_wait_ms`` after the first one;
- at most ``max_in_flight`` requests at once; the next gets 503 with ``Retry-After``;
- a request not answered within ``timeout_s`` gets 504 (and is dropped if not started);
- a body above ``max_body_bytes`` gets 413 before it is read; bad JSON or fields 400.
One process runs one model thread (the batcher); scale out with more processes behind a load
balancer. Binds to loopback unless told otherwise; set ``EDGELOOP_CLOUD_TOKEN`` to require
``Authorization: Bearer <token>`` (TLS belongs to the proxy in front).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from edge.cloud import (CLASSIFY_PATH, HEALTH_PATH, MAX_BODY_BYTES, WireError, make_response,
                        parse_request)
from edge.collab import calibrated_probs

log = logging.getLogger(__name__)
TOKEN_ENV = "EDGELOOP_CLOUD_TOKEN"


@dataclass(frozen=True)
class ServeLimits:
    """How much the endpoint takes on, and how the teacher's answers are turned into routes."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_in_flight: int = 64
    timeout_s: float = 2.0
    max_body_bytes: int = MAX_BODY_BYTES
    temperature: float = 1.0                 # the teacher's own calibration
    oos_threshold: float | None = None       # teacher calibrated confidence below it: out of scope

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_in_flight", "max_body_bytes", "timeout_s", "temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"ServeLimits.max_wait_ms must be >= 0, got {self.max_wait_ms!r}")


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future


@dataclass
class Stats:
    requests: int = 0
    messages: int = 0
    batches: int = 0
    max_batch_seen: int = 0
    busy_503: int = 0
    timeouts_504: int = 0
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        sizes = self.batch_sizes[-1000:]
        return {"requests": self.requests, "messages": self.messages, "batches": self.batches,
                "max_batch_seen": self.max_batch_seen, "mean_batch": float(np.mean(sizes)) if sizes else 0.0,
                "busy_503": self.busy_503, "timeouts_504": self.timeouts_504, "errors": self.errors}


class MicroBatcher:
    """Gathers the messages of concurrent requests into one ``predict_proba`` call on one thread."""

    def __init__(self, predict_proba: Callable[[list[str]], np.ndarray], limits: ServeLimits, stats: Stats):
        self.predict_proba, self.limits, self.stats = predict_proba, limits, stats
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cloud-model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(probabilities of ``texts``, size of the batch they ran in)."""
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(texts, fut))
        return await fut

    async def _gather(self) -> list[_Item]:
        items = [await self._queue.get()]
        n = len(items[0].texts)
        deadline = time.monotonic() + self.limits.max_wait_ms / 1e3
        while n < self.limits.max_batch:
            try:  # whatever is queued already joins at once; then wait out the rest of max_wait
                item = self._queue.get_nowait() if not self._queue.empty() else await asyncio.wait_for(
                    self._queue.get(), max(0.0, deadline - time.monotonic()))
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            items.append(item)
            n += len(item.texts)
        return [i for i in items if not i.future.done()]  # requests that timed out are dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            if not items:
                continue
            texts = [t for i in items for t in i.texts]
            try:
                probs = await loop.run_in_executor(self._pool, self.predict_proba, texts)
            except Exception as exc:  # the model failed: every waiting request learns why
                log.exception("cloud model failed on a batch of %d", len(texts))
                self.stats.errors += 1
                for i in items:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(texts))
            self.stats.batch_sizes.append(len(texts))
            start = 0
            for i in items:
                if not i.future.done():
                    i.future.set_result((probs[start:start + len(i.texts)], len(texts)))
                start += len(i.texts)


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is (or claims to be) larger than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def create_app(predict_proba: Callable[[list[str]], np.ndarray], labels: list[str], teacher_version: str,
               limits: ServeLimits = ServeLimits(), token: str | None = None) -> FastAPI:
    """The FastAPI app over a teacher's ``predict_proba`` (columns in ``labels`` order)."""
    stats = Stats()
    state: dict = {"in_flight": 0}

    @asynccontextmanager
    async def lifespan(app):
        state["batcher"] = MicroBatcher(predict_proba, limits, stats)
        state["batcher"].start()
        yield
        await state["batcher"].stop()

    app = FastAPI(title="edgeloop cloud teacher", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get(HEALTH_PATH)
    async def health():
        return {"status": "ok", "teacher_version": teacher_version, "labels": len(labels)}

    @app.get("/v1/stats")
    async def get_stats():
        return {**stats.to_dict(), "in_flight": state["in_flight"], "limits": limits.__dict__}

    @app.post(CLASSIFY_PATH)
    async def classify(request: Request):
        if token and request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "missing or wrong bearer token")
        if state["in_flight"] >= limits.max_in_flight:
            stats.busy_503 += 1
            return _error(503, f"saturated: {limits.max_in_flight} requests in flight", headers={"Retry-After": "1"})
        state["in_flight"] += 1
        try:
            return await _classify(request)
        finally:
            state["in_flight"] -= 1

    async def _classify(request: Request) -> JSONResponse:
        started = time.perf_counter()
        raw = await _read_body(request, limits.max_body_bytes)
        if raw is None:
            return _error(413, f"body larger than {limits.max_body_bytes} bytes")
        try:
            req = parse_request(json.loads(raw))
        except WireError as exc:
            return _error(400, str(exc), exc.field)
        except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
            return _error(400, f"body is not JSON: {exc}")
        stats.requests += 1
        stats.messages += len(req.texts)
        try:
            probs, batch = await asyncio.wait_for(state["batcher"].submit(req.texts), limits.timeout_s)
        except asyncio.TimeoutError:
            stats.timeouts_504 += 1
            return _error(504, f"no answer within {limits.timeout_s} s")
        p = calibrated_probs(np.log(np.clip(probs, 1e-12, None)), limits.temperature)
        idx, conf = p.argmax(axis=1), p.max(axis=1)
        oos = [limits.oos_threshold is not None and c < limits.oos_threshold for c in conf]
        return JSONResponse(make_response(req, [labels[i] for i in idx], conf.tolist(), oos, teacher_version,
                                          batch, (time.perf_counter() - started) * 1e3))

    return app


def _registered_teacher(config: str | None):
    """(predict_proba, labels, version) of ``teacher@production`` from the configured registry."""
    from edgeloop.config import load_settings
    from models.teacher_store import relabel_teacher, resolve_teacher

    settings = load_settings(config)
    ref = resolve_teacher(settings.tracking_uri(), settings.teacher, settings.home_path() / "cache")
    teacher = relabel_teacher(settings.teacher, ref)
    return teacher.predict_proba, list(teacher.labels), ref.version


def main(argv: list[str] | None = None) -> None:
    """Command line: serve a teacher until interrupted."""
    ap = argparse.ArgumentParser(prog="python -m models.cloud_server", description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", help="ONNX edge folder to serve; default: teacher@production")
    ap.add_argument("--config", help="edgeloop config (registry, teacher settings)")
    ap.add_argument("--teacher-version", default="", help="version to report with --model-dir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for --model-dir")
    for f in ("max_batch", "max_in_flight"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(ServeLimits, f))
    for f in ("max_wait_ms", "timeout_s", "temperature"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(ServeLimits, f))
    ap.add_argument("--oos-threshold", type=float, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.model_dir:
        from edge.predictor import OnnxPredictor

        predictor = OnnxPredictor(args.model_dir, threads=args.threads)
        predict, labels, version = predictor.predict_proba, predictor.labels, args.teacher_version
    else:
        predict, labels, version = _registered_teacher(args.config)
    limits = ServeLimits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_in_flight=args.max_in_flight,
                         timeout_s=args.timeout_s, temperature=args.temperature, oos_threshold=args.oos_threshold)
    app = create_app(predict, labels, version, limits, token=os.environ.get(TOKEN_ENV) or None)
    import uvicorn

    # uvicorn's own cap is a backstop above ours (ours answers 503 with a JSON reason first).
    uvicorn.run(app, host=args.host, port=args.port, workers=1, access_log=False, log_level="info",
                limit_concurrency=2 * args.max_in_flight + 8, timeout_keep_alive=5, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
