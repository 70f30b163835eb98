"""Load task images: Label Studio uploads, Local Files, cloud storages, http(s) URLs and ``data:`` URIs.

* ``/data/upload/...`` and other Label-Studio-relative paths: fetched from ``LABEL_STUDIO_URL`` with the
  API key.
* ``/data/local-files/?d=<rel>``: read from ``LOCAL_FILES_DOCUMENT_ROOT/<rel>`` when that is set (no HTTP,
  path traversal outside the root refused), else fetched from Label Studio like an upload.
* ``http(s)://...``: the key is sent only when the URL is on ``LABEL_STUDIO_URL``'s host, never elsewhere.
* ``data:image/...;base64,...``: decoded inline.
* ``s3://``, ``gs://``, ``azure-blob://`` URIs and Label Studio's storage proxy URLs (``/tasks/<id>/resolve/
  ?fileuri=...``, ``/storage-data/...``): through Label Studio's resolve endpoints, never with cloud
  credentials, and cached on disk (see :mod:`backend.storage`).

Every failure raises :class:`ImageLoadError` naming the task and the URL (never the key).

Resolvers return the decoded pixels at the file's own depth (:func:`_decode`); :meth:`ImageLoader.load`
maps them to uint8 RGB with ``formats.images.normalize_image`` under the loader's ``IMAGE_NORMALIZE`` /
``IMAGE_PERCENTILES`` (or the normalisation a model version was trained with), the same function the training
dataset goes through.

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
from urllib.parse import parse_qs, urlparse

import numpy as np
import requests

from backend.lsclient import LabelStudioAuth
from backend.storage import CLOUD_SCHEMES, ImageCache, LabelStudioFiles, StorageError, is_label_studio_proxy
from formats.images import ImageNormalization, decode_image, normalize_image

if TYPE_CHECKING:
    from backend.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "RESOLVERS",
    "SOURCE_FAILURES",
    "ImageFailure",
    "ImageLoadError",
    "ImageLoader",
    "LoadedImage",
    "Resolver",
]

_MAX_BYTES = 200 * 1024 * 1024


ImageFailure = Literal["reference", "missing", "unreachable", "http_status", "too_large", "undecodable"]
"""Why an image failed to load (the ``cause`` label of the image-load-failure metric):

``reference`` (a malformed reference, not a URL this loader understands, or one outside the document
root), ``missing`` (no such local file), ``unreachable`` (network error or timeout), ``http_status`` (a
non-200 answer), ``too_large``, ``undecodable`` (bytes that are not an image, or a bad data URI payload).
"""

SOURCE_FAILURES: frozenset[ImageFailure] = frozenset({"unreachable", "http_status"})
"""The failures of a service (the network, the image's host), not of the task's reference or file: running
again may help. The commands that load task images (``backend.bootstrap``, ``backend.export``) exit 1 on these
and 2 on the others, which are the user's to fix (see :attr:`ImageLoadError.source_failed`)."""


class ImageLoadError(ValueError):
    """A task's image could not be loaded; the message names the task and the URL.

    Attributes:
        cause: the kind of failure (see :data:`ImageFailure`).
    """

    def __init__(self, message: str, *, cause: ImageFailure = "reference") -> None:
        super().__init__(message)
        self.cause: ImageFailure = cause

    @property
    def source_failed(self) -> bool:
        """Whether a service failed (``cause`` in :data:`SOURCE_FAILURES`: a network failure, an HTTP error),
        so that a retry may help; False when the reference or the file is the user's to fix."""
        return self.cause in SOURCE_FAILURES


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image.

    Attributes:
        pixels: uint8 (H, W, 3) RGB from :meth:`ImageLoader.load`; from a resolver, the decoded pixels at
            their own depth (see ``formats.images.decode_image``), normalised by ``load``.
        path: the file on disk when the image came from one (training links it instead of copying).
        data: the image file's bytes as fetched (HTTP, Label Studio, cloud storage, data URI), so the export
            can write them unchanged; None when the image came from ``path``.
    """

    pixels: np.ndarray
    path: Path | None = None
    data: bytes | None = None

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
        normalization: how decoded pixels become uint8 RGB when ``load`` is not given one.
        cache: disk cache for images fetched from cloud storages through Label Studio (``None``: none).
    """

    def __init__(
        self,
        *,
        label_studio_url: str | None = None,
        auth: LabelStudioAuth | None = None,
        document_root: Path | None = None,
        timeout: float = 30.0,
        normalization: ImageNormalization | None = None,
        cache: ImageCache | None = None,
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.auth = auth
        self.document_root = document_root.resolve() if document_root is not None else None
        self.timeout = timeout
        self.normalization = normalization if normalization is not None else ImageNormalization()
        self.storage = (
            LabelStudioFiles(self.label_studio_url, auth, cache=cache, timeout=timeout, max_bytes=_MAX_BYTES)
            if self.label_studio_url is not None and auth is not None
            else None
        )

    def local_path(self, url: str, *, where: str | None = None) -> Path | None:
        """The file a ``/data/local-files/?d=...`` URL names under the document root, if configured.

        ``d`` is percent-decoded once, as Label Studio serves it (``request.GET["d"]``): the file
        ``scan%20a.png`` is ``?d=scan%2520a.png``.

        Args:
            url: the image reference.
            where: how errors name the image (default: the URL).

        Raises:
            ImageLoadError: (cause ``reference``) a malformed URL or path, or one outside the document root.
        """
        where = where if where is not None else _short(url)
        try:
            parsed = urlparse(url)
            if self.document_root is None or not parsed.path.startswith("/data/local-files"):
                return None
            rel = parse_qs(parsed.query).get("d", [""])[0]  # percent-decoded here, and only here
            if not rel:
                return None
            path = (self.document_root / rel.lstrip("/")).resolve()
        except ValueError as exc:  # "Invalid IPv6 URL", "embedded null byte" ...
            raise ImageLoadError(f"{where}: not a valid Local Files reference ({exc})") from None
        if not path.is_relative_to(self.document_root):
            raise ImageLoadError(f"{where}: resolves outside LOCAL_FILES_DOCUMENT_ROOT")
        return path

    @classmethod
    def from_settings(cls, settings: Settings, *, auth: LabelStudioAuth | None) -> ImageLoader:
        """The loader the backend uses: Label Studio URL, ``LOCAL_FILES_DOCUMENT_ROOT``, the image cache."""
        return cls(
            label_studio_url=settings.label_studio_url,
            auth=auth,
            document_root=settings.local_files_document_root,
            normalization=settings.image_normalization,
            cache=(
                ImageCache(settings.image_cache_dir, max_bytes=settings.image_cache_mb * 2**20)
                if settings.image_cache_mb > 0
                else None
            ),
        )

    def load(
        self, url: str, *, task: str = "?", normalization: ImageNormalization | None = None
    ) -> LoadedImage:
        """Load one image as uint8 RGB: :meth:`decode`, then ``formats.images.normalize_image``.

        Args:
            url: the task's image reference.
            task: the task's id, for error messages.
            normalization: how the decoded pixels become uint8 (default: the loader's); prediction passes
                the one its model version was trained with.

        Raises:
            ImageLoadError: a malformed reference, an unknown scheme, a file or HTTP error, or undecodable
                bytes.
        """
        decoded = self.decode(url, task=task)
        pixels = normalize_image(decoded.pixels, normalization or self.normalization)
        return LoadedImage(pixels, path=decoded.path, data=decoded.data)

    def decode(self, url: str, *, task: str = "?") -> LoadedImage:
        """Load one image with the resolver of its URL scheme, at the file's own depth (not normalised).

        Args:
            url: the task's image reference.
            task: the task's id, for error messages.

        Raises:
            ImageLoadError: a malformed reference, an unknown scheme, a file or HTTP error, or undecodable
                bytes.
        """
        where = f"task {task}: image {_short(url)!r}"
        try:
            scheme = urlparse(url).scheme.lower()
        except ValueError as exc:  # e.g. "Invalid IPv6 URL" for http://[host/a.png
            raise ImageLoadError(f"{where}: not a valid URL ({exc})") from None
        resolver = RESOLVERS.get(scheme)
        if resolver is None:
            raise ImageLoadError(
                f"{where}: expected an http(s) URL, a Label Studio path, a cloud storage URI "
                f"({', '.join(f'{s}://' for s in sorted(CLOUD_SCHEMES))}) or a data: URI"
            )
        try:
            return resolver(self, url, where, task)
        except ImageLoadError:
            raise
        except StorageError as exc:
            raise ImageLoadError(str(exc), cause=exc.cause) from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            raise ImageLoadError(f"{where}: not a valid URL ({_short(str(exc))})") from None
        except requests.RequestException as exc:
            raise ImageLoadError(
                f"{where}: cannot be fetched ({type(exc).__name__})", cause="unreachable"
            ) from None
        except OSError as exc:
            raise ImageLoadError(
                f"{where}: cannot be read ({exc.strerror or type(exc).__name__})", cause="missing"
            ) from None
        except ValueError as exc:  # a malformed part of the reference (a bad port, a NUL in a path ...)
            raise ImageLoadError(f"{where}: not a valid image reference ({exc})") from None

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


Resolver = Callable[[ImageLoader, str, str, str], LoadedImage]
"""``resolver(loader, url, where, task) -> LoadedImage`` (``task``: the task's id, for sources that resolve
per task); failures raise :class:`ImageLoadError` starting with ``where`` (``requests``, ``OSError``,
:class:`~backend.storage.StorageError` and other ``ValueError`` failures are turned into one by
:meth:`ImageLoader.decode`)."""


def _data_uri(loader: ImageLoader, url: str, where: str, task: str) -> LoadedImage:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageLoadError(f"{where}: only base64 data URIs are supported")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise ImageLoadError(f"{where}: invalid base64 payload", cause="undecodable") from None
    return _fetched(data, where)


def _local_file(loader: ImageLoader, url: str, where: str) -> LoadedImage | None:
    """A ``/data/local-files/?d=...`` reference read from the document root, when one is configured."""
    path = loader.local_path(url, where=where)
    if path is None:
        return None
    if not path.is_file():
        raise ImageLoadError(
            f"{where}: no such file under LOCAL_FILES_DOCUMENT_ROOT ({path})", cause="missing"
        )
    return LoadedImage(_decode(path.read_bytes(), where), path=path)


def _http(loader: ImageLoader, url: str, where: str, task: str) -> LoadedImage:
    if (
        loader.storage is not None
        and loader.storage.on_label_studio(url)
        and is_label_studio_proxy(urlparse(url).path)
    ):
        return _fetched(loader.storage.fetch_proxied(url, where=where), where)
    local = _local_file(loader, url, where)
    return local if local is not None else _fetched(loader.get(url, where), where)


def _label_studio_path(loader: ImageLoader, url: str, where: str, task: str) -> LoadedImage:
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
    if loader.storage is not None and is_label_studio_proxy(urlparse(url).path):
        return _fetched(loader.storage.fetch_proxied(url, where=where), where)
    return _fetched(loader.get(loader.label_studio_url + url, where), where)


def _cloud_uri(loader: ImageLoader, url: str, where: str, task: str) -> LoadedImage:
    """A cloud storage URI, resolved by Label Studio for the task (see :mod:`backend.storage`)."""
    if loader.storage is None:
        raise ImageLoadError(
            f"{where}: a cloud storage URI is fetched through Label Studio: set LABEL_STUDIO_URL and "
            "LABEL_STUDIO_API_KEY (the backend holds no cloud credentials)"
        )
    return _fetched(loader.storage.fetch_cloud(url, task=task, where=where), where)


RESOLVERS: dict[str, Resolver] = {
    "data": _data_uri,
    "http": _http,
    "https": _http,
    "": _label_studio_path,
    **dict.fromkeys(sorted(CLOUD_SCHEMES), _cloud_uri),
}
"""URL scheme (lower case; ``""`` for a path) -> the resolver that loads it."""


def _fetched(data: bytes, where: str) -> LoadedImage:
    """Fetched bytes -> the image, decoded at its own depth, keeping the bytes."""
    return LoadedImage(_decode(data, where), data=data)


def _decode(data: bytes, where: str) -> np.ndarray:
    """Bytes -> pixels at the file's own depth (``formats.images.decode_image``); errors name ``where``."""
    try:
        return decode_image(data)
    except ValueError as exc:
        raise ImageLoadError(f"{where}: {exc}", cause="undecodable") from None
