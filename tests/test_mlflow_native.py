"""Registered versions a reviewer can use from MLflow alone: pyfunc models, the card as the
description, few readable tags, and the promotion history kept in the registry."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop.config import TeacherConfig, load_settings
from models import registry, rollout
from models.evaluate import EvalResult
from models.gate import Check, GateDecision
from models.registration import register_candidate, register_teacher
from rollout_fixtures import NAME, register, settings, store  # noqa: F401
from edge_fixtures import LABELS, _tokenizer, edge_model_dirs, signing_keys  # noqa: F401

TEXTS = ["where is my order", "i want a refund", "please cancel the order now"]
META = {"night": "2026-11-03", "night_run_id": "abc123", "teacher_version": "1", "dataset": "toy",
        "split_hash": "deadbeef", "backend": "onnx-int8",
        "metrics": {"accuracy": 0.9123, "macro_f1": 0.9012, "size_mb": 0.1, "p95_ms": 1.234}}


def _hf_dir(out: Path) -> Path:
    """A tiny real transformers classifier (safetensors) with its tokenizer: a student's or teacher's files."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer(), unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    BertForSequenceClassification(config).eval().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def candidate_dir(tmp_path_factory, edge_model_dirs) -> Path:  # noqa: F811
    """What a night leaves: ``student/`` (safetensors) and ``edge/`` (the ONNX folder a device runs)."""
    root = tmp_path_factory.mktemp("candidate")
    shutil.copytree(edge_model_dirs["v1"], root / "edge")
    _hf_dir(root / "student")
    return root


@pytest.fixture()
def fluent(settings):  # noqa: F811
    """MLflow's process-wide URIs point at the test registry (what a reviewer's session does)."""
    import mlflow

    from models.tracking import activate

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    activate(settings.tracking_uri())
    yield settings.tracking_uri()
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def _result(f1: dict[str, float], accuracy: float = 0.9123456789) -> EvalResult:
    n = len(f1)
    return EvalResult(n=30, accuracy=accuracy, macro_f1=sum(f1.values()) / n, per_intent_f1=f1,
                      confusion=[[10 if i == j else 0 for j in range(n)] for i in range(n)], labels=list(f1),
                      agreement_with_teacher=0.95, size_mb=0.123456, p50_ms=0.98765, p95_ms=1.23456789)


def _decision(passed: bool = True) -> GateDecision:
    return GateDecision(passed, [
        Check("accuracy_floor", 0.9123456789 if passed else 0.41234567, 0.85, ">=", passed),
        Check("p95_latency_ms", 1.23456789, 50.0, "<=", True, "measured on the shipped bundle, 40 runs"),
        Check("behaviour_invariance", 0.95, 0.9, ">=", True, "names, numbers, amounts")])


def _run(settings) -> str:  # noqa: F811
    uri = settings.tracking_uri()
    exp = registry.ensure_experiment(uri, "edgeloop", settings.artifact_root())
    return registry.client(uri).create_run(exp).info.run_id


def test_champion_loads_with_mlflow_pyfunc_and_answers_labels(settings, store, candidate_dir, fluent):  # noqa: F811
    import mlflow

    from edge.predictor import OnnxPredictor
    from models.stores import champion_folder

    results = {"candidate": _result(dict.fromkeys(LABELS, 0.9))}
    version, _ = register_candidate(store, _run(settings), candidate_dir, _decision(), results, META)
    out = rollout.promote(store, version, "reviewed the card", "alice")  # bundle rebuilt from the registry

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    expected = [label for label, _ in OnnxPredictor(candidate_dir / "edge").predict(TEXTS)]
    assert model.predict(TEXTS) == expected and set(expected) <= set(LABELS)
    assert model.predict(["where is my order"]) == expected[:1]
    assert model.metadata.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert model.metadata.signature.outputs.to_dict() == [{"type": "string", "required": True}]
    assert model.input_example == ["where is my order", "I want my money back"]
    assert [label for label, _ in OnnxPredictor(out["bundle"]).predict(TEXTS)] == expected

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}"))
    pyfunc = json.dumps(mlflow.models.Model.load(str(local)).flavors["python_function"])
    assert "mlflow.pyfunc.loaders.code_model" in pyfunc and "python_model.pkl" not in pyfunc
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".bin", ".pt", ".pth")]
    assert "onnxruntime==" in (local / "requirements.txt").read_text()
    assert "torch" not in (local / "requirements.txt").read_text()  # a reviewer needs no torch

    _, folder = champion_folder(store)  # what a warm start and the night's evaluation read
    assert (folder / "edge" / "model.onnx").is_file() and (folder / "student" / "model.safetensors").is_file()


def test_the_model_needs_only_its_own_folder(settings, store, candidate_dir, fluent, tmp_path):  # noqa: F811
    """A reviewer without this project installed: the predictor's code travels with the model."""
    version, _ = register_candidate(store, _run(settings), candidate_dir, _decision(),
                                    {"candidate": _result(dict.fromkeys(LABELS, 0.9))}, META)
    script = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path[:] = [p for p in sys.path if p not in ("", {str(Path.cwd())!r}, {str(Path(__file__).parents[1])!r})]
try:
    import edge
    raise SystemExit("edge is importable without the model: the test proves nothing")
except ImportError:
    pass
import json, mlflow
mlflow.set_tracking_uri({fluent!r}); mlflow.set_registry_uri({fluent!r})
labels = mlflow.pyfunc.load_model("models:/{NAME}/{version}").predict({TEXTS!r})
print(json.dumps([labels, sys.modules["edge.predictor"].__file__]))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    labels, module = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(labels) <= set(LABELS) and len(labels) == len(TEXTS)
    assert "/code/edge/predictor.py" in module  # loaded from the model's own code folder


def test_version_page_is_the_card_with_few_rounded_tags(settings, store, candidate_dir, fluent):  # noqa: F811
    import mlflow

    from models import tracking

    uri = settings.tracking_uri()
    champion_f1 = {"track_order": 0.9, "get_refund": 0.8, "cancel_order": 0.7}
    candidate_f1 = {"track_order": 0.9041, "get_refund": 0.6, "cancel_order": 0.75}  # one within 0.01
    results = {"candidate": _result(candidate_f1), "champion": _result(champion_f1, 0.95)}
    first = register(settings, candidate_dir / "edge")
    rollout.promote(store, first, "first champion", "alice")
    eval_run = _run(settings)
    with mlflow.start_run(run_id=eval_run):
        tracking.log_eval_artifacts(results)  # the night's evaluate step
    version, card = register_candidate(store, _run(settings), candidate_dir, _decision(passed=False), results,
                                       META, eval_run_id=eval_run)
    mv = registry.client(uri).get_model_version(NAME, version)

    assert mv.description == card and len(card) <= 5000
    assert "**Gate: FAIL**" in card and "| accuracy_floor | 0.4123 | >= 0.8500 | **FAIL** |" in card
    assert "| p95_latency_ms | 1.2346 | <= 50.0000 | pass | measured on the shipped bundle, 40 runs |" in card
    per_intent = card.split("## Per-intent F1 vs champion")[1].split("##")[0]
    assert "2 of 3 intents changed" in per_intent
    assert per_intent.index("| get_refund | 0.800 | 0.600 | -0.200 |") < per_intent.index("| cancel_order | 0.700 |")
    assert "track_order" not in per_intent  # +0.004: unchanged
    assert f"- compared with: champion v{first}" in card
    link = re.search(r"confusion matrix: `(runs:/[^`]+)`", card).group(1)
    assert link == f"runs:/{eval_run}/evaluation/confusion_candidate.png"
    assert Path(mlflow.artifacts.download_artifacts(link)).read_bytes()[:4] == b"\x89PNG"
    lineage = card.split("## Lineage")[1].split("##")[0]
    assert "- night_run_id: `abc123`" in lineage and "- split_hash: `deadbeef`" in lineage

    tags = mv.tags
    assert len(tags) <= 14 and all(len(v) <= 250 for v in tags.values())  # promotion adds rollout.* and promotion.<n>
    assert (tags["gate.decision"], tags["gate.failed"]) == ("fail", "accuracy_floor")
    assert (tags["accuracy"], tags["size_mb"], tags["p95_ms"]) == ("0.9123", "0.12", "1.23")
    assert tags["champion_at_gate"] == f"v{first}" and tags["meta.teacher_version"] == "1"
    assert not [k for k in tags if k.startswith("gate.") and k not in ("gate.decision", "gate.failed", "gate.reason")]
    for value in tags.values():  # rounded: no long float reprs
        assert not re.search(r"\d\.\d{5,}", value), value
    with pytest.raises(rollout.PromotionRefused, match="accuracy_floor 0.4123 < 0.85"):
        rollout.promote(store, version, "looks fine", "bob")  # the refusal still quotes the gate


def test_a_card_over_the_registry_limit_is_cut_with_a_link_to_the_whole_card(settings, store, candidate_dir,  # noqa: F811
                                                                              fluent):
    import mlflow

    intents = [f"intent_{i:03d} | with a pipe in its name" for i in range(70)]
    results = {"candidate": _result({k: 0.5 for k in intents}), "champion": _result({k: 0.9 for k in intents})}
    run_id = _run(settings)
    version, card = register_candidate(store, run_id, candidate_dir, _decision(passed=False), results, META)
    description = registry.client(settings.tracking_uri()).get_model_version(NAME, version).description

    assert len(card) > 5000 and len(description) <= 5000
    assert description.rstrip().endswith(f"the whole card is `runs:/{run_id}/model_card_v{version}.md`.*")
    kept = description.split("\n\n---\n")[0]
    assert card.startswith(kept) and "## Gate checks" in kept and "## Lineage" in kept
    whole = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model_card_v{version}.md")).read_text()
    assert whole == card and "| intent_069 \\| with a pipe in its name | 0.900 | 0.500 | -0.400 |" in whole


def test_a_second_machine_reads_the_promotion_history_from_the_registry(settings, store, edge_model_dirs,  # noqa: F811
                                                                        tmp_path):
    from models.stores import StudentStore

    uri = settings.tracking_uri()
    v1, v2 = register(settings, edge_model_dirs["v1"]), register(settings, edge_model_dirs["v2"])
    rollout.promote(store, v1, "first champion", "alice")
    rollout.promote(store, v2, "better on refunds", "bob")
    rollout.rollback(store, "complaints about refunds", "carol")
    here = registry.read_history(settings.home_path(), NAME)  # the local file
    assert [h["action"] for h in here] == ["promote", "stable", "promote", "rollback"]  # v1 was the first release

    other_home = tmp_path / "other-home"  # a second machine: empty home, the same tracking server
    other = load_settings(overrides={"home": str(other_home), "mlflow": {"tracking_uri": uri}}, environ={})
    assert other.tracking_uri() == uri and not registry.history_path(other_home, NAME).exists()
    assert registry.read_history(other_home, NAME, uri) == here
    assert StudentStore.from_settings(other).history() == here
    assert registry.read_history(other_home, NAME) == []  # without the URI: only the (empty) local file

    tags = {v: registry.version_tags(uri, NAME, v) for v in (v1, v2)}
    assert json.loads(tags[v1]["promotion.0001"])["by"] == "alice"
    assert json.loads(tags[v1]["promotion.0002"])["action"] == "stable"
    assert json.loads(tags[v2]["promotion.0003"])["why"] == "better on refunds"
    assert json.loads(tags[v1]["promotion.0004"])["action"] == "rollback"
    description = registry.client(uri).get_registered_model(NAME).description
    assert "**rollback** v2 → v1 by carol: complaints about refunds" in description

    # An entry written without the URI stays local: this machine merges it in time order.
    registry.append_history(settings.home_path(), NAME, action="stable", from_version=None, to_version=v1,
                            why="healthy", by="nightly")
    assert [h["action"] for h in store.history()] == ["promote", "stable", "promote", "rollback", "stable"]
    assert len(registry.read_history(other_home, NAME, uri)) == 4


def test_the_teacher_loads_with_mlflow_pyfunc(settings, fluent, tmp_path):  # noqa: F811
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.mlflow_models import save_teacher
    from models.teacher_store import resolve_teacher

    uri = settings.tracking_uri()
    folder = _hf_dir(tmp_path / "teacher" / "model")
    run_id = _run(settings)
    registry.client(uri).log_artifacts(run_id, str(save_teacher(folder, tmp_path / "mlflow-model", 24)), "model")
    trained = {"accuracy": 0.87654321, "macro_f1": 0.8555555, "n_train": 120, "split_hash": "cafe"}
    version = register_teacher(uri, "teacher", run_id, trained, alias="production")

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        ids = model(**tok(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")).logits.argmax(-1)
    expected = [LABELS[i] for i in ids.tolist()]
    assert mlflow.pyfunc.load_model("models:/teacher@production").predict(TEXTS) == expected

    mv = registry.client(uri).get_model_version("teacher", version)
    assert mv.tags["golden.accuracy"] == "0.8765" and "| 0.8765 | 0.8556 | 120 seed rows |" in mv.description
    ref = resolve_teacher(uri, TeacherConfig(), settings.home_path() / "cache")  # what every night loads
    assert ref.version == version and (Path(ref.folder) / "model.safetensors").is_file()
    assert resolve_teacher(uri, TeacherConfig(), settings.home_path() / "cache") == ref  # cached, not re-downloaded
