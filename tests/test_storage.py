"""Cloud storage images through Label Studio's resolve endpoints, and the bounded image cache.

The HTTP behaviour (key only to Label Studio's origin, redirects followed without it, presigned URLs kept out
of messages) is checked against two local HTTP servers on different ports: one answers like Label Studio's
resolve endpoint, one like a storage host. tests/test_e2e_storage.py runs the same paths against a real
Label Studio 1.23.2 and a local S3 server.
"""

from __future__ import annotations

import base64
import http.server
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from backend_helpers import disc_image, png_bytes

from backend.images import ImageLoader, ImageLoadError
from backend.lsclient import LabelStudioAuth
from backend.storage import ImageCache, LabelStudioFiles, StorageError, is_label_studio_proxy

TOKEN = "0123456789abcdef0123456789abcdef01234567"
PNG = png_bytes(disc_image(32, [(16, 16, 5)]))
SECRET_QUERY = "X-Amz-Signature=not-to-be-shown"


@dataclass
class _Server:
    """A local HTTP server that records (path, Authorization header) of every GET."""

    routes: dict[str, tuple[int, dict[str, str], bytes]]
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.seen.append((handler.path, handler.headers.get("Authorization")))
        status, headers, body = self.routes.get(urlparse(handler.path).path, (404, {}, b"no such route"))
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    """("Label Studio", "storage host") on two ports of 127.0.0.1; routes are filled in by each test."""
    started = []
    for _ in range(2):
        server = _Server(routes={})

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self, server: _Server = server) -> None:
                server.answer(self)

            def log_message(self, *args: object) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append((server, httpd))
    yield started[0][0], started[1][0]
    for _, httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _loader(ls: _Server, cache_dir: Path | None = None, max_bytes: int = 10**6) -> ImageLoader:
    cache = ImageCache(cache_dir, max_bytes=max_bytes) if cache_dir is not None else None
    return ImageLoader(label_studio_url=ls.url, auth=LabelStudioAuth(ls.url, TOKEN), cache=cache)


def _fileuri(uri: str) -> str:
    return base64.urlsafe_b64encode(uri.encode()).decode()


def test_presigned_redirect_is_followed_without_the_key_and_cached(servers, tmp_path):
    ls, storage = servers
    ls.routes["/tasks/7/resolve/"] = (303, {"Location": f"{storage.url}/bucket/a.png?{SECRET_QUERY}"}, b"")
    storage.routes["/bucket/a.png"] = (200, {"Content-Type": "image/png"}, PNG)
    loader = _loader(ls, tmp_path / "cache")

    image = loader.load("s3://bucket/a.png", task="7")
    assert image.pixels.shape == (32, 32, 3) and image.path is None  # training copies it to its job folder
    # Label Studio got the key and the task-scoped resolve request; the storage host got no Authorization.
    assert ls.seen == [(f"/tasks/7/resolve/?fileuri={_fileuri('s3://bucket/a.png')}", f"Token {TOKEN}")]
    assert storage.seen == [(f"/bucket/a.png?{SECRET_QUERY}", None)]
    # The same object under Label Studio's proxy URL (as the task API hands it out) comes from the cache.
    again = loader.load(f"/tasks/7/resolve/?fileuri={_fileuri('s3://bucket/a.png')}", task="7")
    assert np.array_equal(again.pixels, image.pixels)
    assert len(ls.seen) == 1 and len(storage.seen) == 1


def test_proxied_bytes_and_absolute_proxy_urls_on_label_studio(servers):
    ls, _ = servers
    ls.routes["/tasks/3/resolve/"] = (200, {"Content-Type": "image/png"}, PNG)
    ls.routes["/storage-data/uploaded/"] = (200, {"Content-Type": "image/png"}, PNG)
    loader = _loader(ls)  # no cache: every load is a request
    assert loader.load("gs://b/x.png", task="3").width == 32
    assert loader.load(f"{ls.url}/tasks/3/resolve/?fileuri={_fileuri('gs://b/x.png')}", task="3").width == 32
    assert loader.load("/storage-data/uploaded/?filepath=upload/1/x.png", task="3").width == 32
    assert [auth for _, auth in ls.seen] == [f"Token {TOKEN}"] * 3


@pytest.mark.parametrize(
    ("route", "url", "task", "message"),
    [
        (
            (404, {}, b""),
            "s3://bucket/missing.png",
            "5",
            r"task 5: image 's3://bucket/missing.png': HTTP 404 from Label Studio \(no storage of the task's "
            r"project covers this URI",
        ),
        ((403, {}, b""), "azure-blob://c/a.png", "5", r"HTTP 403 from Label Studio \(check LABEL_STUDIO_API"),
        ((200, {}, b"<html>login</html>"), "s3://bucket/a.png", "5", "not a readable image"),
        ((200, {}, b""), "s3://bucket/a.png", "#2", "for its task, but the task has no id"),
    ],
)
def test_label_studio_errors_name_the_task_and_the_cause(servers, route, url, task, message):
    ls, _ = servers
    ls.routes["/tasks/5/resolve/"] = route
    with pytest.raises(ImageLoadError, match=message):
        _loader(ls).load(url, task=task)


def test_a_refused_presigned_url_is_not_shown(servers):
    ls, storage = servers
    ls.routes["/tasks/1/resolve/"] = (303, {"Location": f"{storage.url}/bucket/a.png?{SECRET_QUERY}"}, b"")
    storage.routes["/bucket/a.png"] = (403, {}, b"expired")
    with pytest.raises(ImageLoadError, match=r"HTTP 403 from the storage host 127\.0\.0\.1:\d+") as info:
        _loader(ls).load("s3://bucket/a.png", task="1")
    assert info.value.cause == "http_status"
    assert "Signature" not in str(info.value) and TOKEN not in str(info.value)


def test_the_key_is_never_sent_off_label_studio(servers):
    ls, storage = servers
    storage.routes["/tasks/1/resolve/"] = (200, {}, PNG)
    files = LabelStudioFiles(ls.url, LabelStudioAuth(ls.url, TOKEN))
    with pytest.raises(ValueError, match="not on LABEL_STUDIO_URL's origin; the key is not sent there"):
        files.fetch_proxied(f"{storage.url}/tasks/1/resolve/?fileuri=x", where="w")
    # An absolute proxy-looking URL on another host is an ordinary http(s) image: fetched without the key.
    assert _loader(ls).load(f"{storage.url}/tasks/1/resolve/?fileuri=x", task="1").width == 32
    assert storage.seen == [("/tasks/1/resolve/?fileuri=x", None)]


def test_redirect_loops_unpresignable_and_oversized_objects_fail(servers):
    ls, _ = servers
    ls.routes["/tasks/1/resolve/"] = (302, {"Location": "/tasks/1/resolve/?fileuri=again"}, b"")
    with pytest.raises(ImageLoadError, match="more than 5 redirects"):
        _loader(ls).load("s3://b/a.png", task="1")
    ls.routes["/tasks/3/resolve/"] = (303, {"Location": "s3://b/a.png"}, b"")  # LS could not presign it
    with pytest.raises(ImageLoadError, match="Label Studio could not presign the object") as info:
        _loader(ls).load("s3://b/a.png", task="3")
    assert info.value.cause == "reference"
    ls.routes["/tasks/2/resolve/"] = (200, {}, PNG)
    small = LabelStudioFiles(ls.url, LabelStudioAuth(ls.url, TOKEN), max_bytes=len(PNG) - 1)
    with pytest.raises(StorageError, match="larger than 0 MiB") as info:
        small.fetch_cloud("s3://b/a.png", task="2", where="w")
    assert info.value.cause == "too_large"


def test_without_label_studio_a_cloud_uri_says_what_to_set():
    with pytest.raises(ImageLoadError, match="set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        ImageLoader().load("s3://bucket/a.png", task="1")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tasks/12/resolve/", True),
        ("/tasks/12/presign/", True),
        ("/projects/3/resolve/", True),
        ("/storage-data/uploaded/", True),
        ("/tasks/x/resolve/", False),
        ("/data/upload/1/a.png", False),
        ("/api/tasks/12/resolve/", False),
    ],
)
def test_is_label_studio_proxy(path, expected):
    assert is_label_studio_proxy(path) is expected


# ---------------------------------------------------------------- the cache


def test_cache_evicts_least_recently_used_first(tmp_path):
    cache = ImageCache(tmp_path, max_bytes=100)
    for name in "abcd":
        cache.put(name, bytes(30))
    assert cache.get("a") is None and cache.total_bytes() == 90  # a was the oldest
    assert cache.get("b") == bytes(30)  # b is now the most recently used
    cache.put("e", bytes(30))
    assert cache.get("c") is None and cache.get("b") is not None
    cache.put("big", bytes(101))  # larger than the whole cache: not stored, nothing evicted for it
    assert cache.get("big") is None and cache.total_bytes() == 90
    with pytest.raises(ValueError, match="max_bytes: expected a positive number of bytes, got 0"):
        ImageCache(tmp_path, max_bytes=0)


def test_cache_removes_temporary_files_of_dead_writers(tmp_path):
    stale, fresh = tmp_path / ".tmp-stale", tmp_path / ".tmp-fresh"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    ImageCache(tmp_path, max_bytes=10).put("k", b"v")
    assert not stale.exists() and fresh.exists()


def _writer(directory: str, worker: int, n: int) -> None:
    cache = ImageCache(Path(directory), max_bytes=2000)
    rng = np.random.default_rng(worker)
    for i in range(n):
        key = f"k{int(rng.integers(0, 40))}"
        data = cache.get(key)
        if data is not None:  # a reader never sees a partial entry: every entry is one repeated byte
            assert len(data) == 100 and data == data[:1] * 100, (key, len(data))
        cache.put(key, bytes([i % 251]) * 100)


def test_cache_stays_bounded_and_whole_under_concurrent_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    _writer(str(tmp_path), 99, 150)  # and this process alongside
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = ImageCache(tmp_path, max_bytes=2000)
    assert cache.total_bytes() <= 2000
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_image_cache_settings(tmp_path):
    from backend.settings import Settings, SettingsError

    env = {
        "MODEL_DIR": str(tmp_path),
        "LABEL_STUDIO_URL": "http://127.0.0.1:8080",
        "LABEL_STUDIO_API_KEY": TOKEN,
    }
    settings = Settings.from_env(env)
    loader = ImageLoader.from_settings(settings, auth=LabelStudioAuth(str(settings.label_studio_url), TOKEN))
    assert loader.storage is not None and loader.storage.cache is not None
    assert loader.storage.cache.directory == tmp_path / "work" / "image-cache"
    assert loader.storage.cache.max_bytes == 2048 * 2**20
    off = Settings.from_env({**env, "IMAGE_CACHE_MB": "0", "WORK_DIR": str(tmp_path / "w")})
    loader = ImageLoader.from_settings(off, auth=LabelStudioAuth(str(off.label_studio_url), TOKEN))
    assert loader.storage is not None and loader.storage.cache is None
    with pytest.raises(SettingsError, match="IMAGE_CACHE_MB: expected an integer >= 0, got -1"):
        Settings.from_env({**env, "IMAGE_CACHE_MB": "-1"})
