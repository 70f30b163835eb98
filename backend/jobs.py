"""Queue-backed training for several backend replicas and workers (``REDIS_URL`` set): RQ on Redis.

Why RQ: Label Studio's own ML backend framework (label-studio-ml) uses it, so a lab running Label Studio's
Redis already knows how to operate it; it needs nothing but Redis (no broker, no result backend, no beat
process), a job is a plain function call, and it re-queues the job of a worker that died (``Retry``), which
is the guarantee that matters here. Celery would add a broker abstraction and configuration this backend
does not need.

Flow: a replica's ``/webhook`` or ``/train`` -> :meth:`RedisTrainer.request` -> at most one *queued* training
job per project: a request while one is queued coalesces into it (answer ``"pending"``). A worker
(``python -m backend.worker``) runs :func:`run_training`: it first takes the project's lock (so one training
per project runs at a time, whichever worker holds it) and only then clears the queued mark, so requests
arriving during the training queue exactly one follow-up, which waits for the lock. Hence a burst of requests
costs at most two trainings. The job trains in a child process, publishes to the shared registry (every
replica picks the new version up on its next request by reading ``LATEST``), re-scores the project's other
tasks and removes the predictions they supersede in Label Studio. Bulk scoring (``POST /rescore``) is
:func:`run_rescore` on the same queue, coalesced the same way (no lock: it may run beside a training).

Failures: an ordinary failure (no expert tasks, Label Studio unreachable) is recorded in Redis for
``/health`` and not retried. A worker killed mid-job (``kill -9``, a lost machine) stops refreshing the job's
heartbeat; after ``job_monitoring_interval + grace`` seconds RQ's registry cleanup (run by any other worker,
and by every replica that reads the queue depth) re-queues it, up to ``RETRIES`` times. With Redis'
append-only file on (``appendonly yes``, ``appendfsync everysec``), a Redis restart loses no queued job. A job
whose lock could not be refreshed for ``LOCK_TTL_S`` (Redis unreachable) finds it gone or taken by the
project's next job at its next refresh: it terminates its training process before that publishes, and is
recorded as failed (without overwriting the state of the job now running).

Keys (prefix ``alc:``): ``train:<p>:queued`` (id of the queued job), ``train:<p>:lock`` (id of the running
job, expiring unless refreshed), ``rescore:<p>:queued``, ``rescore:jobs`` (project -> latest started
bulk-scoring job; its ``meta["progress"]`` is the progress ``/health`` shows), ``seen`` (expert-annotated
task ids since the last training), ``training`` (hash: last job's state for ``/health``), ``stats`` (hash:
runs, failures, seconds).
RQ's own keys live under ``rq:`` (queue ``alc-training``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.metrics import TrainingCounts
from backend.service import ModelService
from backend.settings import Settings
from backend.training import TaskSource, TrainingManager

logger = logging.getLogger(__name__)

__all__ = [
    "QUEUE_NAME",
    "RETRIES",
    "RedisTrainer",
    "WorkerContext",
    "connect",
    "run_rescore",
    "run_training",
    "set_context",
]

QUEUE_NAME = "alc-training"
RETRIES = 2
"""Re-runs of a job whose worker died (an ordinary failure is not retried)."""
JOB_TIMEOUT_S = 6 * 3600
LOCK_TTL_S = 30
_PREFIX = "alc:"

# Take the lock if free (or already ours, after a retry); then the job is no longer "queued".
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# A queued training takes the project's counted annotations (KEYS[1]) into its own set (KEYS[2]).
_TAKE_SEEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
end
return 1
"""
# A failed training gives them back (KEYS[2] into KEYS[1]); a finished one drops them.
_GIVE_BACK_SEEN = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SUNIONSTORE', KEYS[1], KEYS[1], KEYS[2])
  redis.call('DEL', KEYS[2])
end
return 1
"""


def connect(url: str) -> Any:
    """A Redis client for ``url`` (``redis://host:port/db``)."""
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def _project_key(project: int | None) -> str:
    return "none" if project is None else str(int(project))


def _queued_key(project: int | None) -> str:
    return f"{_PREFIX}train:{_project_key(project)}:queued"


def _rescore_key(project: int | None) -> str:
    return f"{_PREFIX}rescore:{_project_key(project)}:queued"


_BULK_JOBS = f"{_PREFIX}rescore:jobs"
"""Hash: project -> id of its latest started bulk-scoring job (whose meta holds the progress)."""


def _lock_key(project: int | None) -> str:
    return f"{_PREFIX}train:{_project_key(project)}:lock"


def _seen_key(project: int | None) -> str:
    """Set: the project's expert-annotated task ids counted towards its next training."""
    return f"{_PREFIX}seen:{_project_key(project)}"


def _taken_key(project: int | None, job_id: str) -> str:
    """Set: the counted ids a queued or running training job took (given back if it fails)."""
    return f"{_seen_key(project)}:job:{job_id}"


class _RedisSet:
    """The set-like view :class:`TrainingManager` keeps of expert-annotated task ids, shared in Redis."""

    def __init__(self, connection: Any, key: str) -> None:
        self._redis = connection
        self._key = key

    def add(self, item: int) -> None:
        self._redis.sadd(self._key, int(item))

    def clear(self) -> None:
        self._redis.delete(self._key)

    def __len__(self) -> int:
        return int(self._redis.scard(self._key))

    def __iter__(self) -> Iterator[int]:
        return (int(x) for x in self._redis.smembers(self._key))


class RedisTrainer(TrainingManager):
    """:class:`TrainingManager` whose jobs run on RQ workers; any number of replicas share its state.

    Args:
        settings: backend settings (``redis_url`` set).
        service: the replica's model holder (only for the interface: workers train and re-score).
        connection: a Redis client (default: from ``settings.redis_url``).
    """

    def __init__(self, settings: Settings, service: ModelService, *, connection: Any = None) -> None:
        from rq import Queue

        super().__init__(settings, service, source=None)
        if connection is None:
            if settings.redis_url is None:
                raise ValueError("REDIS_URL: required for queue-backed training, not set")
            connection = connect(settings.redis_url)
        self.redis = connection
        self.queue = Queue(QUEUE_NAME, connection=connection)
        self._last_project: int | None = None

    def _expert_tasks_seen(self, project: int | None) -> Any:
        """The project's counted expert-annotated task ids, shared by every replica in Redis."""
        return _RedisSet(self.redis, _seen_key(project))

    def request(self, project: int | None, *, kind: str = "expert") -> str:
        """Queue a training job for ``project`` unless one is already queued (then ``"pending"``).

        ``kind="bootstrap"`` trains the first version on the crowd labels (``backend.bootstrap``); it shares
        the project's queued mark and lock with expert trainings. A queued expert training takes the
        project's counted annotations (in the same transaction); it gives them back if it fails, so the next
        expert annotation retries it. Counts are per project.
        """
        self._last_project = project

        def take_seen(pipe: Any, job_id: str) -> None:
            if kind == "expert":
                pipe.eval(_TAKE_SEEN, 2, _seen_key(project), _taken_key(project, job_id), JOB_TIMEOUT_S * 4)

        job_id = self._enqueue(
            _queued_key(project), run_training, project, kind="train", extra=(kind,), on_queued=take_seen
        )
        if job_id is None:
            return "pending"
        running = self.redis.get(_lock_key(project)) is not None
        logger.info("queued training job %s for project %s", job_id, _project_key(project))
        return "pending" if running else "training queued"

    def request_rescore(self, project: int | None) -> str:
        """Queue a bulk scoring job for ``project`` unless one is already queued."""
        job_id = self._enqueue(_rescore_key(project), run_rescore, project, kind="rescore")
        return "already queued" if job_id is None else "re-scoring queued"

    def _enqueue(
        self,
        queued: str,
        func: Callable[..., Any],
        project: int | None,
        *,
        kind: str,
        extra: tuple[Any, ...] = (),
        on_queued: Callable[[Any, str], None] | None = None,
    ) -> str | None:
        """Enqueue ``func(project, *extra)`` and mark it in ``queued``, atomically; None if a live job is
        marked. ``on_queued(pipe, job_id)`` adds commands to the same transaction."""
        from redis.exceptions import WatchError
        from rq import Retry

        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(queued)
                    current = pipe.get(queued)
                    if current is not None and self._alive(current.decode()):
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    job_id = f"{kind}-{_project_key(project)}-{uuid.uuid4().hex[:12]}"
                    pipe.set(queued, job_id)
                    self.queue.enqueue_call(
                        func,
                        args=(project, *extra),
                        job_id=job_id,
                        timeout=JOB_TIMEOUT_S,
                        result_ttl=24 * 3600,
                        failure_ttl=7 * 24 * 3600,
                        retry=Retry(max=RETRIES),
                        description=f"{kind} project {_project_key(project)}",
                        pipeline=pipe,
                    )
                    if on_queued is not None:
                        on_queued(pipe, job_id)
                    pipe.execute()
                    return job_id
                except WatchError:
                    continue  # another replica queued one meanwhile: look again

    def _alive(self, job_id: str) -> bool:
        """Whether a queued mark still names a job RQ will run (a lost or finished job does not count)."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        try:
            status = Job.fetch(job_id, connection=self.redis).get_status()
        except NoSuchJobError:
            return False
        return status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)

    def status(self) -> dict[str, Any]:
        """The last job's state for ``/health``; Redis being unreachable is reported, never raised (Label
        Studio marks a backend whose /health fails as disconnected and stops sending predictions)."""
        from redis.exceptions import RedisError

        try:
            return self._status()
        except RedisError as exc:
            return {"state": "unknown", "last_error": f"Redis unreachable: {exc}", "backend": "redis"}

    def _status(self) -> dict[str, Any]:
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(f"{_PREFIX}training").items()}
        seconds = raw.get("last_seconds")
        return {
            "state": raw.get("state", "idle"),
            "last_error": raw.get("last_error") or None,
            "last_version": raw.get("last_version") or None,
            "last_seconds": float(seconds) if seconds else None,
            "pending": self.redis.get(_queued_key(self._last_project)) is not None,
            "new_expert_tasks": len(self._expert_tasks_seen(self._last_project)),
            "min_annotations": self.settings.train_min_annotations,
            "kind": raw.get("kind") or None,
            "progress": json.loads(raw.get("progress") or "{}") if raw.get("state") == "running" else {},
            "queue": self.queue_depth(),
            "backend": "redis",
        }

    def bulk_status(self) -> dict[str, Any]:
        """Each project's latest bulk-scoring job progress, from the job's meta (written by the worker).

        A job that RQ no longer runs while its meta still says ``running`` (the worker died and the job was
        not re-queued, or it failed outside the scoring) is shown with RQ's status instead.
        """
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        out: dict[str, Any] = {}
        for raw_project, raw_id in self.redis.hgetall(_BULK_JOBS).items():
            try:
                job = Job.fetch(raw_id.decode(), connection=self.redis)
            except NoSuchJobError:
                continue
            progress = dict(job.meta.get("progress") or {"state": "queued"})
            status = job.get_status()
            if progress.get("state") == "running" and status in (JobStatus.FAILED, JobStatus.STOPPED):
                progress["state"] = str(status.value)
            progress["job"] = job.id
            out[raw_project.decode()] = progress
        return out

    def training_counts(self) -> TrainingCounts:
        from redis.exceptions import RedisError

        try:
            raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(f"{_PREFIX}stats").items()}
        except RedisError:
            return TrainingCounts()
        return TrainingCounts(
            runs=int(raw.get("runs", 0)),
            failures=int(raw.get("failures", 0)),
            seconds=float(raw.get("seconds", 0)),
        )

    def queue_depth(self) -> dict[str, int]:
        """Jobs waiting and running (counting the started registry also re-queues jobs of dead workers)."""
        from redis.exceptions import RedisError

        try:
            return {"training": int(self.queue.count) + int(self.queue.started_job_registry.count)}
        except RedisError:
            return {}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no training job is queued or running (tests, the benchmark)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while sum(self.queue_depth().values()) > 0:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True


@dataclass
class WorkerContext:
    """What a worker process gives its jobs (set once by ``python -m backend.worker``, inherited by the
    forked job processes).

    Attributes:
        settings: the worker's settings.
        source_factory: builds the task source (default: Label Studio through the SDK).
    """

    settings: Settings
    source_factory: Callable[[Settings], TaskSource] | None = None


_context: WorkerContext | None = None


def set_context(context: WorkerContext) -> None:
    """Install the worker's context (``python -m backend.worker`` calls it before working)."""
    global _context
    _context = context


class _ProjectLock:
    """One training per project: a Redis key holding the running job's id, refreshed while it runs.

    A refresh that finds the key gone or held by another job (Redis was unreachable for longer than
    ``LOCK_TTL_S``, the key expired, the project's follow-up job took it) sets :attr:`lost`, logs an error and
    calls ``on_lost``; the lock is not refreshed again.
    """

    def __init__(
        self,
        connection: Any,
        project: int | None,
        job_id: str,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._redis = connection
        self._project = project
        self._job_id = job_id
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def acquire(self, *, poll_s: float = 1.0) -> None:
        """Wait for the lock (another job of the project may be running), then keep it fresh."""
        keys = [_lock_key(self._project), _queued_key(self._project)]
        waited = False
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        while True:
            try:
                if self._redis.eval(_ACQUIRE, 2, *keys, self._job_id, LOCK_TTL_S):
                    break
            except (RedisConnectionError, RedisTimeoutError):  # Redis restarting: keep waiting
                logger.warning("Redis unreachable while job %s waits for its project lock", self._job_id)
            if not waited:
                logger.info("job %s waits for the running training of its project", self._job_id)
                waited = True
            time.sleep(poll_s)
        self._thread = threading.Thread(target=self._refresh, name="train-lock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_TTL_S / 3):
            try:
                held = self._redis.eval(_REFRESH, 1, _lock_key(self._project), self._job_id, LOCK_TTL_S)
            except Exception as exc:  # Redis briefly away: the next refresh tries again
                logger.warning("refreshing the training lock failed: %s", type(exc).__name__)
                continue
            if not held and not self._stop.is_set():
                self._lose()
                return

    def _lose(self) -> None:
        try:
            holder = self._redis.get(_lock_key(self._project))
        except Exception:  # only for the message
            holder = None
        logger.error(
            "job %s lost the training lock of project %s (%s); stopping its training, another job of the "
            "project may be running",
            self._job_id,
            _project_key(self._project),
            f"now held by {holder.decode()}" if holder else "it expired",
        )
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost()

    def release(self) -> None:
        """Stop refreshing and delete the key if it is still ours (a Redis error is logged: it expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._redis.eval(_RELEASE, 1, _lock_key(self._project), self._job_id)
        except Exception as exc:
            logger.warning("releasing the training lock failed (it expires): %s", type(exc).__name__)


class _LockLostError(RuntimeError):
    """The job's project lock expired or was taken by another job: its training is stopped."""


def _train_job_children() -> list[int]:
    """Ids of this process's ``python -m backend.train_job`` children (Linux ``/proc``; elsewhere none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    me, found = os.getpid(), []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0") if ppid == me else []
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
        if b"backend.train_job" in argv:
            found.append(int(entry.name))
    return found


def _stop_train_jobs() -> None:
    """Terminate the training child processes of this job (before they publish)."""
    for pid in _train_job_children():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        logger.error("stopped training process %d", pid)


def run_training(project: int | None, kind: str = "expert") -> dict[str, Any]:
    """The RQ job: one training of ``project`` under its lock (``kind``: ``expert`` or ``bootstrap``, see
    ``TrainingManager.train_once``); failures are recorded, not raised.

    A job that loses its lock (see :class:`_ProjectLock`) terminates its training process, so that it
    publishes nothing, and is recorded as failed. The ``alc:training`` state is written in a ``finally``:
    whatever stops the job, ``/health`` does not show it running.

    Returns:
        ``{"version": ...}`` or ``{"error": ...}`` (also kept in the job's result).
    """
    from rq import get_current_job

    if _context is None:
        raise RuntimeError("run_training runs in `python -m backend.worker` (no worker context installed)")
    context = _context
    settings = context.settings
    job = get_current_job()
    job_id = job.id if job is not None else f"local-{uuid.uuid4().hex[:8]}"
    redis = job.connection if job is not None else connect(str(settings.redis_url))
    lock = _ProjectLock(redis, project, job_id, on_lost=_stop_train_jobs)
    lock.acquire()
    start = time.monotonic()
    version = ""
    error = "interrupted"  # until the training returns or fails
    try:
        redis.hset(
            f"{_PREFIX}training",
            mapping={
                "state": "running",
                "project": _project_key(project),
                "job": job_id,
                "kind": kind,
                "progress": "{}",
            },
        )
        trainer = _worker_trainer(context)

        def report(state: dict[str, Any]) -> None:
            if lock.lost.is_set():  # a training process started after the loss: stop it too
                _stop_train_jobs()
                raise _LockLostError("lost the project's training lock")
            # Epochs for /health on every replica (the job folder is on this worker's machine).
            redis.hset(f"{_PREFIX}training", "progress", json.dumps(state))

        trainer.on_progress = report
        version = trainer.train_once(project, kind=kind)
        error = ""
    except Exception as exc:
        error = str(exc)[:2000]
        if lock.lost.is_set():
            error = f"stopped: the project's training lock expired or was taken by another job ({error})"
        error = error[:2000]
        logger.error("training job %s failed: %s", job_id, error)
    except BaseException as exc:  # e.g. the worker stops the job: still not "running"
        error = f"interrupted ({type(exc).__name__})"
        raise
    finally:
        lock.release()
        seconds = time.monotonic() - start
        try:
            _record(
                redis,
                state="failed" if error else "idle",
                seconds=seconds,
                version=version,
                error=error,
                # Another job of the project may be running and showing its state: count, do not overwrite.
                only_if_job=job_id if lock.lost.is_set() else None,
            )
            # The annotations this job took at request time: consumed by a success, given back by a
            # failure (the next expert annotation of the project retries).
            if error:
                redis.eval(_GIVE_BACK_SEEN, 2, _seen_key(project), _taken_key(project, job_id))
            else:
                redis.delete(_taken_key(project, job_id))
        except Exception as exc:  # Redis away: the job's own result still says what happened
            logger.error("recording training job %s failed: %s", job_id, type(exc).__name__)
    if error:
        return {"error": error}
    logger.info("training job %s published %s", job_id, version)
    return {"version": version}


def run_rescore(project: int | None) -> dict[str, Any]:
    """The RQ bulk-scoring job: every non-expert task of ``project`` with the serving version.

    Returns:
        ``{"scored": n}`` or ``{"error": ...}`` (an ordinary failure is logged, not retried).
    """
    from rq import get_current_job

    if _context is None:
        raise RuntimeError("run_rescore runs in `python -m backend.worker` (no worker context installed)")
    job = get_current_job()
    on_progress = None
    if job is not None:  # started: a request from now on queues a new job
        job.connection.eval(_RELEASE, 1, _rescore_key(project), job.id)
        job.connection.hset(_BULK_JOBS, _project_key(project), job.id)
        on_progress = _meta_writer(job)
    try:
        scored = _worker_trainer(_context).rescore(project, on_progress=on_progress)
    except Exception as exc:
        logger.error("re-scoring project %s failed: %s", _project_key(project), exc)
        return {"error": str(exc)[:2000]}
    return {"scored": scored}


def _meta_writer(job: Any, *, every_s: float = 1.0) -> Callable[[Any], None]:
    """A progress callback saving ``job.meta["progress"]`` (at most once a second, and the last state), so
    every replica's ``/health`` shows a worker's bulk scoring."""
    last = [0.0]

    def save(progress: Any) -> None:
        now = time.monotonic()
        if progress.state == "running" and now - last[0] < every_s:
            return
        last[0] = now
        job.meta["progress"] = progress.as_dict()
        try:
            job.save_meta()
        except Exception as exc:  # Redis briefly away: the next save tries again
            logger.warning("saving bulk-scoring progress failed: %s", type(exc).__name__)

    return save


def _worker_trainer(context: WorkerContext) -> TrainingManager:
    """A one-job :class:`TrainingManager` over a fresh model holder, as a worker's job uses it."""
    from backend.images import ImageLoader
    from backend.lsclient import LabelStudioAuth

    settings = context.settings
    auth = (
        LabelStudioAuth(str(settings.label_studio_url), str(settings.label_studio_api_key))
        if settings.label_studio_enabled
        else None
    )
    loader = ImageLoader.from_settings(settings, auth=auth)
    source = context.source_factory(settings) if context.source_factory is not None else None
    return TrainingManager(settings, ModelService(settings, loader=loader), source=source)


_RECORD_IF_JOB = """
if redis.call('HGET', KEYS[1], 'job') == ARGV[1] then redis.call('HSET', KEYS[1], unpack(ARGV, 2)) end
return 0
"""


def _record(
    redis: Any,
    *,
    state: str,
    seconds: float,
    version: str = "",
    error: str = "",
    only_if_job: str | None = None,
) -> None:
    """Write the finished job's state into ``alc:training`` and count it in ``alc:stats``.

    Args:
        only_if_job: write the state only while the hash still names this job (the counts always).
    """
    fields: dict[str, Any] = {"state": state, "last_error": error, "last_seconds": round(seconds, 1)}
    if version:
        fields["last_version"] = version
    with redis.pipeline() as pipe:
        if only_if_job is None:
            pipe.hset(f"{_PREFIX}training", mapping=fields)
        else:
            flat = [str(item) for pair in fields.items() for item in pair]
            pipe.eval(_RECORD_IF_JOB, 1, f"{_PREFIX}training", only_if_job, *flat)
        pipe.hincrby(f"{_PREFIX}stats", "runs", 1)
        pipe.hincrby(f"{_PREFIX}stats", "failures", int(bool(error)))
        pipe.hincrbyfloat(f"{_PREFIX}stats", "seconds", seconds)
        pipe.execute()
