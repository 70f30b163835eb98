"""Load task images: Label Studio uploads, Local Files, http(s) URLs and inline ``data:`` URIs.

* ``/data/upload/...`` and other Label-Studio-relative paths: fetched from ``LABEL_STUDIO_URL`` with the
  API key.
* ``/data/local-files/?d=<rel>``: read from ``LOCAL_FILES_DOCUMENT_ROOT/<rel>`` when that is set (no HTTP,
  path traversal outside the root refused), else fetched from Label Studio like an upload.
* ``http(s)://...``: the key is sent only when the URL is on ``LABEL_STUDIO_URL``'s host, never elsewhere.
* ``data:image/...;base64,...``: decoded inline.

Every failure raises :class:`ImageLoadError` naming the task and the URL (never the key).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import requests

from backend.lsclient import LabelStudioAuth

logger = logging.getLogger(__name__)

__all__ = ["ImageFailure", "ImageLoadError", "ImageLoader", "LoadedImage"]

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

    def load(self, url: str, *, task: str = "?") -> LoadedImage:
        """Load one image.

        Args:
            url: the task's image reference.
            task: the task's id, for error messages.

        Raises:
            ImageLoadError: unknown scheme, file or HTTP error, or undecodable bytes.
        """
        where = f"task {task}: image {_short(url)!r}"
        try:
            if url.startswith("data:"):
                header, _, payload = url.partition(",")
                if ";base64" not in header:
                    raise ImageLoadError(f"{where}: only base64 data URIs are supported")
                try:
                    return LoadedImage(_decode(base64.b64decode(payload, validate=True), where))
                except binascii.Error:
                    raise ImageLoadError(f"{where}: invalid base64 payload", cause="undecodable") from None
            path = self.local_path(url)
            if path is not None:
                if not path.is_file():
                    raise ImageLoadError(
                        f"{where}: no such file under LOCAL_FILES_DOCUMENT_ROOT ({path})", cause="missing"
                    )
                return LoadedImage(_decode(path.read_bytes(), where), path=path)
            return LoadedImage(_decode(self._fetch(url, where), where))
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

    def _fetch(self, url: str, where: str) -> bytes:
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https"):
            ls = urlparse(self.label_studio_url) if self.label_studio_url else None
            on_ls = ls is not None and (parsed.scheme, parsed.netloc) == (ls.scheme, ls.netloc)
            if on_ls and self.auth is not None:
                resp = self.auth.get(url, timeout=self.timeout)
            else:
                resp = requests.get(url, timeout=self.timeout)
        elif url.startswith("/"):
            if self.label_studio_url is None or self.auth is None:
                raise ImageLoadError(
                    f"{where}: a Label Studio path, but LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY are not set"
                    + (" (or set LOCAL_FILES_DOCUMENT_ROOT)" if url.startswith("/data/local-files") else "")
                )
            resp = self.auth.get(self.label_studio_url + url, timeout=self.timeout)
        else:
            raise ImageLoadError(f"{where}: expected an http(s) URL, a Label Studio path or a data: URI")
        if resp.status_code != 200:
            raise ImageLoadError(f"{where}: HTTP {resp.status_code}", cause="http_status")
        if len(resp.content) > _MAX_BYTES:
            raise ImageLoadError(f"{where}: larger than {_MAX_BYTES // 2**20} MiB", cause="too_large")
        return resp.content


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
