"""The cloud side: the registered teacher behind an HTTP endpoint (FastAPI on uvicorn).

``python -m models.cloud_server --model-dir FOLDER`` serves an ONNX edge folder (the teacher's
fp32 export the night makes for relabelling: ``<home>/cache/teacher/<v>/onnx-fp32-48``);
``python -m models.cloud_server`` with no folder serves ``teacher@production`` of the configured
registry, what the night relabels with (the ONNX export, or the torch model with
``teacher.relabel_runtime=torch``, or — with ``teacher.kind=endpoint`` — an LLM behind the
OpenAI-compatible :class:`models.teacher.EndpointTeacher`, so the device's cloud can be an LLM
with the same wire format), on the host and port of ``collab.cloud_url`` unless told otherwise.
It loads in the background and follows the alias (:mod:`models.cloud_teacher`): until a teacher
is registered ``/health`` says ``no_teacher`` and classify answers 503, so devices answer
themselves (flagged). Wire format: :mod:`edge.cloud` (the device owns it).

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
from models.cloud_teacher import Served, TeacherSlot, cloud_address, configured_url, registry_loader

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
    """Gathers the messages of concurrent requests into one ``predict_proba`` call on one thread
    (of the model the slot serves when the batch runs)."""

    def __init__(self, slot: TeacherSlot, limits: ServeLimits, stats: Stats):
        self.slot, self.limits, self.stats = slot, limits, stats
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

    async def submit(self, texts: list[str]) -> tuple[np.ndarray, int, Served]:
        """(probabilities of ``texts``, size of the batch they ran in, the model that answered)."""
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
            served = self.slot.current  # requests are admitted only once a model is served
            try:
                probs = await loop.run_in_executor(self._pool, served.predict_proba, texts)
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
                    i.future.set_result((probs[start:start + len(i.texts)], len(texts), served))
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
    return create_slot_app(TeacherSlot(Served(predict_proba, list(labels), teacher_version)), limits, token)


def create_slot_app(slot: TeacherSlot, limits: ServeLimits = ServeLimits(), token: str | None = None) -> FastAPI:
    """The FastAPI app over whatever ``slot`` serves (started and stopped with the app)."""
    stats = Stats()
    state: dict = {"in_flight": 0}

    @asynccontextmanager
    async def lifespan(app):
        slot.start()
        state["batcher"] = MicroBatcher(slot, limits, stats)
        state["batcher"].start()
        yield
        await state["batcher"].stop()
        slot.stop()

    app = FastAPI(title="edgeloop cloud teacher", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get(HEALTH_PATH)
    async def health():  # 200 while the process runs; "status" says whether it can answer
        served = slot.current
        if served is None:  # loading, no_teacher or error
            return {"status": slot.state, "teacher_version": None, "labels": 0, "reason": slot.reason}
        return {"status": "ok", "teacher_version": served.version, "labels": len(served.labels)}

    @app.get("/v1/stats")
    async def get_stats():
        return {**stats.to_dict(), "in_flight": state["in_flight"], "limits": limits.__dict__}

    @app.post(CLASSIFY_PATH)
    async def classify(request: Request):
        if token and request.headers.get("authorization") != f"Bearer {token}":
            return _error(401, "missing or wrong bearer token")
        if slot.current is None:
            return _error(503, f"{slot.state}: {slot.reason}", headers={"Retry-After": "30"})
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
            probs, batch, served = await asyncio.wait_for(state["batcher"].submit(req.texts), limits.timeout_s)
        except asyncio.TimeoutError:
            stats.timeouts_504 += 1
            return _error(504, f"no answer within {limits.timeout_s} s")
        p = calibrated_probs(np.log(np.clip(probs, 1e-12, None)), limits.temperature)
        idx, conf = p.argmax(axis=1), p.max(axis=1)
        oos = [limits.oos_threshold is not None and c < limits.oos_threshold for c in conf]
        return JSONResponse(make_response(req, [served.labels[i] for i in idx], conf.tolist(), oos, served.version,
                                          batch, (time.perf_counter() - started) * 1e3))

    return app


def main(argv: list[str] | None = None) -> None:
    """Command line: serve a teacher until interrupted."""
    ap = argparse.ArgumentParser(prog="python -m models.cloud_server", description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", help="ONNX edge folder to serve; default: teacher@production, followed")
    ap.add_argument("--config", help="edgeloop config (registry, teacher settings, collab.cloud_url)")
    ap.add_argument("--teacher-version", default="", help="version to report with --model-dir")
    ap.add_argument("--host", help="bind address; default: collab.cloud_url's host")
    ap.add_argument("--port", type=int, help="default: collab.cloud_url's port")
    ap.add_argument("--print-url", action="store_true", help="print collab.cloud_url and exit")
    ap.add_argument("--reload-s", type=float, default=60.0, help="check teacher@production this often")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for --model-dir")
    for f in ("max_batch", "max_in_flight"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(ServeLimits, f))
    for f in ("max_wait_ms", "timeout_s", "temperature"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(ServeLimits, f))
    ap.add_argument("--oos-threshold", type=float, default=None)
    args = ap.parse_args(argv)
    if args.print_url:
        print(configured_url(args.config))
        return
    host, port = args.host, args.port
    if host is None or port is None:  # the config is read only when needed
        host, port = (a or b for a, b in zip((host, port), cloud_address(configured_url(args.config))))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.model_dir:
        from edge.predictor import OnnxPredictor

        predictor = OnnxPredictor(args.model_dir, threads=args.threads)
        slot = TeacherSlot(Served(predictor.predict_proba, predictor.labels, args.teacher_version))
    else:
        slot = TeacherSlot(load=registry_loader(args.config), reload_s=args.reload_s)
    limits = ServeLimits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_in_flight=args.max_in_flight,
                         timeout_s=args.timeout_s, temperature=args.temperature, oos_threshold=args.oos_threshold)
    app = create_slot_app(slot, limits, token=os.environ.get(TOKEN_ENV) or None)
    import uvicorn

    # uvicorn's own cap is a backstop above ours (ours answers 503 with a JSON reason first).
    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="info",
                limit_concurrency=2 * args.max_in_flight + 8, timeout_keep_alive=5, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
