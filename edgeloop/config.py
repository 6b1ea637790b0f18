"""One typed configuration for edgeloop.

Loaded from a YAML file (``EDGELOOP_CONFIG``, default ``edgeloop.yaml`` in the working directory
when it exists) and then overridden from the environment: ``EDGELOOP__SECTION__FIELD=value``
(double underscores separate the levels, e.g. ``EDGELOOP__STUDENT__EPOCHS=2``), ``--set
SECTION.FIELD=VALUE`` on the command line, and values passed in code. ``EDGELOOP_HOME`` is a
shortcut for ``EDGELOOP__HOME``. The sources are pydantic-settings'
(:mod:`edgeloop.settings_sources`). Nothing here touches the disk at import time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict,
                               SettingsError)

from edgeloop.settings_sources import ENV_PREFIX, ConfigError, file_and_env_sources

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "load_settings", "settings_from_json"]

# The sections live in edgeloop.sections; they are importable from here too.
from edgeloop.sections import (REPO_ROOT, ArrivalsConfig, BundleConfig, CollabConfig, ContractsConfig,  # noqa: F401
                               DatasetConfig, EvalConfig, FederatedConfig, GateConfig, MlflowConfig,
                               SqlArrivalsConfig, StudentConfig, TeacherConfig, TufConfig)


class Settings(BaseSettings):
    """Everything edgeloop reads. Build with :func:`load_settings` (``Settings()`` reads the same
    sources, from ``os.environ``, but raises pydantic's ValidationError)."""

    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_builtin: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, *file_and_env_sources(settings_cls))

    home: str = Field("var", description="Root of the lake, bundles and local stores.")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    contracts: ContractsConfig = Field(default_factory=ContractsConfig)
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    arrivals: ArrivalsConfig = Field(default_factory=ArrivalsConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    collab: CollabConfig = Field(default_factory=CollabConfig)
    schedule_timezone: str = Field("UTC", description="Timezone of the nightly schedule: a scheduled run's "
                                   "night is its scheduled date there (EDGELOOP_TZ sets it too).")
    lake_url: str = Field("", description="Root of the lake: a folder or an fsspec URL (s3://bucket/lake); "
                          "empty = <home>/lake.")
    torch_threads: int = Field(0, ge=0, description="0 = let torch decide.")
    feedback_dir: str = Field("", description="Spool folder where devices (or an upload endpoint) drop "
                              "feedback *.jsonl files; empty = <home>/feedback/inbox.")
    runner: Literal["thread", "dask"] = Field(
        "thread", description="Task runner of the relabel fan-out: thread (in-process) or dask.")
    dask_address: str = Field("", description="Scheduler of an existing Dask cluster (tcp://host:8786); "
                              "empty = a temporary LocalCluster of `dask_workers` processes.")
    dask_workers: int = Field(2, gt=0, description="Workers of the temporary LocalCluster.")

    @field_validator("home")
    @classmethod
    def _home_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("home must not be empty")
        return v

    # ---- derived locations -------------------------------------------------
    def home_path(self) -> Path:
        p = Path(self.home).expanduser()
        return (p if p.is_absolute() else Path.cwd() / p).resolve()

    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.home_path() / 'mlflow.db'}"

    def artifact_root(self) -> str:
        return self.mlflow.artifact_root or (self.home_path() / "mlartifacts").as_uri()

    def signing_key_path(self) -> Path:
        return Path(self.bundle.signing_key) if self.bundle.signing_key else self.home_path() / "keys" / "edge_signing.pem"

    def public_key_path(self) -> Path:
        return Path(self.bundle.public_key) if self.bundle.public_key else self.home_path() / "keys" / "edge_signing.pub"

    def lake_root(self) -> str:
        return self.lake_url or str(self.home_path() / "lake")

    def bundles_root(self) -> Path:
        return self.home_path() / "bundles"

    def feedback_inbox(self) -> Path:
        """Where the night picks up feedback files (see :attr:`feedback_dir`)."""
        return Path(self.feedback_dir).expanduser() if self.feedback_dir else self.home_path() / "feedback" / "inbox"

    def feedback_processed(self) -> Path:
        """Where inbox files move once their events are in the lake."""
        return self.home_path() / "feedback" / "processed"

    def to_flat_params(self) -> dict[str, Any]:
        """Flatten to ``section.field`` keys for MLflow params."""
        out: dict[str, Any] = {}
        for section, values in self.model_dump().items():
            if isinstance(values, dict):
                out.update({f"{section}.{k}": v for k, v in values.items()})
            else:
                out[section] = values
        return out


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None, assignments: Iterable[str] = ()) -> Settings:
    """Settings from the YAML file ``path`` (default ``$EDGELOOP_CONFIG``, else ``./edgeloop.yaml``
    when present), then ``environ`` (default ``os.environ``), then ``assignments``
    (``SECTION.FIELD=VALUE``, as ``--set`` gives them), then ``overrides``; the later wins.

    ConfigError names every field that does not validate.
    """
    sources = (InitSettingsSource(Settings, overrides or {}),
               *file_and_env_sources(Settings, environ, path, assignments))
    try:
        return Settings(_build_sources=(sources, {}))
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid edgeloop configuration:\n" + "\n".join(lines)) from None
    except SettingsError as exc:  # a source could not read a value at all
        raise ConfigError(f"invalid edgeloop configuration: {exc}") from None


def settings_from_json(blob: str | dict[str, Any] | None) -> Settings:
    """Rebuild settings passed as a flow parameter (a dict or its JSON) on top of the defaults."""
    if blob is None:
        return load_settings()
    data = json.loads(blob) if isinstance(blob, str) else blob
    return load_settings(overrides=data)
