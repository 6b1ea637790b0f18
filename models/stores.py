"""Where the student lives once trained: its registry entry, promotion history, bundles and caches.

Registration, evaluation and rollout take a :class:`StudentStore` instead of the whole settings;
a flow builds it once (:meth:`StudentStore.from_settings`) and hands it to its tasks.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from models import registry


@dataclass(frozen=True)
class StudentStore:
    """The student's registered model and the local folders that go with it."""

    tracking_uri: str
    name: str  # the registered model name
    home: Path  # promotion history under home/registry, downloads under home/cache
    bundles_root: Path
    signing_key: Path
    public_key: Path
    backend: str  # the backend a bundle records when its version's tags do not say
    tuf_expiry: tuple[tuple[str, float], ...] = ()  # (role, seconds) from bundle.tuf; () = the defaults

    @classmethod
    def from_settings(cls, settings) -> "StudentStore":
        """From :class:`edgeloop.config.Settings` (mlflow, bundle and student sections, home)."""
        return cls(settings.tracking_uri(), settings.mlflow.student_model_name, settings.home_path(),
                   settings.bundles_root(), settings.signing_key_path(), settings.public_key_path(),
                   settings.student.quantize, tuple(settings.bundle.tuf.expiry_seconds().items()))

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def history(self) -> list[dict]:
        """The promotion history, oldest first (the registry's, with any local-only entry)."""
        return registry.read_history(self.home, self.name, self.tracking_uri)

    def alias(self, alias: str) -> str | None:
        """The version ``alias`` points to, or None."""
        return registry.alias_version(self.tracking_uri, self.name, alias)


def champion_folder(store: StudentStore) -> tuple[str | None, Path | None]:
    """(version, local folder) of the current champion, downloaded once per version."""
    version = store.alias(registry.CHAMPION)
    if version is None:
        return None, None
    dst = store.cache_dir / "student" / version
    files = registry.downloaded_files(dst)
    if files is None or not (files / "edge" / "model.onnx").exists():
        shutil.rmtree(dst, ignore_errors=True)
        files = registry.download_version(store.tracking_uri, store.name, version, dst)
    return version, files
