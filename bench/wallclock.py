"""Wall time of a benchmark that is stopped and resumed: one record per invocation, summed per command.

A long ``bench.simulate`` run outlives a working session: it is stopped, and the same command, run again on
the same ``--out``, resumes from the trainings already finished. The wall time of the last invocation alone
then says little about what the result cost. Each invocation keeps its own record under
``out/.invocations/`` (so that two invocations sharing a folder never write the same file), refreshed every
``every`` seconds while it runs, so that an invocation that is killed still counts up to its last refresh.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as out:
    ...     with WallClock(Path(out), "python -m bench.simulate --out x", every=3600) as clock:
    ...         pass
    ...     total = clock.total()
    >>> total.invocations, total.finished, total.seconds >= 0
    (1, 1, True)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LEDGER = ".invocations"


@dataclass(frozen=True)
class WallTotal:
    """The invocations of one command on one folder.

    Attributes:
        seconds: wall time summed over them (an unfinished one up to its last refresh).
        invocations: how many there were, this one included.
        finished: how many ran to their end.
    """

    seconds: float
    invocations: int
    finished: int


class WallClock:
    """Records this invocation's wall time under ``out/.invocations/`` while it runs (a context manager).

    Args:
        out: the benchmark's output folder.
        command: the command line; invocations are summed only with those of the same command.
        every: seconds between refreshes of the record (> 0).
    """

    def __init__(self, out: Path, command: str, *, every: float = 30.0) -> None:
        if not every > 0:
            raise ValueError(f"every: expected seconds > 0, got {every!r}")
        self.folder = Path(out) / LEDGER
        self.command = command
        self.every = every
        self._started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._ended: float | None = None
        stamp = self._started_at.strftime("%Y%m%dT%H%M%S%fZ")
        self.path = self.folder / f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seconds(self) -> float:
        """Wall time of this invocation so far (or to its end)."""
        return (self._ended if self._ended is not None else time.monotonic()) - self._t0

    def _write(self, *, finished: bool) -> None:
        record = {
            "command": self.command,
            "started": self._started_at.isoformat(),
            "seconds": self.seconds,
            "finished": finished,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)  # a reader never sees half a record

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self._write(finished=False)
            except OSError as exc:  # a full disk must not stop the benchmark
                logger.warning("wall clock: could not refresh %s: %s", self.path, exc)

    def __enter__(self) -> WallClock:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(finished=False)
        self._thread = threading.Thread(target=self._beat, name="wallclock", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._ended = time.monotonic()
        # An invocation that failed is not finished; its time still counts.
        self._write(finished=exc_type is None)

    def total(self) -> WallTotal:
        """This invocation and every earlier one of the same command on the same folder.

        Records that cannot be read (another version's, a truncated file) are skipped with a warning.
        """
        seconds, invocations, finished = 0.0, 0, 0
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                if record.get("command") != self.command:
                    continue
                if path == self.path:
                    record["seconds"] = self.seconds  # fresher than the last refresh
                seconds += float(record["seconds"])
                finished += bool(record.get("finished"))
                invocations += 1
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                logger.warning("wall clock: skipping %s: %s", path, exc)
        return WallTotal(seconds=seconds, invocations=invocations, finished=finished)
