"""How a device answers: its model (with its patch), the bundle's collab policy and the cloud.

:class:`DeviceRouting` is the answering half of :class:`edge.device.Device` (a mixin: it uses the
device's ``home``, ``device_id``, ``_lock``, ``_active`` and ``_recent``). Per message:

- a bundle without a ``collab`` block in its signed manifest (older bundles): the device answers
  everything itself, route ``device``, exactly as before;
- with one (:class:`edge.collab.CollabPolicy`): ``device`` answers what it is sure of, ``cloud``
  (the redacted text goes to the configured endpoint, :mod:`edge.cloud`) what it is not, and
  ``rejected`` is "out of scope, hand off" (``label`` null). A cloud that does not answer in time
  leaves the answer to the device, flagged ``cloud_unreachable: …``; a device with no cloud URL
  never defers and flags those answers ``low_confidence: …``.

The policy reads the logits the device serves (the patched ones when a patch is active): the
confidence it compares with the threshold is that of the answer given. Every message the policy
did not let the device answer alone (except rejections) is written home as a deferral record
(:func:`edge.feedback.make_deferral`), so the night relabels it first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.cloud import Answer, CloudClient, answer_many
from edge.collab import CollabPolicy
from edge.feedback import ROUTE_FIELDS, append_event, make_deferral, message_id
from edge.patch import base_outputs, softmax
from edge.redact import redact
from edge.verify import BundleVerificationError, read_manifest

log = logging.getLogger("edge.device")

MAX_TEXT_CHARS = 20_000
MAX_BATCH = 64  # texts per predict_many call
_RECENT = 1024  # message ids remembered so feedback can name a message by id only


@dataclass(frozen=True)
class Prediction:
    """One answer. ``label`` is the answer given (the cloud's when ``route`` is ``cloud``; null when
    ``rejected``), ``confidence`` its confidence (calibrated when the bundle carries a policy),
    ``base_label`` the base model's answer without the device's patch, ``local_label`` /
    ``local_confidence`` the device's own; ``latency_ms`` runs from the text's arrival to the
    answer (model and cloud round trip), ``cloud_ms`` is the round trip alone."""

    label: str | None
    confidence: float
    model_version: str
    message_id: str
    patched: bool = False
    base_label: str | None = None
    route: str = "device"
    deferred: bool = False
    latency_ms: float | None = None
    cloud_ms: float | None = None
    teacher_version: str | None = None
    local_label: str | None = None
    local_confidence: float | None = None
    flag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def route_fields(self) -> dict[str, Any]:
        """The fields a feedback event about this prediction records (edge.feedback.ROUTE_FIELDS)."""
        return {f: getattr(self, f) for f in ROUTE_FIELDS}


def check_text(text: Any, field: str = "text") -> None:
    """ValueError naming ``field`` unless ``text`` is a non-empty string within the size limit."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"field '{field}' must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"field '{field}' is {len(text)} characters, above the limit of {MAX_TEXT_CHARS}")


def read_policy(folder: str | Path) -> CollabPolicy | None:
    """The ``collab`` block of a (verified) bundle's manifest, or None when it has none."""
    block = read_manifest(folder).get("collab")
    if block is None:
        return None
    try:
        return CollabPolicy.from_dict(block)
    except (ValueError, TypeError) as exc:
        raise BundleVerificationError(f"bundle {Path(folder).name}: manifest's collab block is invalid: {exc}") from None


class DeviceRouting:
    """Predict (one or a batch), route each answer, remember it for feedback, send deferrals home."""

    def _init_routing(self, cloud_url: str | None, cloud_timeout_s: float, cloud_token: str | None) -> None:
        self.cloud = CloudClient(cloud_url, cloud_timeout_s, device_id=self.device_id, token=cloud_token) \
            if cloud_url else None
        self._policies: dict[str, CollabPolicy | None] = {}

    def _policy_of(self, folder: Path) -> CollabPolicy | None:
        """The policy of the bundle in ``folder``, read once (versions are immutable)."""
        key = str(Path(folder).resolve())
        if key not in self._policies:
            self._policies[key] = read_policy(folder)
        return self._policies[key]

    def routing_status(self) -> dict[str, Any]:
        """The cloud endpoint (or None) and the running bundle's policy (or None)."""
        policy = None
        with self._lock:
            if self._predictor is not None:
                policy = self._policy_of(self._predictor.folder)
        return {"cloud": None if self.cloud is None else {"url": self.cloud.url, "timeout_s": self.cloud.timeout_s},
                "collab": None if policy is None else policy.to_dict()}

    def predict(self, text: str) -> Prediction:
        """Redact ``text``, classify it with the running model and the device's patch, and route it."""
        check_text(text)
        return self._predict([text])[0]

    def predict_many(self, texts: list[str]) -> list[Prediction]:
        """:meth:`predict` for up to :data:`MAX_BATCH` texts in one model call (and one cloud request)."""
        if not isinstance(texts, list) or not texts:
            raise ValueError("field 'texts' must be a non-empty list of strings")
        if len(texts) > MAX_BATCH:
            raise ValueError(f"field 'texts' holds {len(texts)} texts; at most {MAX_BATCH} per call")
        for i, text in enumerate(texts):
            check_text(text, f"texts[{i}]")
        return self._predict(texts)

    def _predict(self, texts: list[str]) -> list[Prediction]:
        started = time.perf_counter()
        redacted = [redact(t)[0] for t in texts]
        predictor, version, patch = self._active(with_patch=True)
        policy = self._policy_of(predictor.folder)
        logits, feats, _ = base_outputs(predictor, redacted)
        served = logits if patch is None else patch.apply(logits, feats)
        labels = predictor.labels
        if policy is None:
            probs = softmax(served)
            latency = round((time.perf_counter() - started) * 1e3, 3)
            answers = [Answer(labels[i], round(float(p[i]), 6), "device", False, labels[i], round(float(p[i]), 6),
                              latency) for p, i in zip(probs, probs.argmax(axis=1))]
        else:
            answers = answer_many(redacted, served, labels, policy, self.cloud, started, version)
        out = []
        for text, a, base in zip(redacted, answers, logits.argmax(axis=1)):
            a_dict = a.to_dict()
            p = Prediction(model_version=version, message_id=message_id(text), patched=patch is not None,
                           base_label=labels[base], **a_dict)
            self._remember(p.message_id, text, p.route_fields())
            if a.unsure and a.route != "rejected":
                self._send_home(text, version, a_dict)
            out.append(p)
        return out

    def _remember(self, mid: str, text: str, route: dict[str, Any]) -> None:
        with self._lock:
            self._recent[mid] = (text, route)
            self._recent.move_to_end(mid)
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def _recalled(self, mid: str) -> tuple[str | None, dict[str, Any] | None]:
        """(redacted text, route fields) of a recent prediction, or (None, None)."""
        with self._lock:
            return self._recent.get(mid, (None, None))

    def _send_home(self, text: str, version: str, answer: dict[str, Any]) -> None:
        """Spool a deferral record beside the feedback; a full disk must not fail the answer."""
        try:
            append_event(self.home, make_deferral(device_id=self.device_id, model_version=version, text=text,
                                                  answer=answer))
        except (OSError, ValueError) as exc:
            log.error("device %s could not record a deferred message: %s", self.device_id, exc)

