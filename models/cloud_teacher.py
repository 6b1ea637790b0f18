"""What the cloud endpoint answers with: a fixed model, or the registry's ``teacher@production``
followed as it changes.

:class:`TeacherSlot` holds the model being served (:class:`Served`: ``predict_proba``, labels,
version), or None with the reason. With a loader (:func:`registry_loader`) it is filled in the
background and checked again every ``reload_s``: a server started before any teacher is registered
(``make up`` on a fresh home) answers 503 "no teacher" until the night or ``edgeloop
bootstrap-teacher`` registers one, and a newly promoted teacher replaces the old one without a
restart. A failed reload keeps the model already served.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    predict_proba: Callable[[list[str]], np.ndarray]
    labels: list[str]
    version: str


class TeacherSlot:
    """The served model (or None, with ``state`` loading / no_teacher / error and the ``reason``);
    ``load`` returns a new :class:`Served`, or the current one when the version is unchanged, or
    raises LookupError when there is none to serve."""

    def __init__(self, served: Served | None = None, load: Callable[[Served | None], Served] | None = None,
                 reload_s: float = 60.0):
        self.current, self.load, self.reload_s = served, load, reload_s
        self.state, self.reason = ("ok", "") if served is not None else ("loading", "loading the teacher")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Ask the loader once; keep what is served when it fails."""
        if self.load is None:
            return
        try:
            served = self.load(self.current)
        except LookupError as exc:  # nothing registered (yet)
            if self.current is None:
                self.state, self.reason = "no_teacher", str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a broken registry or export must not kill the server
            log.exception("loading the teacher failed")
            if self.current is None:
                self.state, self.reason = "error", f"loading the teacher failed: {type(exc).__name__}: {exc}"
            return
        if self.current is None or served.version != self.current.version:
            log.info("cloud now serves teacher %s (was %s)", served.version,
                     self.current.version if self.current else None)
        self.current, self.state, self.reason = served, "ok", ""

    def start(self) -> None:
        """Load in the background now, then every ``reload_s`` (nothing to do without a loader)."""
        if self.load is None or self._thread is not None:
            return

        def loop() -> None:
            self.refresh()
            while not self._stop.wait(self.reload_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="cloud-teacher-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def registry_loader(config: str | None) -> Callable[[Served | None], Served]:
    """A loader of ``teacher@production`` (``teacher.registered_name@teacher.alias``) from the
    configured registry, tracking to ``make up``'s MLflow server while it runs; the model is what
    the night relabels with (ONNX fp32 export, the torch model, or the LLM endpoint)."""

    def load(current: Served | None) -> Served:
        from edgeloop.config import load_settings
        from edgeloop.runtime import attach_mlflow
        from models import registry
        from models.teacher_store import relabel_teacher, resolve_teacher

        settings = attach_mlflow(load_settings(config))
        cfg = settings.teacher
        version = registry.alias_version(settings.tracking_uri(), cfg.registered_name, cfg.alias)
        if version is None:
            raise LookupError(f"no registered model '{cfg.registered_name}@{cfg.alias}' in "
                              f"{settings.tracking_uri()} (run `edgeloop bootstrap-teacher` or a night)")
        if current is not None and current.version == str(version):
            return current
        ref = resolve_teacher(settings.tracking_uri(), cfg, settings.home_path() / "cache")
        teacher = relabel_teacher(cfg, ref)
        return Served(teacher.predict_proba, list(teacher.labels), ref.version)

    return load


def configured_url(config: str | None = None) -> str:
    """``collab.cloud_url`` of the configured settings: where devices defer to by default."""
    from edgeloop.config import load_settings

    return load_settings(config).collab.cloud_url


def cloud_address(url: str) -> tuple[str, int]:
    """(host, port) to serve ``url`` on; ValueError for anything but plain http (TLS belongs to a proxy)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"cloud url {url!r}: the cloud server speaks plain http; pass --host and --port")
    return parts.hostname, parts.port or 80
