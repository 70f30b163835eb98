"""A real Label Studio 1.23 server and the ML backend as managed child processes, plus project helpers.

Used by ``python -m demo`` and the end-to-end tests. Each child runs in its own process group so that
stopping it (SIGTERM to the group, then SIGKILL after a grace period) also ends the workers it spawned.

Label Studio facts these helpers rely on (checked against 1.23.2):

* the first start creates the user and its legacy API token from ``LABEL_STUDIO_USERNAME/PASSWORD/
  USER_TOKEN``; later starts ignore them, so the credentials are kept in ``<data_dir>/credentials.json``;
* connecting an ML backend makes Label Studio register a webhook ``<backend>/webhook`` for *all* actions,
  so ``ANNOTATION_CREATED`` reaches the backend without a separate ``POST /api/webhooks``;
* ``PATCH /api/tasks/{id} {"data": ...}`` replaces the whole ``data`` dict (it does not merge);
* the Data Manager orders by a task data field with ``query={"ordering": ["-tasks:data.priority"]}``;
* the "Prediction score" column averages only predictions whose ``model_version`` equals the project's
  ``model_version``, which Label Studio sets to the ML backend's *title* on connection: it stays empty for
  backend predictions, so the ``priority`` data column is what sorts "most suspicious first".
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

# Project helpers live in the backend (the importer uses them too); re-exported for the demo and tests.
from backend.lsproject import add_local_storage as add_local_storage
from backend.lsproject import create_project as create_project
from backend.lsproject import find_project as find_project
from backend.lsproject import import_tasks as import_tasks

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LS_BIN = REPO / ".venv-ls" / "bin" / "label-studio"
BACKEND_PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_USERNAME = "admin@example.com"
PRIORITY_ORDERING = ("-tasks:data.priority",)
VIEW_TITLE = "Most suspicious first"
NOT_ANNOTATED_FILTER = {
    "filter": "filter:tasks:total_annotations",
    "operator": "equal",
    "type": "Number",
    "value": 0,
}
"""Data Manager filter: tasks without an annotation (Label Studio's *Annotations* column = 0)."""


LOCAL_HOSTS = ("127.0.0.1", "localhost")
"""Hosts the demo and the tests talk to directly, never through an HTTP proxy."""


def bypass_proxies_for_localhost(environ: dict[str, str] | None = None) -> None:
    """Append ``127.0.0.1,localhost`` to ``NO_PROXY`` and ``no_proxy`` (``os.environ`` by default).

    requests and httpx send every request, 127.0.0.1 included, to ``http_proxy``/``HTTP_PROXY`` unless
    ``no_proxy`` names the host; a proxy that cannot reach this machine's loopback makes every health check
    fail. Children inherit the variables, so Label Studio's calls to the backend bypass the proxy too.
    """
    env = os.environ if environ is None else environ
    for name in ("NO_PROXY", "no_proxy"):
        current = [h.strip() for h in env.get(name, "").split(",") if h.strip()]
        missing = [h for h in LOCAL_HOSTS if h not in current]
        if missing:
            env[name] = ",".join([*current, *missing])


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Children run in their own sessions, so a demo killed without cleanup (SIGKILL, a crash) would otherwise
    leave Label Studio and the backend running. None where ``prctl`` is not available.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would send the signal
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class ProcessStartError(RuntimeError):
    """A managed child process exited or did not become healthy in time (message has its log tail)."""


_HANDED_OUT: set[int] = set()
"""Ports ``free_port`` returned in this process."""


def free_port(preferred: int | None = None, *, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A TCP port free on ``host``: ``preferred`` or the next free one after it, else any free port.

    A port is handed out once per process. Label Studio and the backend each pick their port when they are
    created, before either binds, so two picks that both found the same port free would start the backend on
    Label Studio's port (its ``/health`` then answers for the backend, and connecting fails with a 404).

    Args:
        preferred: first port to try (e.g. 8080); None asks the OS for an ephemeral port.
        host: interface to test.
        tries: how many consecutive ports after ``preferred`` to try, and how many ephemeral ones.
    """
    candidates = [] if preferred is None else list(range(preferred, preferred + tries))
    for port in [*candidates, *[0] * tries]:
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # Servers bind with SO_REUSEADDR, so a port in TIME_WAIT after a restart is free for them too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            got = int(sock.getsockname()[1])
        if got not in _HANDED_OUT:
            _HANDED_OUT.add(got)
            return got
    raise OSError(f"preferred={preferred}: no free port found on {host}")


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process in its own process group with a health URL; a context manager.

    Args:
        argv: command line.
        env: full environment of the child.
        health_url: GET URL that answers 200 with ``{"status": "UP"}`` once the child is ready.
        log_path: stdout and stderr of the child go here (appended).
        name: for messages.
        startup_timeout: seconds to wait for health.
        grace: seconds between SIGTERM and SIGKILL when stopping.
        cwd: working directory of the child.

    Attributes:
        on_spawn: called with the child's process group id right after it is spawned (before it is
            healthy), e.g. to record it in the demo's pid file; None does nothing.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        health_url: str,
        log_path: Path,
        name: str,
        startup_timeout: float = 120.0,
        grace: float = 10.0,
        cwd: Path = REPO,
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout: expected > 0 seconds, got {startup_timeout}")
        self.argv = list(argv)
        self.env = dict(env)
        self.health_url = health_url
        self.log_path = Path(log_path)
        self.name = name
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.on_spawn: Callable[[int], None] | None = None

    def start(self) -> None:
        """Start the child and wait until its health URL answers UP."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        logger.info("%s: started pid %d, log %s", self.name, self.proc.pid, self.log_path)
        if self.on_spawn is not None:
            self.on_spawn(self.proc.pid)  # its own session: the pid is the process group id
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {self.proc.returncode} before becoming healthy; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise ProcessStartError(
            f"{self.name}: {self.health_url} not UP after {self.startup_timeout:.0f} s; "
            f"log {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def healthy(self) -> bool:
        """True when the health URL answers 200 with status UP."""
        try:
            resp = requests.get(self.health_url, timeout=3)
            return resp.status_code == 200 and resp.json().get("status") == "UP"
        except (requests.RequestException, ValueError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds; idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                logger.warning("%s: no exit %.0f s after SIGTERM, sending SIGKILL", self.name, self.grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Workers that outlived the leader (same group) get the same treatment.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        logger.info("%s: stopped", self.name)

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


LS_PREFIXES = ("LABEL_STUDIO_", "HEARTEX_")
"""Label Studio's ``get_env(name)`` reads ``LABEL_STUDIO_<name>``, then ``HEARTEX_<name>``, then ``name``."""
LS_BARE_NAMES = ("BASE_DATA_DIR", "DATABASE_NAME", "DJANGO_DB", "HOST")
"""Bare names Label Studio reads that would move its data or its URLs elsewhere; dropped from its
environment (the prefixed forms it prefers are dropped with every other inherited ``LABEL_STUDIO_*``)."""


def label_studio_environ(inherited: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """Label Studio's environment: ``inherited`` without its Label Studio settings, plus ``settings``.

    Each ``settings`` name (``LOCAL_FILES_DOCUMENT_ROOT``) is set as ``LABEL_STUDIO_<name>``, the spelling
    Label Studio reads first, so a user's exported ``LABEL_STUDIO_<name>`` or ``HEARTEX_<name>`` cannot win
    over it: every inherited ``LABEL_STUDIO_*``/``HEARTEX_*`` variable is dropped, and so are the bare
    spellings of the names set and of ``LS_BARE_NAMES``.

    Args:
        inherited: the parent's environment (``os.environ``).
        settings: Label Studio setting name (without prefix) -> value.
    """
    dropped = {*settings, *LS_BARE_NAMES}
    env = {
        key: value
        for key, value in inherited.items()
        if not key.startswith(LS_PREFIXES) and key not in dropped
    }
    env.update({LS_PREFIXES[0] + name: value for name, value in settings.items()})
    return env


class LabelStudioServer(ManagedProcess):
    """Label Studio 1.23 (SQLite, bound to 127.0.0.1) with its data in ``data_dir``.

    The first start creates ``username`` with ``password`` and the legacy API token ``token``; these are
    stored in ``data_dir/credentials.json`` and reused by later starts on the same ``data_dir``.

    Args:
        data_dir: Label Studio's data folder (database, media, config, log ``label-studio.log``).
        port: TCP port; None picks a free one.
        username: login e-mail (needs a top-level domain of 2+ letters to log in through the web form).
        password: login password; None generates one (or reuses the stored one).
        token: 40-hex legacy API token; None generates one (or reuses the stored one).
        document_root: ``LOCAL_FILES_DOCUMENT_ROOT``: images under it are served at
            ``/data/local-files/?d=<relative path>`` once a Local Files storage covers them.
        ls_bin: the ``label-studio`` executable.
        startup_timeout: seconds (first start takes ~35 s for the database setup).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        username: str = DEFAULT_USERNAME,
        password: str | None = None,
        token: str | None = None,
        document_root: Path,
        ls_bin: Path = LS_BIN,
        startup_timeout: float = 180.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.document_root = Path(document_root).resolve()
        if not Path(ls_bin).exists():
            raise FileNotFoundError(f"ls_bin: {ls_bin} does not exist (run `make setup-ls`)")
        if token is not None and (len(token) != 40 or any(c not in "0123456789abcdef" for c in token)):
            raise ValueError("token: expected 40 lowercase hex characters")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = self._credentials(username=username, password=password, token=token)
        self.username, self.password, self.token = creds["username"], creds["password"], creds["token"]
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        settings = {
            "BASE_DATA_DIR": str(self.data_dir),
            "DATABASE_NAME": str(self.data_dir / "label_studio.sqlite3"),
            "USERNAME": self.username,
            "PASSWORD": self.password,
            "USER_TOKEN": self.token,
            "ENABLE_LEGACY_API_TOKEN": "true",
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "DJANGO_DB": "sqlite",
            "DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "COLLECT_ANALYTICS": "false",
        }
        env = {
            **label_studio_environ(os.environ, settings),
            "XDG_CONFIG_HOME": str(self.data_dir / "xdg-config"),
            "XDG_CACHE_HOME": str(self.data_dir / "xdg-cache"),
            "PYTHONUNBUFFERED": "1",
        }
        super().__init__(
            [str(ls_bin), "start", "--no-browser", "--port", str(self.port), "--internal-host", "127.0.0.1"],
            env=env,
            health_url=f"{self.url}/health",
            log_path=self.data_dir / "label-studio.log",
            name=f"Label Studio :{self.port}",
            startup_timeout=startup_timeout,
            grace=15.0,
        )

    def _credentials(self, *, username: str, password: str | None, token: str | None) -> dict[str, str]:
        path = self.data_dir / "credentials.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("username") == username:
                return stored
        creds = {
            "username": username,
            "password": password or secrets.token_urlsafe(12),
            "token": token or secrets.token_hex(20),
        }
        path.write_text(json.dumps(creds))
        path.chmod(0o600)
        return creds

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate with the legacy token."""
        return {"Authorization": f"Token {self.token}"}

    def client(self) -> Any:
        """A ``label_studio_sdk.LabelStudio`` client for this server."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token)

    def __enter__(self) -> LabelStudioServer:
        self.start()
        return self


@functools.cache
def backend_variables() -> frozenset[str]:
    """Every environment variable the backend's settings read (``MODEL_DIR``, ``REDIS_URL``, ``LSM_*``, ...):
    ``backend.settings.VARIABLES``, which its readers are held to."""
    from backend.settings import VARIABLES

    return VARIABLES


def backend_environ(inherited: Mapping[str, str]) -> dict[str, str]:
    """``inherited`` without the variables the backend's settings read (PATH, HOME, locale etc. stay)."""
    dropped = backend_variables()
    return {key: value for key, value in inherited.items() if key not in dropped}


class BackendProcess(ManagedProcess):
    """The ML backend (``python -m backend``) on 127.0.0.1.

    Args:
        port: TCP port; None picks a free one.
        env: the backend's settings (``LABEL_STUDIO_URL``, ``MODEL_DIR``, ...), on top of this process's
            environment less every variable the backend's settings read (``backend_variables``): a
            user's exported ``REDIS_URL`` or ``BASIC_AUTH_USER`` does not reach a backend started here.
        log_path: where its output goes.
        python: interpreter that has the backend's dependencies.
        startup_timeout: seconds.
    """

    def __init__(
        self,
        port: int | None,
        env: Mapping[str, str],
        *,
        log_path: Path,
        python: Path = BACKEND_PYTHON,
        startup_timeout: float = 120.0,
    ) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [str(python), "-m", "backend", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**backend_environ(os.environ), "PYTHONUNBUFFERED": "1", **env},
            health_url=f"{self.url}/health",
            log_path=log_path,
            name=f"backend :{self.port}",
            startup_timeout=startup_timeout,
            grace=10.0,
        )

    def __enter__(self) -> BackendProcess:
        self.start()
        return self


# ---------------------------------------------------------------- project helpers (Label Studio API)


def connect_backend(client: Any, project: int, url: str, *, title: str = "active-label-cleaning") -> int:
    """Connect the ML backend (reused when one with this URL exists); returns the ML backend id.

    Label Studio checks ``/health`` and ``/setup`` while connecting and registers ``<url>/webhook`` for
    all actions on the project.
    """
    for ml in client.ml.list(project=project):
        if (ml.url or "").rstrip("/") == url.rstrip("/"):
            return int(ml.id)
    ml = client.ml.create(url=url, project=project, title=title, is_interactive=False, auth_method="NONE")
    return int(ml.id)


def backend_state(ls: LabelStudioServer, project: int) -> list[dict[str, Any]]:
    """``GET /api/ml?project=N``: each backend's ``state`` (``CO`` connected, ``ER`` error, ...)."""
    resp = requests.get(f"{ls.url}/api/ml", params={"project": project}, headers=ls.headers, timeout=30)
    resp.raise_for_status()
    return list(resp.json())


def retrieve_predictions(
    ls: LabelStudioServer, project: int, task_ids: Sequence[int] | None = None, *, timeout: float = 600
) -> dict[str, Any]:
    """The Data Manager action "Retrieve predictions" (synchronous: LS calls the backend's /predict).

    Args:
        task_ids: tasks to predict; None means all tasks of the project.
        timeout: seconds for the whole HTTP call.
    """
    selected: dict[str, Any] = (
        {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": list(task_ids)}
    )
    resp = requests.post(
        f"{ls.url}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": str(project)},
        json={"selectedItems": selected},
        headers=ls.headers,
        timeout=timeout,
    )
    if resp.status_code != 200:
        raise RuntimeError(f"retrieve predictions: HTTP {resp.status_code}: {resp.text[:500]}")
    return dict(resp.json())


def list_tasks(
    ls: LabelStudioServer,
    project: int,
    *,
    ordering: Sequence[str] = PRIORITY_ORDERING,
    page_size: int = 100,
) -> list[dict[str, Any]]:
    """All tasks of a project in Data Manager order (e.g. ``-tasks:data.priority``), with predictions."""
    query = urllib.parse.quote(json.dumps({"ordering": list(ordering)}))
    tasks: list[dict[str, Any]] = []
    page = 1
    while True:
        resp = requests.get(
            f"{ls.url}/api/tasks?project={project}&fields=all&page={page}&page_size={page_size}&query={query}",
            headers=ls.headers,
            timeout=60,
        )
        if resp.status_code == 404 and page > 1:  # past the last page
            break
        resp.raise_for_status()
        batch = resp.json().get("tasks", [])
        tasks.extend(batch)
        if len(batch) < page_size:
            break
        page += 1
    return tasks


def wait_for_scores(
    ls: LabelStudioServer, project: int, *, model_version: str | None = None, timeout: float = 120
) -> list[dict[str, Any]]:
    """Wait until every task carries ``data.discrepancy`` (of ``model_version`` if given); returns them.

    The backend answers ``/predict`` first and writes its findings into the tasks afterwards, in the
    background, so they appear in Label Studio a little after "Retrieve predictions" returns.
    """
    deadline = time.monotonic() + timeout
    while True:
        tasks = list_tasks(ls, project, ordering=("tasks:id",))
        pending = [
            t["id"]
            for t in tasks
            if "discrepancy" not in t["data"]
            or (model_version is not None and t["data"].get("model_version") != model_version)
        ]
        if not pending:
            return tasks
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} tasks without a score after {timeout:.0f} s: {pending[:10]}")
        time.sleep(1)


def task_predictions(ls: LabelStudioServer, task_id: int) -> list[dict[str, Any]]:
    """All stored predictions of a task (every model version)."""
    resp = requests.get(f"{ls.url}/api/predictions", params={"task": task_id}, headers=ls.headers, timeout=30)
    resp.raise_for_status()
    return list(resp.json())


SCORE_COLUMNS = (
    "tasks:data.priority",
    "tasks:data.discrepancy",
    "tasks:data.noise_grade",
    "tasks:data.noise_types",
)


def _columns(ls: LabelStudioServer, project: int) -> list[str]:
    """Data Manager column ids of a project (``tasks:<field>`` and ``tasks:data.<key>``)."""
    resp = requests.get(
        f"{ls.url}/api/dm/columns", params={"project": project}, headers=ls.headers, timeout=30
    )
    resp.raise_for_status()
    out = []
    for column in resp.json()["columns"]:
        parent = column.get("parent")
        if column["id"] == "data" and parent is None:
            continue
        out.append(f"tasks:{parent}.{column['id']}" if parent else f"tasks:{column['id']}")
    return out


def ensure_suspicious_view(ls: LabelStudioServer, project: int, *, title: str = VIEW_TITLE) -> int:
    """A Data Manager tab of the tasks nobody annotated yet, sorted by ``priority`` (descending: the order
    experts should re-annotate in), with its noise columns shown as numbers.

    This is what a manager would click together by hand: the tab is created once and reused.
    """
    resp = requests.get(f"{ls.url}/api/dm/views", params={"project": project}, headers=ls.headers, timeout=30)
    resp.raise_for_status()
    existing = [int(v["id"]) for v in resp.json() if v.get("data", {}).get("title") == title]
    shown = {"tasks:id", "tasks:data.image", *SCORE_COLUMNS}
    hidden = [*(c for c in _columns(ls, project) if c not in shown), "tasks:data"]
    data: dict[str, Any] = {
        "title": title,
        "ordering": list(PRIORITY_ORDERING),
        "type": "list",
        "target": "tasks",
        # Annotated tasks keep the priority they had before the expert saw them (only the others are
        # re-scored): without this filter they would stay on top of the tab.
        "filters": {"conjunction": "and", "items": [NOT_ANNOTATED_FILTER]},
        "hiddenColumns": {"explore": hidden, "labeling": [*hidden, "tasks:data.image"]},
        "columnsDisplayType": {
            "tasks:data.priority": "Number",
            "tasks:data.discrepancy": "Number",
            "tasks:data.image": "Image",
        },
    }
    if existing:  # refresh it: columns appear as the backend writes new fields
        resp = requests.patch(
            f"{ls.url}/api/dm/views/{existing[0]}",
            json={"project": project, "data": data},
            headers=ls.headers,
            timeout=30,
        )
    else:
        resp = requests.post(
            f"{ls.url}/api/dm/views", json={"project": project, "data": data}, headers=ls.headers, timeout=30
        )
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"Data Manager view: HTTP {resp.status_code}: {resp.text[:300]}")
    return int(resp.json()["id"])


def create_annotation(client: Any, task_id: int, result: Sequence[Mapping[str, Any]]) -> int:
    """Submit an annotation (as the token's user); returns its id."""
    annotation = client.annotations.create(id=task_id, result=list(result))
    return int(annotation.id)
