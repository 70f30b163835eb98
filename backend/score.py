"""``python -m backend.score --project N``: bulk-score a Label Studio project through a running backend.

It asks the backend (``POST /rescore?project=N``) to score every task without an expert annotation that the
serving version has not scored yet, then follows the job's progress in ``/health`` (``bulk_scoring.<N>``)
until it ends. The job runs in the backend (or on a queue worker with ``REDIS_URL``), not in this command:
stopping the command does not stop the job, and running it again while the job runs just follows it.

Exit status: 0 done, 1 the job failed or stopped, 2 bad arguments or the backend unreachable.

Example::

    python -m backend.score --project 1 --backend http://127.0.0.1:9090
    project 1: re-scoring queued
    project 1: listing the tasks
    project 1: 0/216 tasks (scored 0, already scored 0, expert 0, failed 0)
    ...
    project 1: 208/216 tasks (scored 208, already scored 0, expert 0, failed 0) 3.41 tasks/s, ETA 2 s
    project 1: done, 216/216 tasks (scored 216, already scored 0, expert 0, failed 0) in 61.4 s
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

__all__ = ["follow", "main", "progress_line"]


def progress_line(project: int, progress: Mapping[str, Any]) -> str:
    """One human-readable line for a ``/health`` ``bulk_scoring`` entry.

    >>> progress_line(3, {"state": "running", "done": 10, "total": 40, "scored": 8, "skipped": 0,
    ...                   "expert": 2, "failed": 0, "tasks_per_s": 4.0, "eta_s": 7.5})
    'project 3: 10/40 tasks (scored 8, already scored 0, expert 2, failed 0) 4.0 tasks/s, ETA 8 s'
    >>> progress_line(3, {"state": "superseded", "done": 4, "total": 40, "scored": 4, "skipped": 0,
    ...                   "expert": 0, "failed": 0, "reason": "v0007 serves now"})
    'project 3: superseded, 4/40 tasks (scored 4, already scored 0, expert 0, failed 0) (v0007 serves now)'
    """
    counts = (
        f"{progress.get('done', 0)}/{progress.get('total', 0)} tasks (scored {progress.get('scored', 0)}, "
        f"already scored {progress.get('skipped', 0)}, expert {progress.get('expert', 0)}, "
        f"failed {progress.get('failed', 0)})"
    )
    state = progress.get("state")
    if state == "running" and not progress.get("total"):
        return f"project {project}: listing the tasks"
    if state == "running":
        rate, eta = progress.get("tasks_per_s"), progress.get("eta_s")
        speed = f" {rate} tasks/s, ETA {eta:.0f} s" if rate and eta is not None else ""
        return f"project {project}: {counts}{speed}"
    tail = f" in {progress['seconds']} s" if progress.get("seconds") is not None else ""
    error = f": {progress['error']}" if progress.get("error") else ""
    reason = f" ({progress['reason']})" if progress.get("reason") else ""  # e.g. why a run was superseded
    return f"project {project}: {state}, {counts}{tail}{error}{reason}"


def _auth() -> tuple[str, str] | None:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


def follow(
    backend: str,
    project: int,
    *,
    since: float,
    interval: float = 2.0,
    timeout: float | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Poll ``/health`` until the project's bulk scoring that started after ``since`` ends; its progress.

    Args:
        backend: the backend's base URL.
        project: the Label Studio project.
        since: Unix time; an entry of a run that started before it (an earlier run) is not the one followed.
        interval: seconds between polls.
        timeout: give up after this many seconds (None: wait as long as the job runs).
        report: called with each new progress line (default: print).

    Raises:
        TimeoutError: the job did not end within ``timeout``.
        requests.RequestException: the backend is unreachable.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    key, last = str(project), ""
    while True:
        resp = requests.get(f"{backend}/health", auth=_auth(), timeout=30)
        resp.raise_for_status()
        progress = (resp.json().get("bulk_scoring") or {}).get(key)
        if isinstance(progress, dict) and float(progress.get("started") or 0) >= since - 1.0:
            line = progress_line(project, progress)
            if line != last:
                report(line)
                last = line
            if progress.get("state") not in ("running", "queued"):
                return dict(progress)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"bulk scoring of project {project} still running after {timeout:.0f} s")
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument(
        "--backend",
        default=os.environ.get("ML_BACKEND_URL", "http://127.0.0.1:9090"),
        help="the backend's URL (default: $ML_BACKEND_URL or http://127.0.0.1:9090)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between progress lines")
    parser.add_argument("--timeout", type=float, default=None, help="stop following after this many s")
    parser.add_argument("--no-follow", action="store_true", help="start the job and return")
    args = parser.parse_args(argv)
    if args.project < 1:
        parser.error(f"--project: expected a project id >= 1, got {args.project}")
    backend = args.backend.rstrip("/")
    since = time.time()
    try:
        resp = requests.post(f"{backend}/rescore", params={"project": args.project}, auth=_auth(), timeout=30)
    except requests.RequestException as exc:
        print(f"backend {backend} unreachable: {exc}", file=sys.stderr)
        return 2
    if resp.status_code != 200:
        print(f"backend {backend}: HTTP {resp.status_code}: {resp.text[:300]}", file=sys.stderr)
        return 2
    answer = resp.json()
    print(f"project {args.project}: {answer.get('status')}", flush=True)
    if answer.get("status") == "error":
        print(answer.get("detail", ""), file=sys.stderr)
        return 1
    if args.no_follow:
        return 0
    if answer.get("status") == "already running":
        since = 0.0  # follow the run in progress
    try:
        final = follow(backend, args.project, since=since, interval=args.interval, timeout=args.timeout)
    except (requests.RequestException, TimeoutError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0 if final.get("state") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
