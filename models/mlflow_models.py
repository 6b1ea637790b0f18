"""The registered student and teacher as MLflow models a reviewer loads with ``mlflow.pyfunc``.

Each is a models-from-code pyfunc (:mod:`models.pyfunc_student`, :mod:`models.pyfunc_teacher`:
the code is the model, nothing is pickled) with a signature (a list of texts in, one label per
text out), an input example and pinned pip requirements. The files the project itself downloads
are the pyfunc's artifacts; the MLmodel's ``edgeloop.files`` metadata says where
(:func:`models.registry.model_files`).
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import version as installed
from pathlib import Path

from models.registry import FILES_KEY

STUDENT_CODE = Path(__file__).with_name("pyfunc_student.py")
TEACHER_CODE = Path(__file__).with_name("pyfunc_teacher.py")
EDGE_PACKAGE = Path(__file__).resolve().parent.parent / "edge"
INPUT_EXAMPLE = ["where is my order", "I want my money back"]


def _pins(*dists: str) -> list[str]:
    # A local build tag (torch's "+cpu") is no release on the package index: pin the release.
    return [f"{d}=={installed(d).split('+')[0]}" for d in dists]


def _signature(example: list[str], labels: list[str]):
    from mlflow.models import infer_signature

    return infer_signature(list(example), [labels[0]] * len(example))


def save_student(candidate_dir: Path, dst: Path, example: list[str] = INPUT_EXAMPLE) -> Path:
    """Write the candidate (``candidate_dir/{edge,student}``) as an MLflow model folder at ``dst``.

    ``predict`` runs the ``edge`` ONNX folder through :class:`edge.predictor.OnnxPredictor`,
    whose module travels with the model, so loading it needs onnxruntime, tokenizers and numpy
    only; ``student`` (the safetensors a warm start reads) is an artifact it does not load.
    MLflow runs ``predict`` on ``example`` while saving: a model that cannot answer is not saved.
    """
    import json

    import mlflow

    edge, student = Path(candidate_dir) / "edge", Path(candidate_dir) / "student"
    for folder in (edge, student):
        if not folder.is_dir():
            raise FileNotFoundError(f"candidate folder {candidate_dir} has no '{folder.name}/' to register")
    labels = json.loads((edge / "labels.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "edge"  # only what predict imports: the device package's predictor
        code.mkdir()
        for name in ("__init__.py", "predictor.py"):
            shutil.copyfile(EDGE_PACKAGE / name, code / name)
        mlflow.pyfunc.save_model(str(dst), python_model=str(STUDENT_CODE), code_paths=[str(code)],
                                 artifacts={"edge": str(edge), "student": str(student)},
                                 signature=_signature(example, labels), input_example=list(example),
                                 pip_requirements=_pins("onnxruntime", "tokenizers", "numpy"),
                                 metadata={FILES_KEY: "artifacts"})
    return Path(dst)


def save_teacher(model_dir: Path, dst: Path, max_length: int, example: list[str] = INPUT_EXAMPLE) -> Path:
    """Write the teacher's safetensors folder ``model_dir`` as an MLflow model folder at ``dst``.

    ``predict`` loads it with transformers (``max_length`` tokens per text); the folder is the
    pyfunc's ``teacher`` artifact.
    """
    import json

    import mlflow

    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"teacher folder {model_dir} has no config.json")
    id2label = json.loads(config.read_text()).get("id2label") or {"0": "label"}
    files = f"artifacts/{Path(model_dir).name}"  # where MLflow puts a folder artifact: checked below
    mlflow.pyfunc.save_model(str(dst), python_model=str(TEACHER_CODE), artifacts={"teacher": str(model_dir)},
                             model_config={"max_length": int(max_length)},
                             signature=_signature(example, [id2label[min(id2label)]]), input_example=list(example),
                             pip_requirements=_pins("torch", "transformers", "tokenizers", "safetensors", "numpy"),
                             metadata={FILES_KEY: files})
    if not (Path(dst) / files / "config.json").is_file():
        raise RuntimeError(f"MLflow did not store the teacher's files at {files} in {dst}")
    return Path(dst)
