"""One demo per work folder: an ``flock``-ed ``<work>/demo.pid`` that lists the demo's child process groups.

The lock is held for the demo's lifetime (the kernel drops it when the process dies, however it dies). A next
run that finds the lock held refuses to start (two Label Studio servers on one SQLite database); one that
finds it free but the file listing process groups (a demo killed without cleanup) ends those groups that
still exist, then goes on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)


class DemoAlreadyRunningError(RuntimeError):
    """Another demo holds the lock of this work folder."""


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DemoLock:
    """The held lock of a work folder; a context manager.

    Args:
        path: the pid file (``<work>/demo.pid``).

    Raises:
        DemoAlreadyRunningError: on entering, when another process holds the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._groups: list[dict[str, int | None]] = []

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _read(handle.read()).get("pid", "?")
            handle.close()
            raise DemoAlreadyRunningError(
                f"another demo (pid {holder}) is running with the work folder {self.path.parent}: stop it "
                "(Ctrl-C in its terminal) or give this one another --work"
            ) from None
        self._file = handle
        handle.seek(0)
        self._end_stale_groups(_read(handle.read()))
        self._write()

    def _end_stale_groups(self, previous: dict[str, object]) -> None:
        """End the process groups a demo that died without cleanup left, if they still exist."""
        groups = previous.get("groups")
        for group in groups if isinstance(groups, list) else []:
            if not isinstance(group, dict) or not isinstance(group.get("pgid"), int):
                continue
            pgid, started = int(group["pgid"]), group.get("start")
            leader_start = _start_time(pgid)
            if leader_start is not None and started is not None and leader_start != started:
                continue  # the id now belongs to an unrelated process
            if not _group_alive(pgid):
                continue
            logger.warning(
                "ending process group %d left by an earlier demo (pid %s)", pgid, previous.get("pid")
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    def add_group(self, pgid: int) -> None:
        """Record a child's process group (its own session: pgid == pid) before it is known healthy."""
        self._groups.append({"pgid": pgid, "start": _start_time(pgid)})
        self._write()

    def _write(self) -> None:
        if self._file is None:
            raise RuntimeError("DemoLock: not acquired")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "groups": self._groups}))
        self._file.flush()

    def release(self) -> None:
        """Forget the groups (they are stopped by then) and drop the lock; idempotent."""
        if self._file is None:
            return
        self._groups = []
        self._write()
        self._file.close()  # closing the only descriptor drops the flock
        self._file = None

    def __enter__(self) -> DemoLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
