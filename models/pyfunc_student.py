"""MLflow models-from-code file for the edge student: ``predict(["text", ...])`` -> intent labels.

MLflow executes this file when it loads a registered student (``mlflow.pyfunc.load_model``); the
project never imports it. The model's ``edge`` artifact is the ONNX folder a device runs
(``model.onnx``, ``tokenizer.json``, ``labels.json``, ``bundle.json``) and the ``edge`` package
travels with the model as code, so a reviewer needs only onnxruntime, tokenizers and numpy.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class EdgeStudent(PythonModel):
    """The int8 (or fp32) ONNX student answering with the device's own predictor."""

    def load_context(self, context) -> None:
        from edge.predictor import OnnxPredictor

        self.predictor = OnnxPredictor(context.artifacts["edge"])

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        """The most likely intent label of each text."""
        return [label for label, _ in self.predictor.predict(list(model_input))]


mlflow.models.set_model(EdgeStudent())  # MLflow's models-from-code hook: this file is the model
