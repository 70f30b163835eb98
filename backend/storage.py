"""Images in Label Studio's cloud storages, fetched through Label Studio itself, and a bounded disk cache.

A project whose images live in S3, GCS or Azure Blob (a *Source Cloud Storage* in Label Studio) hands the
backend task data such as ``s3://bucket/key.png``; the task API hands out Label Studio's proxy URLs for the
same objects (``/tasks/<id>/resolve/?fileuri=<base64 of the URI>``). The backend holds no cloud credentials:
it asks Label Studio's task-scoped resolve endpoint (the one the official SDK's ``get_local_path`` uses),
with the API key, and Label Studio either

* streams the bytes itself (the storage's "Use pre-signed URLs" off: proxy mode), or
* answers ``303 See Other`` with a presigned URL of the storage host (presign mode), which is followed
  **without** the ``Authorization`` header: the key goes to Label Studio's origin and nowhere else.

A presigned URL is a credential for as long as it lives, so this module never puts one in an error message
or a log line (only its host); note that ``urllib3`` logs request lines, query included, at DEBUG level.

Downloaded bytes go to an :class:`ImageCache` under ``WORK_DIR`` keyed by the storage URI, so training and
later predictions reuse them; objects are assumed immutable (an object overwritten in the bucket under the
same key is served from the cache until it is evicted).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urljoin, urlparse

import requests

from backend.lsclient import LabelStudioAuth

logger = logging.getLogger(__name__)

__all__ = [
    "CLOUD_SCHEMES",
    "ImageCache",
    "LabelStudioFiles",
    "StorageError",
    "StorageFailure",
    "is_label_studio_proxy",
]

CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob"})
"""URI schemes of Label Studio's cloud storages (Amazon S3 and S3-compatible, Google Cloud Storage, Azure)."""

_RESOLVE_PATH = re.compile(r"/(?:tasks|projects)/\d+/(?:resolve|presign)/?")
_STORAGE_DATA_PREFIX = "/storage-data/"
_MAX_REDIRECTS = 5
_STALE_TEMP_SECONDS = 3600.0


StorageFailure = Literal["reference", "http_status", "too_large"]
"""Why a storage object failed (a subset of :data:`backend.images.ImageFailure`)."""


class StorageError(ValueError):
    """A storage object could not be fetched; the message starts with the caller's ``where``.

    Attributes:
        cause: ``reference`` (a URI Label Studio cannot resolve for this task), ``http_status`` (a non-200
            answer or a redirect loop) or ``too_large``.
    """

    def __init__(self, message: str, *, cause: StorageFailure = "http_status") -> None:
        super().__init__(message)
        self.cause: StorageFailure = cause


def is_label_studio_proxy(path: str) -> bool:
    """Whether a URL path is one of Label Studio's storage proxy endpoints.

    ``/tasks/<id>/resolve/``, ``/projects/<id>/resolve/`` (and their older ``/presign/`` names) resolve a
    cloud URI given as ``?fileuri=``; ``/storage-data/...`` serves files of Label Studio's own storage.
    """
    return bool(_RESOLVE_PATH.fullmatch(path)) or path.startswith(_STORAGE_DATA_PREFIX)


def _decode_fileuri(value: str) -> str:
    """The cloud URI in a ``fileuri`` parameter: URL-safe base64 (Label Studio 1.2x), else percent-encoded."""
    try:
        decoded = base64.urlsafe_b64decode(value.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return unquote(value)
    return decoded if urlparse(decoded).scheme in CLOUD_SCHEMES else unquote(value)


class ImageCache:
    """Downloaded image bytes on disk, bounded in total size, least recently used evicted first.

    Safe for several threads and processes sharing ``directory``: an entry is written to a temporary file
    and renamed into place (readers see a whole file or none), a hit refreshes the entry's modification
    time, and every write evicts the least recently used entries until the total fits ``max_bytes`` again.
    An entry removed by another process while it is being read is still read whole (POSIX unlink
    semantics); one removed before it is opened is a miss.

    Args:
        directory: the cache folder (created on first write).
        max_bytes: bound on the total size of the entries; a single object larger than this is not cached.

    Example:
        >>> import tempfile
        >>> cache = ImageCache(Path(tempfile.mkdtemp()), max_bytes=10)
        >>> cache.put("s3://b/a.png", b"123456")
        >>> cache.put("s3://b/c.png", b"7890")
        >>> cache.get("s3://b/a.png")
        b'123456'
        >>> cache.put("s3://b/d.png", b"xyz")  # 13 bytes > 10: c.png, the least recently used, goes
        >>> cache.get("s3://b/c.png") is None, cache.total_bytes()
        (True, 9)
    """

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: expected a positive number of bytes, got {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._clock = time.time_ns()  # strictly increasing access times within this process

    def _path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(key.encode()).hexdigest()

    def _touch(self, path: Path) -> None:
        with self._lock:
            self._clock = max(self._clock + 1, time.time_ns())
            stamp = self._clock
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, ns=(stamp, stamp))

    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None``; a hit makes the entry the most recently used."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # an unreadable cache costs a download, not the image
            logger.warning("image cache: cannot read %s (%s)", path, exc)
            return None
        self._touch(path)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (atomically), then evict down to ``max_bytes``."""
        if len(data) > self.max_bytes:
            logger.debug("not cached: %d bytes exceed IMAGE_CACHE_MB", len(data))
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())  # a crash must not leave a renamed but empty entry
            path = self._path(key)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._touch(path)
        self._evict()

    def total_bytes(self) -> int:
        """The total size of the entries now on disk."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[int, int, Path]]:
        """``(access time ns, size, path)`` of every entry; removes temporary files left by dead writers."""
        entries = []
        now = time.time()
        try:
            scan = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in scan:
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if entry.name.startswith("."):
                if now - st.st_mtime > _STALE_TEMP_SECONDS:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                continue
            entries.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
        return entries

    def _evict(self) -> None:
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return
        for _, size, path in sorted(entries):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            if total <= self.max_bytes:
                break


@dataclass(frozen=True)
class _Request:
    url: str  # absolute, on Label Studio
    key: str  # the cache key: the storage URI when known


class LabelStudioFiles:
    """Fetch storage objects through Label Studio's resolve endpoints (see the module docstring).

    Args:
        base_url: ``LABEL_STUDIO_URL``.
        auth: the key, sent to ``base_url``'s origin only.
        cache: where downloaded bytes are kept (``None``: no cache).
        timeout: seconds per HTTP request.
        max_bytes: the largest object accepted.
    """

    def __init__(
        self,
        base_url: str,
        auth: LabelStudioAuth,
        *,
        cache: ImageCache | None = None,
        timeout: float = 30.0,
        max_bytes: int = 200 * 2**20,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.cache = cache
        self.timeout = timeout
        self.max_bytes = max_bytes
        base = urlparse(self.base_url)
        self._origin = (base.scheme, base.netloc)

    def on_label_studio(self, url: str) -> bool:
        """Whether an absolute URL is on Label Studio's origin (scheme, host and port)."""
        parsed = urlparse(url)
        return (parsed.scheme, parsed.netloc) == self._origin

    def fetch_cloud(self, uri: str, *, task: str, where: str) -> bytes:
        """The bytes of a cloud URI (``s3://``, ``gs://``, ``azure-blob://``) of a task.

        Args:
            uri: the URI as it stands in the task data.
            task: the task id (Label Studio resolves the URI with the storages of the task's project).
            where: prefix of error messages.

        Raises:
            StorageError: no task id, Label Studio refused or found no storage, the storage host refused,
                the object is too large, or too many redirects.
        """
        if not task.isdigit():
            raise StorageError(
                f"{where}: Label Studio resolves a cloud storage URI for its task, but the task has no id",
                cause="reference",
            )
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        return self._fetch(_Request(f"{self.base_url}/tasks/{task}/resolve/?fileuri={fileuri}", uri), where)

    def fetch_proxied(self, url: str, *, where: str) -> bytes:
        """The bytes behind a Label Studio proxy URL (see :func:`is_label_studio_proxy`).

        Args:
            url: a path on Label Studio (``/tasks/7/resolve/?fileuri=...``) or an absolute URL on its origin.
            where: prefix of error messages.

        Raises:
            StorageError: as :meth:`fetch_cloud`.
        """
        parsed = urlparse(url)
        if parsed.scheme and not self.on_label_studio(url):
            raise StorageError(
                f"{where}: not on LABEL_STUDIO_URL's origin; the key is not sent there", cause="reference"
            )
        absolute = self.base_url + parsed.path + (f"?{parsed.query}" if parsed.query else "")
        fileuri = parse_qs(parsed.query).get("fileuri", [""])[0]
        key = _decode_fileuri(fileuri) if fileuri else f"label-studio:{parsed.path}?{parsed.query}"
        return self._fetch(_Request(absolute, key), where)

    def _fetch(self, request: _Request, where: str) -> bytes:
        if self.cache is not None:
            cached = self.cache.get(request.key)
            if cached is not None:
                return cached
        data = self._download(request.url, where)
        if self.cache is not None:
            try:
                self.cache.put(request.key, data)
            except OSError as exc:  # a full or read-only disk costs a re-download, not the prediction
                logger.warning("image cache: cannot write under %s (%s)", self.cache.directory, exc)
        return data

    def _get(self, url: str) -> requests.Response:
        """One GET without following redirects; the key only on Label Studio's origin."""
        if not self.on_label_studio(url):
            return requests.get(url, allow_redirects=False, stream=True, timeout=self.timeout)
        headers = self.auth.headers()
        resp = requests.get(url, headers=headers, allow_redirects=False, stream=True, timeout=self.timeout)
        if resp.status_code == 401 and headers["Authorization"].startswith("Bearer "):
            resp.close()  # an expired access token of a personal access token: refresh once
            resp = requests.get(
                url,
                headers=self.auth.headers(refresh=True),
                allow_redirects=False,
                stream=True,
                timeout=self.timeout,
            )
        return resp

    def _download(self, url: str, where: str) -> bytes:
        for _ in range(_MAX_REDIRECTS + 1):
            on_ls = self.on_label_studio(url)
            host = "Label Studio" if on_ls else f"the storage host {urlparse(url).netloc}"
            with self._get(url) as resp:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers["Location"])
                    if urlparse(url).scheme not in ("http", "https"):
                        # Label Studio redirects to the bare URI when it cannot presign it.
                        raise StorageError(
                            f"{where}: {host} could not presign the object (see its log)", cause="reference"
                        )
                    continue
                if resp.status_code != 200:
                    raise StorageError(f"{where}: HTTP {resp.status_code} from {host}{_hint(resp, on_ls)}")
                return self._read(resp, where, host)
        raise StorageError(f"{where}: more than {_MAX_REDIRECTS} redirects")

    def _read(self, resp: requests.Response, where: str, host: str) -> bytes:
        limit = f"larger than {self.max_bytes // 2**20} MiB"
        declared = resp.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise StorageError(f"{where}: {limit} (from {host})", cause="too_large")
        chunks, size = [], 0
        for chunk in resp.iter_content(chunk_size=1 << 20):
            size += len(chunk)
            if size > self.max_bytes:
                raise StorageError(f"{where}: {limit} (from {host})", cause="too_large")
            chunks.append(chunk)
        return b"".join(chunks)


def _hint(resp: requests.Response, on_label_studio: bool) -> str:
    """What a failed status most likely means, for the error message."""
    status = resp.status_code
    if not on_label_studio:
        if status == 404:
            return " (no such object in the bucket)"
        return " (the presigned URL was refused: expired, or not valid from the backend's network)"
    if status == 404:
        return (
            " (no storage of the task's project covers this URI: add the bucket as a Source Cloud Storage"
            " of the project)"
        )
    if status in (401, 403):
        return " (check LABEL_STUDIO_API_KEY and the user's access to the project)"
    if status == 424 or status >= 500:
        return " (Label Studio could not read the object from the storage: see its log)"
    return ""
