"""MLflow models-from-code file for the teacher: ``predict(["text", ...])`` -> intent labels.

MLflow executes this file when it loads a registered teacher (``mlflow.pyfunc.load_model``); the
project never imports it. The model's ``teacher`` artifact is the fine-tuned transformers folder
(safetensors, config with the labels, tokenizer); ``max_length`` comes from the model config.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class Teacher(PythonModel):
    """The fine-tuned sequence classifier, on CPU, in eval mode."""

    def load_context(self, context) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = context.artifacts["teacher"]
        self.max_length = int((context.model_config or {}).get("max_length", 128))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        """The most likely intent label of each text (batches of 64)."""
        import torch

        texts, out = list(model_input), []
        for start in range(0, len(texts), 64):
            enc = self.tokenizer(texts[start:start + 64], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                ids = self.model(**enc).logits.argmax(-1).tolist()
            out += [self.model.config.id2label[i] for i in ids]
        return out


mlflow.models.set_model(Teacher())  # MLflow's models-from-code hook: this file is the model
