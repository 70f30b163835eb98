"""Talking to Label Studio: token handling for raw HTTP, the SDK client, and the task write-back queue.

Label Studio 1.2x has two kinds of API key: a legacy token (40 hex chars, header ``Token <key>``) and a
personal access token (a JWT refresh token): raw HTTP must first exchange it at ``POST /api/token/refresh/``
for a short-lived access token sent as ``Bearer <access>``. :class:`LabelStudioAuth` does either, and the
key never appears in a log line or an error message.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

import requests

logger = logging.getLogger(__name__)

__all__ = ["LabelStudioAuth", "TaskWriteBack", "make_sdk_client", "merge_task_data"]


def _looks_like_jwt(key: str) -> bool:
    return key.count(".") == 2 and key.startswith("eyJ")


class LabelStudioAuth:
    """Authorization headers for Label Studio, for both legacy tokens and personal access tokens."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._timeout = timeout
        self._access: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LabelStudioAuth({self.base_url!r}, api_key=<hidden>)"

    def headers(self, *, refresh: bool = False) -> dict[str, str]:
        """The ``Authorization`` header; ``refresh`` forces a new access token for a PAT."""
        if not _looks_like_jwt(self._key):
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if self._access is None or refresh:
                resp = requests.post(
                    f"{self.base_url}/api/token/refresh/", json={"refresh": self._key}, timeout=self._timeout
                )
                if resp.status_code != 200:
                    raise PermissionError(
                        f"Label Studio refused the personal access token (HTTP {resp.status_code} from "
                        "/api/token/refresh/): check LABEL_STUDIO_API_KEY"
                    )
                self._access = str(resp.json()["access"])
            return {"Authorization": f"Bearer {self._access}"}

    def get(self, url: str, *, timeout: float | None = None) -> requests.Response:
        """GET with authorization, refreshing a PAT's access token once on 401."""
        resp = requests.get(url, headers=self.headers(), timeout=timeout or self._timeout)
        if resp.status_code == 401 and _looks_like_jwt(self._key):
            resp = requests.get(url, headers=self.headers(refresh=True), timeout=timeout or self._timeout)
        return resp


def make_sdk_client(base_url: str, api_key: str) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client (it handles both token kinds itself)."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=base_url, api_key=api_key, timeout=60)


LEAN_UPDATE = {"review": "1"}
"""Query of each task update. Label Studio 1.23 loads the task it updates through its Data Manager query,
with every computed column unless ``review`` is set (``tasks/api.py``, ``TaskAPI.get_queryset``: then only
the annotators and reviewed columns); the update itself is the same. Measured here: 54 instead of 72 ms of
Label Studio's CPU per update. A server that ignores the parameter does the full query, nothing else."""


def merge_task_data(client: Any, task_id: int, fields: Mapping[str, Any]) -> None:
    """Merge ``fields`` into a task's ``data`` in Label Studio: read the task, update, write the whole data.

    Label Studio's task update replaces ``data`` as a whole, so writing only the new fields would delete the
    image reference and the crowd labels.

    Args:
        client: a ``label_studio_sdk.LabelStudio`` client (see :func:`make_sdk_client`).
        task_id: the task.
        fields: the keys to set (e.g. ``TaskFields.as_data()``).
    """
    # resolve_uri=false: read the stored references (``s3://...``), not the per-task proxy URLs Label Studio
    # hands out by default, which would otherwise be written back in their place.
    task = client.tasks.get(
        id=task_id, request_options={"additional_query_parameters": {"resolve_uri": "false"}}
    )
    data = dict(getattr(task, "data", None) or {})
    data.update(fields)
    client.tasks.update(id=task_id, data=data, request_options={"additional_query_parameters": LEAN_UPDATE})


class TaskWriteBack:
    """A background thread that merges fields into task data in Label Studio, never blocking /predict.

    Each update goes through :func:`merge_task_data`. Failures are logged and counted; they never reach the
    caller.

    Args:
        client_factory: builds the SDK client lazily, in the worker thread.
        maxsize: queued updates beyond this are dropped (and logged), so a dead Label Studio cannot grow
            memory without bound.
    """

    def __init__(self, client_factory: Callable[[], Any], *, maxsize: int = 10000) -> None:
        self._factory = client_factory
        self._client: Any = None
        self._queue: queue.Queue[tuple[int, dict[str, Any]] | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.written = 0
        self.failed = 0

    def submit(self, task_id: int, fields: Mapping[str, Any]) -> None:
        """Queue ``fields`` to be merged into task ``task_id``'s data."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ls-writeback", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((int(task_id), dict(fields)))
        except queue.Full:
            self.failed += 1
            logger.warning("write-back queue full: dropped the update of task %s", task_id)

    def join(self, timeout: float = 30.0) -> bool:
        """Wait until every queued update was tried; True when the queue drained in time."""
        done = threading.Event()

        def _wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=_wait, daemon=True).start()
        return done.wait(timeout)

    def write_now(self, task_id: int, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into the task's data synchronously (used by the rescoring after training)."""
        if self._client is None:
            self._client = self._factory()
        merge_task_data(self._client, task_id, fields)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                task_id, fields = item
                try:
                    self.write_now(task_id, fields)
                    self.written += 1
                except Exception as exc:  # any SDK/HTTP failure: log, count, carry on
                    self.failed += 1
                    logger.warning("write-back of task %s failed: %s", task_id, type(exc).__name__)
                    logger.debug("write-back of task %s failed", task_id, exc_info=True)
            finally:
                self._queue.task_done()
