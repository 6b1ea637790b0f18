"""Where settings come from, as pydantic-settings sources: the YAML file, the environment, ``--set``.

Highest first: values passed in code, ``--set SECTION.FIELD=VALUE`` assignments, the environment
(``EDGELOOP__SECTION__FIELD``, then the ``EDGELOOP_HOME`` shortcut), the YAML file, the defaults.
An assignment is read exactly as the variable it names (``--set student.epochs=4`` is
``EDGELOOP__STUDENT__EPOCHS=4``), so the command line and the environment share one parser:
plain values are validated by the field's type, lists and mappings are read as YAML (``[a, b]``),
and ``null`` is None. Nothing here touches the disk at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import (BaseSettings, EnvSettingsSource, InitSettingsSource, PydanticBaseSettingsSource,
                               YamlConfigSettingsSource)
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "EDGELOOP__"
ENV_DELIMITER = "__"
HOME_SHORTCUT = "EDGELOOP_HOME"
TZ_SHORTCUT = "EDGELOOP_TZ"  # the same variable prefect.yaml's schedule reads
CONFIG_ENV = "EDGELOOP_CONFIG"
DEFAULT_CONFIG_FILE = "edgeloop.yaml"


class ConfigError(ValueError):
    """The configuration file or an override is invalid; the message names the field."""


def assignments_as_env(assignments: Iterable[str]) -> dict[str, str]:
    """``["student.epochs=4"]`` → ``{"EDGELOOP__STUDENT__EPOCHS": "4"}``; ConfigError when malformed."""
    out: dict[str, str] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() and ENV_DELIMITER not in p for p in parts):
            raise ConfigError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        out[ENV_PREFIX + ENV_DELIMITER.join(p.strip().upper() for p in parts)] = raw
    return out


class EnvSource(EnvSettingsSource):
    """``EDGELOOP__SECTION__FIELD`` variables of ``environ`` (not necessarily ``os.environ``).

    Lists and mappings are read as YAML, which also takes JSON and the short ``[a, b]``. A
    variable that names no setting is kept, so that validation rejects it by name instead of it
    being ignored (a typo would otherwise change nothing, silently).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX,
                         env_nested_delimiter=ENV_DELIMITER, env_parse_none_str="null")

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return yaml.safe_load(value) if isinstance(value, str) else value
        except yaml.YAMLError:
            return value  # validation then says which field wants a list or a mapping

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        prefix = ENV_PREFIX.lower()
        for name, value in self.env_vars.items():
            head, _, rest = name[len(prefix):].partition(ENV_DELIMITER) if name.startswith(prefix) else ("", "", "")
            if head and head not in self.settings_cls.model_fields:
                data[head] = _nest(rest.split(ENV_DELIMITER), value) if rest else value
        return data


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    return {keys[0]: _nest(keys[1:], value) if len(keys) > 1 else value}


class YamlSource(YamlConfigSettingsSource):
    """The YAML file at ``path``; ConfigError when it is missing, unreadable or not a mapping."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        try:
            loaded = yaml.safe_load(Path(file_path).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file_path} is not valid YAML: {exc}") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping, got {type(loaded).__name__}")
        return loaded


def file_and_env_sources(settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None,
                         path: str | Path | None = None,
                         assignments: Iterable[str] = ()) -> tuple[PydanticBaseSettingsSource, ...]:
    """The sources below values passed in code, highest first.

    ``environ`` defaults to ``os.environ``; ``path`` to ``$EDGELOOP_CONFIG``, else ``./edgeloop.yaml``
    when it exists (no file is fine).
    """
    environ = dict(os.environ if environ is None else environ)
    sources: list[PydanticBaseSettingsSource] = [
        EnvSource(settings_cls, {**environ, **assignments_as_env(assignments)})]
    shortcuts = {key: environ[var] for var, key in ((HOME_SHORTCUT, "home"), (TZ_SHORTCUT, "schedule_timezone"))
                 if environ.get(var)}
    if shortcuts:
        sources.append(InitSettingsSource(settings_cls, shortcuts))
    path = path or environ.get(CONFIG_ENV) or (DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None)
    if path:
        sources.append(YamlSource(settings_cls, Path(path)))
    return tuple(sources)
