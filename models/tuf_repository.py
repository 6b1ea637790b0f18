"""The TUF repository that publishes bundles and channels (server side, python-tuf Metadata API).

Layout under ``repo_dir`` (serve ``metadata/`` and ``targets/`` as static files)::

    metadata/<N>.root.json, <N>.targets.json, <N>.snapshot.json   every version (consistent snapshots)
    metadata/root.json, targets.json, snapshot.json, timestamp.json  the current ones
    targets/bundles/<version>/<sha256>.<file>     bundle files (manifest.json included)
    targets/channels/<sha256>.<channel>.json      channel records (:mod:`edge.channels` format)
    repository.json                               expiry policy, read back by every later call

Private keys are PEM files named ``<keyid>.pem`` in ``keys_dir`` (``<home>/keys/tuf``), never in the
repository. Every change writes new targets, snapshot and timestamp versions, timestamp last, so a
device sees either the old state or the new one. A rollback is a new, higher version whose
channel names an older bundle; versions never go down.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from edge.channels import channel_file, check_channel, make_record, parse_record
from edge.manifest import MANIFEST_FILE, check_version_name, is_safe_name
from models.tuf_store import ThresholdNotMet, delete_keys, new_key, sign, write_atomic, writer_lock

__all__ = ["DEFAULT_EXPIRY", "ThresholdNotMet", "TufRepository", "bundle_target", "default_paths"]

log = logging.getLogger(__name__)

ROLES = ("root", "targets", "snapshot", "timestamp")
#: Default lifetimes. The timestamp outlives one missed nightly re-sign; a device that sees no
#: fresh timestamp for longer knows it is being frozen.
DEFAULT_EXPIRY = {"root": timedelta(days=365), "targets": timedelta(days=30),
                  "snapshot": timedelta(days=7), "timestamp": timedelta(days=2)}
CONFIG_FILE = "repository.json"


def bundle_target(model_version: str, name: str) -> str:
    """TUF target path of file ``name`` of bundle ``model_version``: ``bundles/v7/model.onnx``."""
    return f"bundles/{check_version_name(model_version)}/{name}"


def default_paths(home: str | Path) -> tuple[Path, Path]:
    """``(<home>/tuf, <home>/keys/tuf)``: where the repository and its private keys live."""
    home = Path(home)
    return home / "tuf", home / "keys" / "tuf"


@dataclass
class TufRepository:
    """An existing repository; open it with :func:`models.tuf_setup.open_repository` or create it with :func:`models.tuf_setup.init_repository`."""

    repo_dir: Path
    keys_dir: Path
    expiry: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_EXPIRY))

    # ---- reading ---------------------------------------------------------------------------
    @property
    def metadata_dir(self) -> Path:
        return self.repo_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.repo_dir / "targets"

    def load(self, role: str):
        """The current :class:`tuf.api.metadata.Metadata` of ``role``."""
        from tuf.api.metadata import Metadata

        return Metadata.from_file(str(self.metadata_dir / f"{role}.json"))

    def root_bytes(self, version: int | None = None) -> bytes:
        """Bytes of root ``version`` (default: current): what a device is enrolled with."""
        name = f"{version}.root.json" if version else "root.json"
        return (self.metadata_dir / name).read_bytes()

    def versions(self) -> dict[str, int]:
        """Current version of each top-level role."""
        return {role: self.load(role).signed.version for role in ROLES}

    def bundles(self) -> list[str]:
        """Model versions that have a bundle in the targets metadata."""
        names = {p.split("/")[1] for p in self.load("targets").signed.targets if p.startswith("bundles/")}
        return sorted(names)

    def channel(self, channel: str) -> dict | None:
        """The channel record the current targets metadata points ``channel`` at, or None."""
        info = self.load("targets").signed.targets.get(channel_file(channel))
        if info is None:
            return None
        return parse_record(self._target_path(info).read_bytes(), channel)

    def export_bundle(self, model_version: str, dest: str | Path) -> Path | None:
        """Write published bundle ``model_version`` into the new folder ``dest``; None if unpublished.

        Every file is checked against the signed targets metadata first, and ``dest`` appears
        whole or not at all: this is how a lost bundle folder is restored byte for byte, since a
        rebuilt one would differ (its manifest is signed anew) and published versions never change.
        """
        prefix = f"bundles/{check_version_name(model_version)}/"
        infos = {p[len(prefix):]: t for p, t in self.load("targets").signed.targets.items() if p.startswith(prefix)}
        if not infos:
            return None
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.restore")
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted restore
        tmp.mkdir(parents=True)
        try:
            for name, info in infos.items():
                with open(self._target_path(info), "rb") as fh:
                    info.verify_length_and_hashes(fh)
                shutil.copyfile(self._target_path(info), tmp / name)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("TUF: bundle %s restored into %s", model_version, dest)
        return dest

    # ---- changes -------------------------------------------------------------------------------
    def add_bundle(self, bundle_dir: str | Path, *, public_key: str | Path | None = None) -> str:
        """Publish the files of a bundle folder as targets ``bundles/<version>/<file>``; return the version.

        The version is the manifest's ``model_version``. With ``public_key`` the bundle's ed25519
        signature and files are verified first. A version already published with other content
        is refused: published versions never change.
        """
        from tuf.api.metadata import TargetFile

        from edge.verify import read_manifest, verify_bundle

        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir, public_key) if public_key else read_manifest(bundle_dir)
        version = check_version_name(manifest.get("model_version"))
        files = [MANIFEST_FILE, *sorted(manifest.get("files") or {})]
        bad = [n for n in files if not is_safe_name(n) or not (bundle_dir / n).is_file()]
        if bad:
            raise FileNotFoundError(f"bundle {bundle_dir} lacks or misnames file(s) {bad}")
        infos = {bundle_target(version, n): TargetFile.from_file(bundle_target(version, n), str(bundle_dir / n),
                                                                 ["sha256"]) for n in files}
        with writer_lock(self.repo_dir):
            md = self.load("targets")
            published = {p: t for p, t in md.signed.targets.items() if p.startswith(f"bundles/{version}/")}
            if published:
                if published != infos:
                    raise FileExistsError(f"bundle {version} is already published with other files; "
                                          "model versions are immutable")
                return version
            for path, info in infos.items():
                self._store_target(info, (bundle_dir / path.rsplit("/", 1)[1]).read_bytes())
            md.signed.targets.update(infos)
            self._publish("targets", md)
        log.info("TUF: bundle %s added (%d files)", version, len(infos))
        return version

    def set_channel(self, channel: str, model_version: str, reason: str) -> dict:
        """Point ``channel`` at a published bundle in a new targets/snapshot/timestamp version.

        Moving a channel back to an older bundle (a rollback) is the same call: the metadata
        versions still go up, so devices accept it. Returns the channel record; a move to where
        the channel already points is a no-op.
        """
        from tuf.api.metadata import TargetFile

        check_channel(channel)
        with writer_lock(self.repo_dir):
            md = self.load("targets")
            manifest = md.signed.targets.get(bundle_target(model_version, MANIFEST_FILE))
            if manifest is None:
                raise FileNotFoundError(f"bundle {model_version!r} is not published; add_bundle it first")
            current = self.channel(channel)
            if current and (current["model_version"], current["manifest_sha256"]) == \
                    (model_version, manifest.hashes["sha256"]):
                return current
            record = make_record(channel, model_version, manifest.hashes["sha256"], reason)
            data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8")
            info = TargetFile.from_data(channel_file(channel), data, ["sha256"])
            self._store_target(info, data)
            md.signed.targets[info.path] = info
            self._publish("targets", md)
        log.info("TUF: channel %s -> %s (%s)", channel, model_version, reason)
        return record

    def refresh_timestamp(self) -> dict[str, int]:
        """Nightly re-sign: a new timestamp, plus root/targets/snapshot when half their life is gone.

        Devices refuse an expired timestamp, so a repository that stops calling this (or a
        mirror that freezes it) is noticed within the timestamp's lifetime. Returns the versions.
        """
        with writer_lock(self.repo_dir):
            if self._aging("root"):
                try:
                    self._write_root(self.load("root"), previous=self.load("root").signed)
                except ThresholdNotMet as exc:  # root keys kept offline: a person must renew it
                    log.warning("TUF: root expires %s and cannot be renewed here: %s",
                                self.load("root").signed.expires, exc)
            if self._aging("targets"):
                self._publish("targets", self.load("targets"))
            elif self._aging("snapshot"):
                self._publish("snapshot")
            else:
                self._publish("timestamp")
            return self.versions()

    def rotate_key(self, role: str) -> list[str]:
        """Replace every key of ``role`` by fresh ones (as many as its threshold); return the new key ids.

        A new root version lists the new keys and is signed by the old root keys and, for the
        root role, the new ones too, so a device holding an older root can follow the chain.
        The role is then re-signed with the new keys and the old private keys are deleted.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        with writer_lock(self.repo_dir):
            old_md, new_md = self.load("root"), self.load("root")
            root = new_md.signed
            old_ids = list(root.roles[role].keyids)
            new_ids = [new_key(self.keys_dir, root, role) for _ in range(root.roles[role].threshold)]
            for keyid in old_ids:
                root.revoke_key(keyid, role)
            try:
                self._write_root(new_md, previous=old_md.signed)
            except BaseException:
                delete_keys(self.keys_dir, new_ids)  # never published: forget them
                raise
            delete_keys(self.keys_dir, old_ids, root)  # revoked keys must never sign again
            if role != "root":
                self._publish(role, self.load(role))
        log.warning("TUF: %s keys rotated, root is now v%d", role, root.version)
        return new_ids

    # ---- internals -------------------------------------------------------------------------------
    def _target_path(self, info) -> Path:
        folder, _, name = info.path.rpartition("/")
        return self.targets_dir / folder / f"{info.hashes['sha256']}.{name}"

    def _store_target(self, info, data: bytes) -> None:
        write_atomic(self._target_path(info), data)

    def _aging(self, role: str) -> bool:
        left = self.load(role).signed.expires - datetime.now(timezone.utc)
        return left < self.expiry[role] / 2

    def _bump(self, md, role: str, first: bool = False) -> None:
        """Next version (``first``: keep version 1 of a new role), fresh expiry, no signatures yet."""
        if not first:
            md.signed.version += 1
        md.signed.expires = _now() + self.expiry[role]
        md.signatures.clear()

    def _write_root(self, md, previous) -> None:
        self._bump(md, "root")
        sign(md, "root", previous, self.keys_dir)  # the old root vouches for the new one ...
        sign(md, "root", md.signed, self.keys_dir)  # ... and the new one for itself
        self._write("root", md)

    def _write(self, role: str, md) -> None:
        data = md.to_bytes()
        if role != "timestamp":  # consistent snapshots: every version stays where devices look for it
            write_atomic(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        write_atomic(self.metadata_dir / f"{role}.json", data)

    def _meta(self, role: str):
        from tuf.api.metadata import Metadata, MetaFile

        data = (self.metadata_dir / f"{role}.json").read_bytes()
        return MetaFile.from_data(Metadata.from_bytes(data).signed.version, data, ["sha256"])

    def _publish(self, role: str, md=None, first: bool = False) -> None:
        """Write a new version of ``role``, then of each role above it: targets → snapshot → timestamp.

        Snapshot and timestamp name the version, length and sha256 of the file below them, so a
        device refuses any file swapped in from another version (mix-and-match).
        """
        from tuf.api.metadata import Metadata, Snapshot, Timestamp

        if role == "snapshot":
            md = Metadata(Snapshot()) if first else self.load("snapshot")
            md.signed.meta["targets.json"] = self._meta("targets")
        elif role == "timestamp":
            md = Metadata(Timestamp()) if first else self.load("timestamp")
            md.signed.snapshot_meta = self._meta("snapshot")
        self._bump(md, role, first)
        sign(md, role, self.load("root").signed, self.keys_dir)
        self._write(role, md)
        if role != "timestamp":
            self._publish("snapshot" if role == "targets" else "timestamp", first=first)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
