"""Register: the night's candidate (and the bootstrap's teacher) become model versions.

Every candidate is registered, passed or not, so a person can review a failed one and promote it
by hand (:func:`models.rollout.promote` with an override). A version is an MLflow model
(:mod:`models.mlflow_models`) that ``mlflow.pyfunc.load_model`` answers with; its description
is its model card; its tags are few, short and rounded, for the registry's list and search.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from models import registry
from models.card import fit_description, render_card
from models.evaluate import EvalResult
from models.gate import GateDecision
from models.stores import StudentStore

#: Lineage keys tagged ``meta.<key>`` (models.rollout reads metrics, teacher_version, split_hash,
#: backend and collab back into the bundle); the rest of the lineage is in the card.
META_TAGS = ("night", "dataset", "teacher_version", "split_hash", "backend", "metrics", "collab")
#: The tag holding the version's collaboration policy (JSON of :meth:`edge.collab.CollabPolicy.to_dict`).
COLLAB_TAG = "meta.collab"
CONFUSION = "evaluation/confusion_candidate.png"  # where models.tracking.log_eval_artifacts puts it


def collab_block(tags: dict[str, str]) -> dict | None:
    """The ``collab`` block a version's bundle signs, from its :data:`COLLAB_TAG` (None: the version
    has no policy, e.g. it predates the collaboration step). ValueError names a bad tag."""
    raw = tags.get(COLLAB_TAG)
    if not raw:
        return None
    from edge.collab import CollabPolicy

    try:
        return CollabPolicy.from_dict(json.loads(raw)).to_dict()
    except ValueError as exc:
        raise ValueError(f"model-version tag {COLLAB_TAG} is not a collaboration policy: {exc}") from None


def version_tags(decision: GateDecision, candidate: EvalResult | None, meta: dict,
                 champion: str | None) -> dict[str, str]:
    """The version's tags: the decision, what failed, four rounded metrics, the champion the gate
    compared with, the ``meta.*`` lineage the bundle needs. Every check's detail is in the card."""
    reason = decision.reason()
    tags = {"gate.decision": "pass" if decision.passed else "fail",
            "gate.failed": ", ".join(c.name for c in decision.failed) or "none",
            "gate.reason": reason if len(reason) <= 250 else reason[:249] + "…",
            "champion_at_gate": f"v{champion}" if champion else "none"}
    if candidate is not None:
        tags.update({"accuracy": f"{candidate.accuracy:.4f}", "macro_f1": f"{candidate.macro_f1:.4f}",
                     "size_mb": f"{candidate.size_mb or 0:.2f}", "p95_ms": f"{candidate.p95_ms or 0:.2f}"})
    tags.update({f"meta.{k}": json.dumps(meta[k], sort_keys=True) if k == "collab" else str(meta[k])
                 for k in META_TAGS if k in meta})
    return tags


def _run_links(c, run_id: str, path: str) -> str:
    """A run artifact as a ``runs:/`` URI (for ``mlflow.artifacts``) and a link into the MLflow UI."""
    exp = c.get_run(run_id).info.experiment_id
    return f"`runs:/{run_id}/{path}` ([open](#/experiments/{exp}/runs/{run_id}/artifacts/{path}))"


def register_candidate(store: StudentStore, run_id: str, candidate_dir: Path, decision: GateDecision,
                       results: dict[str, EvalResult], meta: dict,
                       eval_run_id: str | None = None, collab_lines: list[str] | None = None) -> tuple[str, str]:
    """Log the candidate to ``run_id`` as an MLflow model, register it, alias it ``candidate``.

    ``meta`` is the lineage (the bundle is later signed with it; ``meta["collab"]``, the policy,
    becomes the manifest's ``collab`` block). ``eval_run_id``: the run whose
    ``evaluation/confusion_candidate.png`` the card links; without it the PNG is drawn into
    ``run_id``. ``collab_lines``: the card's collaboration section. The card goes to the run
    (``model_card_v<N>.md``) and, cut to the registry's limit, into the version's description.
    Returns (version, the whole card in Markdown).
    """
    c = registry.client(store.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        from models.mlflow_models import save_student

        c.log_artifacts(run_id, str(save_student(Path(candidate_dir), Path(tmp) / "model")), "model")
        if eval_run_id is None and "candidate" in results:
            from models.evaluate import confusion_png

            confusion_png(results["candidate"], Path(tmp) / "confusion_candidate.png", "candidate")
            c.log_artifact(run_id, str(Path(tmp) / "confusion_candidate.png"), "evaluation")
    champion = store.alias(registry.CHAMPION)
    version = registry.register_version(
        store.tracking_uri, store.name, run_id, "model",
        tags=version_tags(decision, results.get("candidate"), meta, champion))
    card_file = f"model_card_v{version}.md"
    links = {"full card": _run_links(c, run_id, card_file),
             "load": f"`mlflow.pyfunc.load_model(\"models:/{store.name}/{version}\").predict([\"where is my order\"])`"}
    if "candidate" in results:
        links["confusion matrix"] = _run_links(c, eval_run_id or run_id, CONFUSION)
    if champion:
        links["compared with"] = f"champion v{champion}"
    card = render_card(store.name, version, decision, results, meta, store.history(), links, collab_lines)
    c.log_text(run_id, card, card_file)
    c.update_model_version(store.name, version, description=fit_description(card, f"`runs:/{run_id}/{card_file}`"))
    c.set_registered_model_alias(store.name, registry.CANDIDATE, version)
    return version, card


def register_teacher(tracking_uri: str, name: str, run_id: str, trained: dict, alias: str | None = None) -> str:
    """Register ``run_id``'s ``model`` (an MLflow teacher model) as a version of ``name``, with a
    short card as its description; alias it when ``alias``. Returns the version.

    ``trained``: ``accuracy``, ``macro_f1``, ``n_train``, ``split_hash`` (and optionally
    ``base_model``) of the bootstrap.
    """
    tags = {"golden.accuracy": f"{trained['accuracy']:.4f}", "golden.macro_f1": f"{trained['macro_f1']:.4f}",
            "split_hash": str(trained["split_hash"])}
    version = registry.register_version(tracking_uri, name, run_id, "model", tags=tags)
    c = registry.client(tracking_uri)
    lines = [f"# {name} v{version}", "", "The fine-tuned teacher that labels the lake and that students distil.", "",
             "| golden accuracy | golden macro-F1 | trained on | split |", "|---|---|---|---|",
             f"| {trained['accuracy']:.4f} | {trained['macro_f1']:.4f} | {trained.get('n_train', 'n/a')} seed rows "
             f"| `{trained['split_hash']}` |", "",
             f"- base model: `{trained.get('base_model', 'n/a')}`",
             f"- run: {_run_links(c, run_id, 'model')}",
             f"- load: `mlflow.pyfunc.load_model(\"models:/{name}/{version}\").predict([\"where is my order\"])`"]
    c.update_model_version(name, version, description="\n".join(lines) + "\n")
    if alias:
        c.set_registered_model_alias(name, alias, version)
    return version
