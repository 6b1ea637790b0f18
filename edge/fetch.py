"""Read channel files and bundles from where the night publishes them: a folder or HTTP.

Nothing fetched is trusted: reads are capped in size and the device verifies the bundle after
the download. ``file://`` URLs and plain paths read a local or mounted ``bundles/`` folder;
``http(s)://`` URLs read the same layout from a static file server. :class:`PlainFeed` is how a
device not enrolled with TUF follows a channel (:mod:`edge.updater` is how an enrolled one does).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
MANIFEST_LIMIT = 1 << 20  # channel records and manifests are small; anything bigger is refused


class FetchError(Exception):
    """A file could not be fetched, or was larger than allowed; the message names it."""


class Source:
    """Where bundles live. ``relpath`` is always a '/'-joined path under the bundles root."""

    def open(self, relpath: str) -> BinaryIO:  # pragma: no cover - interface
        raise NotImplementedError

    def read_bytes(self, relpath: str, limit: int) -> bytes:
        """Read a small file (channel, manifest); FetchError when it exceeds ``limit`` bytes."""
        with self.open(relpath) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise FetchError(f"{relpath} is larger than {limit} bytes")
        return data

    def download(self, relpath: str, dest: Path, limit: int) -> int:
        """Stream ``relpath`` into ``dest``, stopping past ``limit`` bytes; return the size."""
        written = 0
        with self.open(relpath) as src, open(dest, "wb") as out:
            while block := src.read(_CHUNK):
                written += len(block)
                if written > limit:
                    raise FetchError(f"{relpath} is larger than the {limit} bytes its manifest declares")
                out.write(block)
        return written


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root = Path(root)

    def open(self, relpath: str) -> BinaryIO:
        path = self.root.joinpath(*relpath.split("/"))
        try:
            return open(path, "rb")
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r})"


class HttpSource(Source):
    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout

    def open(self, relpath: str) -> BinaryIO:
        url = urllib.parse.urljoin(self.base_url, urllib.parse.quote(relpath))
        try:
            return urllib.request.urlopen(url, timeout=self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            raise FetchError(f"GET {url} answered {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"GET {url} failed: {getattr(exc, 'reason', exc)}") from None

    def __repr__(self) -> str:
        return f"HttpSource({self.base_url!r})"


def open_source(location: str | Path, timeout: float = 30.0) -> Source:
    """A :class:`Source` for a folder path, a ``file://`` URL or an ``http(s)://`` URL."""
    if isinstance(location, Path):
        return FolderSource(location)
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(location, timeout)
    if scheme == "file":
        return FolderSource(Path(urllib.request.url2pathname(urllib.parse.urlsplit(location).path)))
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive, i.e. a path
        raise ValueError(f"bundles source {location!r}: scheme {scheme!r} is not file, http or https")
    return FolderSource(Path(location))



def check_record(folder: Path, record: dict[str, Any], public_key: str | Path) -> dict[str, Any]:
    """Verify bundle ``folder`` (signature, files) and that it is the one ``record`` names; return
    its manifest. BundleVerificationError says which check failed."""
    from edge.manifest import MANIFEST_FILE
    from edge.verify import BundleVerificationError, verify_bundle

    digest = hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest() \
        if (folder / MANIFEST_FILE).is_file() else None
    manifest = verify_bundle(folder, public_key)
    if digest != record["manifest_sha256"]:
        raise BundleVerificationError(f"manifest sha256 {str(digest)[:16]}… differs from the channel's "
                                      f"{record['manifest_sha256'][:16]}…")
    if manifest.get("model_version") != record["model_version"]:
        raise BundleVerificationError(f"manifest model_version {manifest.get('model_version')!r} differs "
                                      f"from the channel's {record['model_version']!r}")
    return manifest


class PlainFeed:
    """Channel records and bundles read as plain files from ``source`` (no TUF).

    Only the bundle's ed25519 signature vouches for what is served: a channel file rewritten to
    name an older signed bundle, or an old copy served forever, is not noticed. Enrol the device
    with a TUF root (:mod:`edge.updater`) to refuse those too.
    """

    def __init__(self, source: Source, public_key: str | Path, max_bundle_bytes: int):
        self.source, self.public_key, self.max_bundle_bytes = source, Path(public_key), max_bundle_bytes

    def channel(self, channel: str) -> dict[str, Any]:
        """The record of the first channel of :func:`edge.channels.followed` that is published."""
        from edge.channels import channel_file, followed, parse_record

        names = followed(channel)
        for i, name in enumerate(names):
            try:
                raw = self.source.read_bytes(channel_file(name), MANIFEST_LIMIT)
            except FetchError:
                if i + 1 < len(names):
                    continue
                raise
            return parse_record(raw, name)
        raise AssertionError("unreachable")

    def fetch_bundle(self, record: dict[str, Any], models_dir: Path) -> Path:
        """``models_dir/<version>`` verified against ``record``: an intact local copy is reused,
        otherwise the bundle downloads into ``<version>.partial``, renamed once it verifies."""
        from edge.verify import BundleVerificationError

        version = record["model_version"]
        final = Path(models_dir) / version
        if final.is_dir():
            try:  # kept from before (e.g. the previous model): reuse it if it is still intact
                check_record(final, record, self.public_key)
                return final
            except BundleVerificationError as exc:
                log.warning("local copy of %s is damaged (%s); downloading again", version, exc)
                shutil.rmtree(final)
        partial = final.with_name(f"{version}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted sync
        partial.mkdir(parents=True)
        try:
            self._download(record, partial)
            check_record(partial, record, self.public_key)
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return final

    def _download(self, record: dict[str, Any], partial: Path) -> None:
        from edge.manifest import MANIFEST_FILE, load_public_key
        from edge.verify import BundleVerificationError, check_manifest_shape, read_manifest, verify_signature

        bundle = record["bundle"]
        (partial / MANIFEST_FILE).write_bytes(self.source.read_bytes(f"{bundle}/{MANIFEST_FILE}", MANIFEST_LIMIT))
        manifest = read_manifest(partial)
        # Check the signature before downloading the weights: a forged manifest costs nothing.
        verify_signature(manifest, load_public_key(self.public_key))
        files = check_manifest_shape(manifest)
        total = sum(e["size"] for e in files.values())
        if total > self.max_bundle_bytes:
            raise BundleVerificationError(f"bundle is {total} bytes, above this device's limit of "
                                          f"{self.max_bundle_bytes}")
        for name, entry in sorted(files.items()):
            self.source.download(f"{bundle}/{name}", partial / name, entry["size"])
