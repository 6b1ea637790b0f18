"""Fine-tune the teacher on the seed's gold labels and register it as ``teacher@production``."""

from __future__ import annotations

from prefect import flow

from edgeloop.config import settings_from_json
from tasks import teacher as t
from tasks.common import load_data


@flow(name="teacher-bootstrap", log_prints=True)
def teacher_bootstrap(config: dict | None = None, promote: bool = True) -> dict:
    """Fine-tune the base MiniLM on seed gold labels, log it to MLflow and register it.

    Args:
        config: settings overrides, e.g. ``{"teacher": {"epochs": 2}}``.
        promote: point the ``production`` alias at the new version.
    """
    settings = settings_from_json(config)
    trained = t.fine_tune(settings, load_data(settings))
    return t.register_teacher(settings, trained, promote)
