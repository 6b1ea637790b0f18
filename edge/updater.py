"""Fetch channels and bundles through TUF (python-tuf's ngclient): the device side of
:mod:`models.tuf_repository`.

The device is enrolled once with a root it trusts (:func:`enroll`); every later root must chain
to it. Each :meth:`TufUpdater.sync` refreshes root → timestamp → snapshot → targets, so the
device refuses a rollback to older metadata, an expired (frozen) timestamp, metadata that does
not match what the snapshot names (mix-and-match), signatures by keys root does not list or too
few of them, and any target whose length or sha256 differs from the signed targets metadata.
A refusal raises :class:`UpdateRefused` before anything is installed, so the running model stays.

Device state under ``state_dir``: ``enrolled_root.json`` (the pinned root) and ``metadata/``
(ngclient's cache of trusted metadata: what rollback protection compares against).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from edge.channels import channel_file, followed, parse_record
from edge.fetch import FetchError
from edge.manifest import MANIFEST_FILE, is_safe_name
from edge.verify import BundleVerificationError, check_manifest_shape, read_manifest, verify_bundle

ENROLLED_ROOT = "enrolled_root.json"
_CHUNK = 1 << 16


class UpdateRefused(BundleVerificationError):
    """TUF refused the repository's metadata or a target. ``kind`` names the failed check:
    ``rollback``, ``freeze``, ``signature``, ``mix-and-match``, ``tampered`` or ``invalid``."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class FolderFetcher(FetcherInterface):
    """Reads ``file://`` URLs, so a device can follow a repository on a local or mounted folder.

    A missing file answers like HTTP 404, which is how ngclient learns there is no newer root.
    """

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file":
            raise tuf_errors.DownloadError(f"FolderFetcher reads file:// URLs only, got {url}")
        path = Path(urllib.request.url2pathname(parts.path))
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise tuf_errors.DownloadHTTPError(f"{path} does not exist", 404) from None
        return _chunks(fh)


class _Recorder(FetcherInterface):
    """Remembers the last URL fetched: python-tuf's hash errors do not say which file failed."""

    def __init__(self, inner: FetcherInterface):
        self.inner = inner
        self.last = ""

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last = url
        return self.inner.fetch(url)

    def last_file(self) -> str:
        return urllib.parse.unquote(self.last.rsplit("/metadata/", 1)[-1].rsplit("/targets/", 1)[-1])


def _chunks(fh) -> Iterator[bytes]:
    with fh:
        while block := fh.read(_CHUNK):
            yield block


def enroll(state_dir: str | Path, root: bytes | str | Path) -> Path:
    """Pin ``root`` (bytes or a root.json file, delivered out of band) as this device's trust anchor.

    Re-enrolling with the same root is a no-op; a different root is refused, because replacing
    the anchor would let whoever writes it bypass every later check. Returns the pinned file.
    """
    from tuf.api.metadata import Metadata, Root

    data = root if isinstance(root, bytes) else Path(root).read_bytes()
    try:
        md = Metadata.from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - DeserializationError and friends
        raise ValueError(f"enrolment root is not TUF metadata: {exc}") from None
    if not isinstance(md.signed, Root):
        raise ValueError(f"enrolment root is {md.signed.type!r} metadata, expected root")
    state_dir = Path(state_dir)
    pinned = state_dir / ENROLLED_ROOT
    if pinned.exists():
        if pinned.read_bytes() != data:
            raise FileExistsError(f"{pinned} already pins another root; a device is enrolled once")
        return pinned
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = pinned.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, pinned)
    return pinned


def _refusal(exc: Exception, what: str) -> Exception:
    """Map a python-tuf error to :class:`UpdateRefused` (an attack) or :class:`FetchError` (network)."""
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return UpdateRefused("freeze", f"{what}: {exc}; the repository stopped re-signing or a mirror is stale")
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        # python-tuf 7 says "must be >=" (timestamp/snapshot going down) or "Expected targets.json
        # version" (a snapshot listing an older targets) for a rollback; any other "Expected ..."
        # is a file whose version differs from the one the metadata above it names.
        if "must be >=" in str(exc) or ".json version" in str(exc):
            return UpdateRefused("rollback", f"{what}: {exc}; metadata versions never go down")
        return UpdateRefused("mix-and-match", f"{what}: {exc}")
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return UpdateRefused("signature", f"{what}: {exc}")
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        if what.startswith("target"):
            return UpdateRefused("tampered", f"{what}: {exc}")
        return UpdateRefused("mix-and-match", f"{what}: {exc}; the file is not the one the signed "
                             "metadata above it names")
    if isinstance(exc, tuf_errors.DownloadError):
        return FetchError(f"{what}: {exc.__class__.__name__}: {exc}")
    return UpdateRefused("invalid", f"{what}: {exc}")


class TufUpdater:
    """Follow a TUF repository at ``repository`` (folder path, ``file://`` or ``http(s)://`` URL).

    ``state_dir`` must hold the root pinned by :func:`enroll`. ``max_bundle_bytes`` caps the sum
    of a bundle's target lengths before any of it is downloaded.
    """

    def __init__(self, state_dir: str | Path, repository: str | Path, *, timeout: float = 30.0,
                 max_bundle_bytes: int = 1 << 30):
        self.state_dir = Path(state_dir)
        if not (self.state_dir / ENROLLED_ROOT).is_file():
            raise FileNotFoundError(f"{self.state_dir / ENROLLED_ROOT} is missing: enroll the device first")
        base = str(repository)
        scheme = urllib.parse.urlsplit(base).scheme.lower()
        if scheme in ("http", "https", "file"):
            self.base_url = base.rstrip("/") + "/"
        elif scheme and len(scheme) > 1:
            raise ValueError(f"repository {base!r}: scheme {scheme!r} is not file, http or https")
        else:
            self.base_url = Path(base).resolve().as_uri() + "/"
        self.timeout = timeout
        self.max_bundle_bytes = max_bundle_bytes
        self._updater: Updater | None = None
        self._recorder = self._fetcher()

    def _fetcher(self) -> _Recorder:
        if self.base_url.startswith("file:"):
            return _Recorder(FolderFetcher())
        from tuf.ngclient import Urllib3Fetcher

        return _Recorder(Urllib3Fetcher(socket_timeout=int(max(1, self.timeout)), app_user_agent="edgeloop-edge"))

    def _what(self, what: str) -> str:
        last = self._recorder.last_file() if self._recorder.last else ""
        return f"{what} (last fetched: {last})" if last else what

    def refresh(self) -> None:
        """Load and verify root, timestamp, snapshot and targets; raise :class:`UpdateRefused` if any fails."""
        metadata = self.state_dir / "metadata"
        metadata.mkdir(parents=True, exist_ok=True)
        # ngclient refreshes once per instance: a fresh Updater each time, anchored on the pinned
        # root; the root versions it learnt since enrolment are replayed from its cache.
        self._recorder = self._fetcher()
        try:
            updater = Updater(str(metadata), self.base_url + "metadata/", None, self.base_url + "targets/",
                              fetcher=self._recorder, config=UpdaterConfig(app_user_agent="edgeloop-edge"),
                              bootstrap=(self.state_dir / ENROLLED_ROOT).read_bytes())
            updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise _refusal(exc, self._what("repository metadata")) from exc
        self._updater = updater

    def _info(self, path: str):
        if self._updater is None:
            self.refresh()
        try:
            return self._updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise _refusal(exc, self._what(f"metadata for {path}")) from exc

    def _download(self, info, dest: Path) -> None:
        try:
            self._updater.download_target(info, str(dest))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise _refusal(exc, f"target {info.path}") from exc

    def channel(self, channel: str) -> dict[str, Any]:
        """The verified record of ``channel`` (a canary device falls back to stable)."""
        for name in followed(channel):
            info = self._info(channel_file(name))
            if info is None:
                continue
            tmp = self.state_dir / f".{name}.channel"
            try:
                self._download(info, tmp)
                return parse_record(tmp.read_bytes(), name)
            finally:
                tmp.unlink(missing_ok=True)
        raise FetchError(f"the repository publishes no channel of {followed(channel)}")

    def fetch_bundle(self, record: dict[str, Any], models_dir: str | Path, *,
                     public_key: str | Path | None = None) -> Path:
        """``models_dir/<version>`` holding the channel's bundle, every file verified by TUF.

        An intact local copy is reused. Otherwise the files download into ``<version>.partial``,
        which is renamed into place only once all verify (and, with ``public_key``, once the
        manifest's own ed25519 signature does too).
        """
        version = record["model_version"]
        if not is_safe_name(version):
            raise UpdateRefused("invalid", f"channel names an unsafe model_version {version!r}")
        manifest_info = self._info(f"bundles/{version}/{MANIFEST_FILE}")
        if manifest_info is None:
            raise UpdateRefused("invalid", f"bundle {version} is not in the signed targets metadata")
        if manifest_info.hashes.get("sha256") != record["manifest_sha256"]:
            raise UpdateRefused("mix-and-match", f"channel {record.get('channel')} names manifest sha256 "
                                f"{record['manifest_sha256'][:16]}…, targets metadata says "
                                f"{str(manifest_info.hashes.get('sha256'))[:16]}…")
        models_dir = Path(models_dir)
        final = models_dir / version
        if final.is_dir() and self._intact(final, version, manifest_info, public_key):
            return final
        partial = models_dir / f"{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            self._download(manifest_info, partial / MANIFEST_FILE)
            infos = self._file_infos(version, partial)
            total = sum(i.length for i in infos.values())
            if total > self.max_bundle_bytes:
                raise UpdateRefused("invalid", f"bundle {version} is {total} bytes, above this device's "
                                    f"limit of {self.max_bundle_bytes}")
            for name, info in sorted(infos.items()):
                self._download(info, partial / name)
            if public_key is not None:
                verify_bundle(partial, public_key)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return final

    def _file_infos(self, version: str, folder: Path) -> dict[str, Any]:
        """TUF target info of every file the (TUF-verified) manifest lists; all must be targets."""
        infos = {}
        for name in check_manifest_shape(read_manifest(folder)):
            info = self._info(f"bundles/{version}/{name}")
            if info is None:
                raise UpdateRefused("invalid", f"bundle {version} file {name} is not a signed target")
            infos[name] = info
        return infos

    def _intact(self, folder: Path, version: str, manifest_info, public_key) -> bool:
        try:
            infos = {MANIFEST_FILE: manifest_info, **self._file_infos(version, folder)}
            for name, info in infos.items():
                with open(folder / name, "rb") as fh:
                    info.verify_length_and_hashes(fh)
            if public_key is not None:
                verify_bundle(folder, public_key)
            return True
        except (OSError, BundleVerificationError, tuf_errors.LengthOrHashMismatchError):
            return False

    def sync(self, channel: str, models_dir: str | Path, *,
             public_key: str | Path | None = None) -> tuple[dict[str, Any], Path]:
        """Refresh, read ``channel`` and fetch its bundle: ``(record, verified folder)``."""
        self.refresh()
        record = self.channel(channel)
        return record, self.fetch_bundle(record, models_dir, public_key=public_key)
