"""The teacher interface: the OpenAI-compatible client against a local server speaking that wire format."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from models.teacher import EndpointTeacher, base_model_path
from edgeloop.config import TeacherConfig

LABELS = ["track_order", "get_refund", "cancel_order"]


class _ChatCompletions(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions like an LLM endpoint: a JSON object of label probabilities."""

    answer: str = ""
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        content = type(self).answer
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    _ChatCompletions.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _ChatCompletions
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_teacher_renormalises_and_fills_missing_labels(endpoint, monkeypatch):
    url, handler = endpoint
    monkeypatch.setenv("EDGELOOP_TEACHER_API_KEY", "sk-test")
    handler.answer = json.dumps({"track_order": 3, "get_refund": 1})
    probs = EndpointTeacher(url, "big-model", LABELS, timeout_s=5).predict_proba(["where is my parcel"])
    np.testing.assert_allclose(probs, [[0.75, 0.25, 0.0]])
    path, auth, body = handler.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "big-model"
    assert "where is my parcel" in body["messages"][0]["content"]


@pytest.mark.parametrize(("answer", "message"), [("not json", "non-JSON"), ('{"other": 1}', "no probability")])
def test_endpoint_teacher_bad_answers_are_clear_errors(endpoint, answer, message):
    url, handler = endpoint
    handler.answer = answer
    with pytest.raises(ValueError, match=message):
        EndpointTeacher(url, "m", LABELS, timeout_s=5).predict_proba(["x"])


def test_base_model_is_the_packaged_minilm():
    path = base_model_path(TeacherConfig())
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
