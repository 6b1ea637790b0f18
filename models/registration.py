"""Register: the night's candidate becomes a model version, tagged with its gate and lineage.

Every candidate is registered, passed or not, so a person can review a failed one and promote it
by hand (:func:`models.rollout.promote` with an override).
"""

from __future__ import annotations

from pathlib import Path

from models import registry
from models.card import render_card
from models.evaluate import EvalResult
from models.gate import GateDecision
from models.stores import StudentStore


def register_candidate(store: StudentStore, run_id: str, candidate_dir: Path, decision: GateDecision,
                       results: dict[str, EvalResult], meta: dict) -> tuple[str, str]:
    """Log the candidate's folders to ``run_id``, register them, tag and alias them ``candidate``.

    ``meta`` (the lineage) is tagged ``meta.<key>``; the bundle is later signed with it. Returns
    (version, its model card in Markdown), the card also logged to the run and named by a tag.
    """
    c = registry.client(store.tracking_uri)
    c.log_artifacts(run_id, str(candidate_dir / "student"), "model/student")
    c.log_artifacts(run_id, str(candidate_dir / "edge"), "model/edge")
    version = registry.register_version(
        store.tracking_uri, store.name, run_id, "model",
        tags={**decision.tags(), **{f"meta.{k}": v for k, v in meta.items()}},
        description=f"gate {'pass' if decision.passed else 'fail'}: {decision.reason()}")
    c.set_registered_model_alias(store.name, registry.CANDIDATE, version)
    card = render_card(store.name, version, decision, results, meta, store.history())
    c.log_text(run_id, card, f"model_card_v{version}.md")
    c.set_model_version_tag(store.name, version, "model_card", f"model_card_v{version}.md")
    return version, card
