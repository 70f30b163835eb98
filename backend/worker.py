"""``python -m backend.worker``: an RQ worker running training jobs (one per GPU; needs ``REDIS_URL``).

It reads the same environment as ``python -m backend`` (``MODEL_DIR`` on the shared volume,
``LABEL_STUDIO_*``, ``DEVICE``...). Start as many as there are GPUs (``DEVICE=cuda:N`` each); any number
of backend replicas enqueue into the same Redis. A worker killed mid-job is noticed after
``--monitor-interval`` + ``--heartbeat-grace`` seconds and its job re-queued (see ``backend.jobs``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from backend.settings import Settings, SettingsError, startup_problem


def _worker_class() -> Any:
    from rq import Worker

    class AlcWorker(Worker):  # type: ignore[misc]
        """RQ's worker with a configurable grace after the last heartbeat (RQ fixes it at 60 s)."""

        heartbeat_grace = 60

        def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
            if job.timeout and job.timeout > 0:
                left = job.timeout - working_time
                return int(min(left, self.job_monitoring_interval)) + self.heartbeat_grace
            return int(self.job_monitoring_interval) + self.heartbeat_grace

        def maintain_heartbeats(self, job: Any, execution: Any) -> None:
            # RQ quits on a Redis error here, leaving the job's process unwatched; a Redis restart must not
            # cost the worker: skip this heartbeat, the next one (or RQ's re-queue after the grace) follows.
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import TimeoutError as RedisTimeoutError

            try:
                super().maintain_heartbeats(job, execution)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self.log.warning("Worker %s: heartbeat skipped, Redis unreachable (%s)", self.name, exc)

    return AlcWorker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.worker", description=__doc__)
    parser.add_argument("--name", default=None, help="worker name (default: host and pid)")
    parser.add_argument("--monitor-interval", type=int, default=10, help="seconds between job heartbeats")
    parser.add_argument(
        "--heartbeat-grace", type=int, default=30, help="seconds after a missed heartbeat before a re-queue"
    )
    parser.add_argument(
        "--maintenance-interval", type=int, default=15, help="seconds between registry cleanups"
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.redis_url is None:
        print(
            "configuration error: REDIS_URL: required by the worker (redis://host:port/db), not set",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    problem = startup_problem(settings)
    if problem is not None:
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    settings.log_summary(logging.getLogger("backend.worker"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings.scratch_dir / "yolo-config"))
    os.environ.setdefault("MPLCONFIGDIR", str(settings.scratch_dir / "mpl"))

    from rq import Queue

    from backend.jobs import QUEUE_NAME, WorkerContext, connect, set_context
    from backend.tasksfile import source_factory

    set_context(WorkerContext(settings=settings, source_factory=source_factory(settings)))
    connection = connect(settings.redis_url)
    worker_cls = _worker_class()
    worker_cls.heartbeat_grace = max(1, args.heartbeat_grace)
    worker = worker_cls(
        [Queue(QUEUE_NAME, connection=connection)],
        connection=connection,
        name=args.name,
        job_monitoring_interval=max(1, args.monitor_interval),
        maintenance_interval=max(1, args.maintenance_interval),
        worker_ttl=max(30, args.monitor_interval * 3),
    )
    worker.work(burst=args.burst, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
