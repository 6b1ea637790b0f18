"""Read channel files and bundles from where the night publishes them: a folder or HTTP.

Nothing fetched is trusted: reads are capped in size and the device verifies the bundle after
the download. ``file://`` URLs and plain paths read a local or mounted ``bundles/`` folder;
``http(s)://`` URLs read the same layout from a static file server.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 16


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

