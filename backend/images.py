"""Load task images: Label Studio uploads, Local Files, http(s) URLs and inline ``data:`` URIs.

* ``/data/upload/...`` and other Label-Studio-relative paths: fetched from ``LABEL_STUDIO_URL`` with the
  API key.
* ``/data/local-files/?d=<rel>``: read from ``LOCAL_FILES_DOCUMENT_ROOT/<rel>`` when that is set (no HTTP,
  path traversal outside the root refused), else fetched from Label Studio like an upload.
* ``http(s)://...``: the key is sent only when the URL is on ``LABEL_STUDIO_URL``'s host, never elsewhere.
* ``data:image/...;base64,...``: decoded inline.

Every failure raises :class:`ImageLoadError` naming the task and the URL (never the key).

Sources are chosen by URL scheme from :data:`RESOLVERS` (``""`` is a path without a scheme); a new source is
one resolver function added there (see docs/CONTRACTS.md, "How to add an image source").
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import requests

from backend.lsclient import LabelStudioAuth

if TYPE_CHECKING:
    from backend.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["RESOLVERS", "ImageFailure", "ImageLoadError", "ImageLoader", "LoadedImage", "Resolver"]

_MAX_BYTES = 200 * 1024 * 1024


ImageFailure = Literal["reference", "missing", "unreachable", "http_status", "too_large", "undecodable"]
"""Why an image failed to load (the ``cause`` label of the image-load-failure metric):

``reference`` (not a URL this loader understands, or one outside the document root), ``missing`` (no such
local file), ``unreachable`` (network error or timeout), ``http_status`` (a non-200 answer), ``too_large``,
``undecodable`` (bytes that are not an image, or a bad data URI payload).
"""


class ImageLoadError(ValueError):
    """A task's image could not be loaded; the message names the task and the URL.

    Attributes:
        cause: the kind of failure (see :data:`ImageFailure`).
    """

    def __init__(self, message: str, *, cause: ImageFailure = "reference") -> None:
        super().__init__(message)
        self.cause: ImageFailure = cause


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image.

    Attributes:
        pixels: uint8 (H, W, 3) RGB.
        path: the file on disk when the image came from one (training links it instead of copying).
    """

    pixels: np.ndarray
    path: Path | None = None

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:100] + "..."


class ImageLoader:
    """Resolve and decode task image references.

    Args:
        label_studio_url: base URL for relative Label Studio paths (``None``: those fail with a message).
        auth: authorization for Label Studio-hosted images.
        document_root: ``LOCAL_FILES_DOCUMENT_ROOT``.
        timeout: seconds per HTTP request.
    """

    def __init__(
        self,
        *,
        label_studio_url: str | None = None,
        auth: LabelStudioAuth | None = None,
        document_root: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.auth = auth
        self.document_root = document_root.resolve() if document_root is not None else None
        self.timeout = timeout

    def local_path(self, url: str) -> Path | None:
        """The file a ``/data/local-files/?d=...`` URL names under the document root, if configured."""
        parsed = urlparse(url)
        if self.document_root is None or not parsed.path.startswith("/data/local-files"):
            return None
        rel = parse_qs(parsed.query).get("d", [""])[0]
        if not rel:
            return None
        path = (self.document_root / unquote(rel).lstrip("/")).resolve()
        if not path.is_relative_to(self.document_root):
            raise ImageLoadError(f"{_short(url)}: resolves outside LOCAL_FILES_DOCUMENT_ROOT")
        return path

    @classmethod
    def from_settings(cls, settings: Settings, *, auth: LabelStudioAuth | None) -> ImageLoader:
        """The loader the backend uses: Label Studio URL and ``LOCAL_FILES_DOCUMENT_ROOT`` from settings."""
        return cls(
            label_studio_url=settings.label_studio_url,
            auth=auth,
            document_root=settings.local_files_document_root,
        )

    def load(self, url: str, *, task: str = "?") -> LoadedImage:
        """Load one image with the resolver of its URL scheme.

        Args:
            url: the task's image reference.
            task: the task's id, for error messages.

        Raises:
            ImageLoadError: unknown scheme, file or HTTP error, or undecodable bytes.
        """
        where = f"task {task}: image {_short(url)!r}"
        resolver = RESOLVERS.get(urlparse(url).scheme.lower())
        if resolver is None:
            raise ImageLoadError(f"{where}: expected an http(s) URL, a Label Studio path or a data: URI")
        try:
            return resolver(self, url, where)
        except ImageLoadError:
            raise
        except requests.RequestException as exc:
            raise ImageLoadError(
                f"{where}: cannot be fetched ({type(exc).__name__})", cause="unreachable"
            ) from None
        except OSError as exc:
            raise ImageLoadError(
                f"{where}: cannot be read ({exc.strerror or type(exc).__name__})", cause="missing"
            ) from None

    def get(self, url: str, where: str) -> bytes:
        """GET ``url``; the API key is sent only to ``LABEL_STUDIO_URL``'s host. Raises on non-200."""
        parsed = urlparse(url)
        ls = urlparse(self.label_studio_url) if self.label_studio_url else None
        on_ls = ls is not None and (parsed.scheme, parsed.netloc) == (ls.scheme, ls.netloc)
        if on_ls and self.auth is not None:
            resp = self.auth.get(url, timeout=self.timeout)
        else:
            resp = requests.get(url, timeout=self.timeout)
        if resp.status_code != 200:
            raise ImageLoadError(f"{where}: HTTP {resp.status_code}", cause="http_status")
        if len(resp.content) > _MAX_BYTES:
            raise ImageLoadError(f"{where}: larger than {_MAX_BYTES // 2**20} MiB", cause="too_large")
        return bytes(resp.content)


Resolver = Callable[[ImageLoader, str, str], LoadedImage]
"""``resolver(loader, url, where) -> LoadedImage``; failures raise :class:`ImageLoadError` starting with
``where`` (``requests`` and ``OSError`` failures are turned into one by :meth:`ImageLoader.load`)."""


def _data_uri(loader: ImageLoader, url: str, where: str) -> LoadedImage:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageLoadError(f"{where}: only base64 data URIs are supported")
    try:
        return LoadedImage(_decode(base64.b64decode(payload, validate=True), where))
    except binascii.Error:
        raise ImageLoadError(f"{where}: invalid base64 payload", cause="undecodable") from None


def _local_file(loader: ImageLoader, url: str, where: str) -> LoadedImage | None:
    """A ``/data/local-files/?d=...`` reference read from the document root, when one is configured."""
    path = loader.local_path(url)
    if path is None:
        return None
    if not path.is_file():
        raise ImageLoadError(
            f"{where}: no such file under LOCAL_FILES_DOCUMENT_ROOT ({path})", cause="missing"
        )
    return LoadedImage(_decode(path.read_bytes(), where), path=path)


def _http(loader: ImageLoader, url: str, where: str) -> LoadedImage:
    local = _local_file(loader, url, where)
    return local if local is not None else LoadedImage(_decode(loader.get(url, where), where))


def _label_studio_path(loader: ImageLoader, url: str, where: str) -> LoadedImage:
    """``/data/local-files/?d=...`` from the document root when set; other paths from Label Studio."""
    if not url.startswith("/"):
        raise ImageLoadError(f"{where}: expected an http(s) URL, a Label Studio path or a data: URI")
    local = _local_file(loader, url, where)
    if local is not None:
        return local
    if loader.label_studio_url is None or loader.auth is None:
        raise ImageLoadError(
            f"{where}: a Label Studio path, but LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY are not set"
            + (" (or set LOCAL_FILES_DOCUMENT_ROOT)" if url.startswith("/data/local-files") else "")
        )
    return LoadedImage(_decode(loader.get(loader.label_studio_url + url, where), where))


RESOLVERS: dict[str, Resolver] = {
    "data": _data_uri,
    "http": _http,
    "https": _http,
    "": _label_studio_path,
}
"""URL scheme (lower case; ``""`` for a path) -> the resolver that loads it."""


def _decode(data: bytes, where: str) -> np.ndarray:
    """Bytes -> uint8 (H, W, 3) RGB through OpenCV.

    Not through ``PIL.Image.open``: once ultralytics is imported it patches that function to pip-install a
    HEIF plugin whenever Pillow cannot identify a file, which a corrupt upload must not trigger.
    """
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        raise ImageLoadError(f"{where}: not a readable image ({len(data)} bytes)", cause="undecodable")
    return np.ascontiguousarray(bgr[:, :, ::-1])
