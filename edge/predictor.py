"""Answer predictions from an edge bundle folder with ONNX Runtime and `tokenizers` (no torch).

A bundle folder holds ``model.onnx``, ``tokenizer.json``, ``labels.json`` and ``bundle.json``
(``max_length`` and the quantization backend). The same class serves the device and the
night's evaluation, so latency and size are measured on what ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
BUNDLE_CONFIG_FILE = "bundle.json"


class OnnxPredictor:
    """Intent classifier over one bundle folder."""

    def __init__(self, folder: str | Path, threads: int = 1):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        meta = json.loads((self.folder / BUNDLE_CONFIG_FILE).read_text())
        self.max_length = int(meta["max_length"])
        self.labels: list[str] = json.loads((self.folder / LABELS_FILE).read_text())
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        # Padding is ours to do (with an attention mask); a tokenizer.json saved with padding on
        # would otherwise count pad tokens as words in a batch.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_length)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), opts,
                                            providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _feeds(self, encs: list) -> dict[str, np.ndarray]:
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(encs), width), dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        for row, e in enumerate(encs):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        return {k: v for k, v in feeds.items() if k in self._inputs}

    def _encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self._feeds(self.tokenizer.encode_batch(list(texts)))

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, one row per text, columns in ``self.labels`` order.

        Texts are batched by token length (little padding to compute) and returned in input order.
        """
        if not len(texts):
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encs = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        out = np.empty((len(encs), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = self.session.run(["logits"], self._feeds([encs[i] for i in idx]))[0]
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            out[idx] = p / p.sum(axis=1, keepdims=True)
        return out

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(label, confidence) for each text."""
        probs = self.predict_proba(texts)
        return [(self.labels[i], float(p[i])) for p, i in zip(probs, probs.argmax(axis=1))]
