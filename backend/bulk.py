"""Bulk scoring: every task of a project scored by the serving version, chunk by chunk, resumable.

Flow: tasks are read from Label Studio a page at a time (ordered by id, so pages stay put while their tasks
are written) -> each task is classified (:func:`scoring_state`): expert-annotated (left out), already scored
by the serving version (skipped), or to score -> the tasks to score go through
:meth:`backend.service.ModelService.score_tasks` in chunks of ``PREDICT_BATCH`` -> the scored tasks are
written back ``WRITE_BATCH`` at a time while the next ones are predicted.

Write-back to Label Studio (:class:`LabelStudioWriter`): one ``POST /api/projects/{id}/import/predictions``
per write batch (Label Studio 1.23 stores each entry's ``model_version`` as given and validates the lot
against the labelling config), then the task data fields, merged locally into the ``data`` the listing
already returned (no GET per task; Label Studio replaces ``data`` as a whole), with a few
``PATCH /api/tasks/{id}?review=1`` in flight at once (Label Studio 1.23 has no bulk task update;
``LEAN_UPDATE`` says why the query), and the superseded predictions of older versions deleted. The data
fields go last, so ``data.model_version`` naming the serving version means the task's prediction is stored
too.

Resumable: a task is *done* when its ``data.model_version`` is the serving version, it has no
``score_error``, and (when the listing shows predictions) it holds a prediction of that version made after
its annotations last changed (:func:`current_prediction`: a crowd annotation added later is scored). A re-run,
a restarted backend or a re-queued worker job therefore continues where the last one stopped; a task
whose prediction was stored but whose fields were not gets its fields without a second prediction.

Superseded: a run scores with the version that served when it started. Before each write batch it reads the
registry's ``LATEST``; once that names another version (a training published one, or one was activated), the
run writes nothing more and ends ``superseded``, so it neither overwrites nor duplicates the predictions and
fields of the newer version's run, which does the work.

Progress (:class:`BulkProgress`): ``done/total`` (tasks looked at / tasks in the project), tasks scored,
skipped, expert, failed, scored tasks per second and an ETA; ``/health`` shows it under ``bulk_scoring``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from backend.labelconfig import LabelSchema
from backend.lsclient import LEAN_UPDATE
from backend.protocol import TaskFields
from backend.service import SCORE_ERROR_FIELD, ModelService, ScoredTask

logger = logging.getLogger(__name__)

__all__ = [
    "BulkProgress",
    "LabelStudioWriter",
    "ProgressFile",
    "ScoreWriter",
    "current_prediction",
    "run_bulk_scoring",
    "scoring_state",
]

PAGE_SIZE = 100
"""Tasks per listing page (Label Studio's own default page size)."""
WRITE_THREADS = 4
"""Task updates in flight at once (Label Studio answers several requests at a time)."""
WRITE_BATCH = 64
"""Scored tasks per write-back (one predictions import each): Label Studio 1.23 spent 8.3 ms of its CPU per
prediction imported 16 at a time, 1.5 ms per prediction imported 96 at a time (measured here)."""
CHUNKS_IN_FLIGHT = 2
"""Write-backs pending while the next tasks are predicted (bounds the memory of pending write-backs)."""


_FIELD_NAMES = tuple(TaskFields.__dataclass_fields__)
"""The task data fields every scoring writes: a task missing one is scored again."""
TaskState = Literal["expert", "done", "score"]


def _is_ours(version: str) -> bool:
    from model.registry import is_version_name

    return is_version_name(version)


def scoring_state(
    task: Mapping[str, Any], version: str, is_expert: Callable[[Mapping[str, Any]], bool]
) -> TaskState:
    """What bulk scoring does with ``task`` when ``version`` serves.

    Args:
        task: a Label Studio task (``data``; ``annotations`` and ``predictions`` when listed with them).
        version: the serving model version.
        is_expert: whether an expert annotated the task (``backend.training.expert_annotation`` under the
            configured ``EXPERT_MODE``).

    Returns:
        ``"expert"`` (an expert annotated it: not a candidate for review), ``"done"`` (already scored by
        ``version``: every field of ``TaskFields`` written, no error, and its prediction stored when the task
        lists predictions), or ``"score"``.

    >>> fields = {"discrepancy": 0.2, "priority": 0.3, "noise_grade": "minor", "noise_types": "missed:1"}
    >>> task = {"data": {**fields, "model_version": "v0002-x"}, "predictions": [{"model_version": "v0002-x"}]}
    >>> scoring_state(task, "v0002-x", lambda t: False)
    'done'
    >>> scoring_state(task, "v0003-y", lambda t: False)
    'score'
    >>> scoring_state(task, "v0003-y", lambda t: True)
    'expert'
    """
    if is_expert(task):
        return "expert"
    data = task.get("data") or {}
    if data.get("model_version") != version or data.get(SCORE_ERROR_FIELD):
        return "score"
    if any(name not in data for name in _FIELD_NAMES):  # written by a backend with fewer fields (no priority)
        return "score"
    if "predictions" in task and not current_prediction(task, version):
        return "score"
    return "done"


def current_prediction(task: Mapping[str, Any], version: str) -> bool:
    """Whether ``task`` holds a prediction of ``version`` made after its annotations last changed.

    An annotation created or edited after the prediction (a crowd annotator's, with ``CROWD_SOURCE=
    annotations``) makes it stale: the task is scored again and the prediction replaced. Timestamps are
    Label Studio's ``created_at``/``updated_at`` (datetimes or ISO strings); without them the prediction
    counts as current.

    >>> task = {"predictions": [{"model_version": "v1", "created_at": "2026-11-28T09:00:00Z"}],
    ...         "annotations": [{"updated_at": "2026-11-28T09:05:00Z"}]}
    >>> current_prediction(task, "v1"), current_prediction(task, "v2")
    (False, False)
    >>> current_prediction({**task, "annotations": [{"updated_at": "2026-11-28T08:00:00Z"}]}, "v1")
    True
    """
    made = [
        _stamp(p.get("created_at"))
        for p in task.get("predictions") or []
        if isinstance(p, Mapping) and p.get("model_version") == version
    ]
    if not made:
        return False
    changed = [
        _stamp(a.get("updated_at") or a.get("created_at"))
        for a in task.get("annotations") or []
        if isinstance(a, Mapping)
    ]
    known_made = [t for t in made if t is not None]
    known_changed = [t for t in changed if t is not None]
    if not known_made or not known_changed:
        return True
    return max(known_changed) <= max(known_made)


def _stamp(value: Any) -> float | None:
    """A Label Studio timestamp (datetime or ISO 8601 text) as Unix seconds; None if absent or unreadable."""
    from datetime import datetime

    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value.timestamp() if isinstance(value, datetime) else None


@dataclass
class BulkProgress:
    """Where a bulk-scoring job stands (``/health``'s ``bulk_scoring.<project>``).

    Attributes:
        project: the Label Studio project (None: the task source's only project).
        version: the serving version it scores with.
        state: ``running``, ``done``, ``stopped`` (asked to stop; the next run resumes), ``superseded``
            (another version serves now: that version's run scores the tasks) or ``failed``.
        total: tasks in the project (known after the first page).
        done: tasks looked at so far (scored, skipped, expert or failed).
        scored: tasks scored and written back by this run.
        skipped: tasks already scored by ``version`` (an earlier or interrupted run).
        expert: expert-annotated tasks (left out).
        failed: tasks that could not be scored or written (retried by the next run).
        started: Unix time the run started.
        updated: Unix time of the last change.
        error: why the run failed.
        reason: why the run ended early (``superseded``: the version that serves now).
    """

    project: int | None
    version: str = ""
    state: str = "running"
    total: int = 0
    done: int = 0
    scored: int = 0
    skipped: int = 0
    expert: int = 0
    failed: int = 0
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    error: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON for ``/health``, with ``tasks_per_s`` (scored and failed tasks per second of this run)
        and ``eta_s`` (the tasks not looked at yet, at that rate; None until the rate is known)."""
        out = asdict(self)
        elapsed = max(1e-6, (self.updated if self.state != "running" else time.time()) - self.started)
        worked = self.scored + self.failed
        rate = worked / elapsed if worked else None
        left = max(0, self.total - self.done)
        out["tasks_per_s"] = round(rate, 2) if rate else None
        out["eta_s"] = 0.0 if self.state != "running" else round(left / rate, 1) if rate else None
        out["seconds"] = round(elapsed, 1)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BulkProgress:
        """Back from :meth:`as_dict` (derived keys are ignored)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in names})


class ScoreWriter(Protocol):
    """Where a chunk's scores go; returns the ids of the tasks whose write-back failed."""

    def write(self, pairs: Sequence[tuple[ScoredTask, Mapping[str, Any]]]) -> set[int]: ...


class LabelStudioWriter:
    """Writes scored chunks into a Label Studio project (see the module docstring for the calls it makes).

    Args:
        client: a ``label_studio_sdk.LabelStudio`` client (thread-safe: one for every thread).
        project: the project the tasks belong to.
        threads: task updates in flight at once.
    """

    def __init__(self, client: Any, project: int, *, threads: int = WRITE_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        self._client = client
        self._project = int(project)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ls-bulk-write")

    def close(self) -> None:
        """Stop the update threads (after the pending updates)."""
        self._pool.shutdown(wait=True)

    def write(self, pairs: Sequence[tuple[ScoredTask, Mapping[str, Any]]]) -> set[int]:
        """Store the chunk's new predictions in one call, then update every task's data concurrently.

        Args:
            pairs: each scored task with the task as listed (its ``data`` and ``predictions``).

        Returns:
            Ids of the tasks not (fully) written: their ``data.model_version`` is not updated, so the
            next run scores them again.
        """
        from label_studio_sdk.types import PredictionRequest

        failed: set[int] = set()
        new = [
            (scored, task)
            for scored, task in pairs
            if scored.ok
            and scored.task_id is not None
            and not current_prediction(task, str(scored.prediction["model_version"]))
        ]
        replaced = {int(scored.task_id) for scored, _ in new}  # type: ignore[arg-type]
        if new:
            request = [
                PredictionRequest(
                    task=int(scored.task_id),  # type: ignore[arg-type]
                    result=scored.prediction["result"],
                    score=scored.prediction["score"],
                    model_version=scored.prediction["model_version"],
                )
                for scored, _ in new
            ]
            try:
                started = time.perf_counter()
                self._client.projects.import_predictions(id=self._project, request=request)
                logger.debug("imported %d predictions in %.2f s", len(new), time.perf_counter() - started)
            except Exception as exc:  # the lot is refused: none of these tasks is marked as scored
                logger.warning("importing %d predictions failed: %s", len(new), exc)
                failed.update(int(s.task_id) for s, _ in new if s.task_id is not None)
        started = time.perf_counter()
        jobs = [
            self._pool.submit(self._update, scored, task, replaced=scored.task_id in replaced)
            for scored, task in pairs
            if scored.task_id is not None and scored.task_id not in failed
        ]
        for job in jobs:
            task_id = job.result()
            if task_id is not None:
                failed.add(task_id)
        logger.debug("updated %d tasks in %.2f s", len(jobs), time.perf_counter() - started)
        return failed

    def _update(self, scored: ScoredTask, task: Mapping[str, Any], *, replaced: bool) -> int | None:
        """Delete the task's superseded predictions, write its fields; its id when that failed.

        Superseded: this backend's predictions (a registry version name) of another version, and, when a new
        one was just imported (``replaced``), the listed ones of the same version too; predictions of other
        sources (e.g. imported crowd predictions) stay.
        """
        task_id = int(scored.task_id)  # type: ignore[arg-type]
        try:
            if scored.ok:
                version = str(scored.prediction["model_version"])
                for old in task.get("predictions") or []:
                    old_version = str(old.get("model_version") or "")
                    stale = old_version != version or replaced
                    if stale and _is_ours(old_version) and old.get("id") is not None:
                        self._client.predictions.delete(id=int(old["id"]))
            data = task.get("data")
            if isinstance(data, Mapping):
                self._client.tasks.update(
                    id=task_id,
                    data={**data, **scored.writeback()},
                    request_options={"additional_query_parameters": LEAN_UPDATE},
                )
            else:  # listed without its data: read it first
                from backend.lsclient import merge_task_data

                merge_task_data(self._client, task_id, scored.writeback())
        except Exception as exc:  # one task's write fails alone; it is scored again next run
            logger.warning("writing task %s failed: %s", task_id, type(exc).__name__)
            logger.debug("writing task %s failed", task_id, exc_info=True)
            return task_id
        return None


class _PublishWriter:
    """:class:`ScoreWriter` over a task source's ``publish`` (sources other than Label Studio)."""

    def __init__(self, publish: Callable[[Sequence[ScoredTask]], None]) -> None:
        self._publish = publish

    def write(self, pairs: Sequence[tuple[ScoredTask, Mapping[str, Any]]]) -> set[int]:
        self._publish([scored for scored, _ in pairs])
        return set()


class ProgressFile:
    """A job's progress kept in a JSON file (``WORK_DIR/bulk-scoring/project-<p>.json``), so that a
    restarted backend shows the last run and resumes one that was still running.

    Args:
        folder: where the files live.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, project: int | None) -> Path:
        return self.folder / f"project-{'none' if project is None else int(project)}.json"

    def save(self, progress: BulkProgress) -> None:
        """Write atomically (a crash mid-write leaves the previous file).

        The temporary file's name is unique (process, thread, random part): two runs of one project (a
        re-scoring after a training beside a ``/rescore``, two replicas) never rename each other's file.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(progress.project)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps(progress.as_dict()))
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_all(self) -> list[BulkProgress]:
        """Every project's last saved progress (unreadable files are skipped with a warning)."""
        out = []
        for path in sorted(self.folder.glob("project-*.json")):
            try:
                out.append(BulkProgress.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("ignoring %s: %s", path, exc)
        return out


def _pages(
    source: Any, project: int | None, tasks: Iterable[Mapping[str, Any]] | None
) -> Iterator[tuple[list[Mapping[str, Any]], int]]:
    """Pages of tasks with the project's task count: given tasks, the source's pages, or its whole list."""
    if tasks is not None:
        listed = list(tasks)
        yield listed, len(listed)
        return
    pages = getattr(source, "task_pages", None)
    if callable(pages):
        yield from pages(project, PAGE_SIZE)
        return
    listed = list(source.tasks(project))
    yield listed, len(listed)


def _writer(source: Any, project: int | None) -> tuple[ScoreWriter, Callable[[], None]]:
    """Label Studio's fast writer when the source has a client (and the project is known), else publish."""
    client = getattr(source, "client", None)
    if client is not None and project is not None:
        writer = LabelStudioWriter(client, project)
        return writer, writer.close
    return _PublishWriter(source.publish), lambda: None


def run_bulk_scoring(
    *,
    project: int | None,
    source: Any,
    service: ModelService,
    schema: LabelSchema,
    is_expert: Callable[[Mapping[str, Any]], bool],
    chunk: int,
    tasks: Iterable[Mapping[str, Any]] | None = None,
    on_progress: Callable[[BulkProgress], None] | None = None,
    stop: threading.Event | None = None,
) -> BulkProgress:
    """Score every non-expert task of ``project`` not yet scored by the serving version, and write it back.

    Args:
        project: the Label Studio project.
        source: a :class:`backend.training.TaskSource`; with a ``client`` attribute (Label Studio) the
            write-back is :class:`LabelStudioWriter`, else its ``publish``; with ``task_pages(project,
            page_size)`` tasks are read page by page, else all at once through ``tasks``.
        service: the model holder (its serving version scores).
        schema: the project's labelling config.
        is_expert: whether an expert annotated a task (those are left out).
        chunk: tasks per scoring call (``PREDICT_BATCH``).
        tasks: the tasks, when the caller has listed them already (re-scoring after a training).
        on_progress: called after every chunk and page with the current progress.
        stop: set it to stop after the chunk in hand (the next run resumes).

    Before each write batch the registry's ``LATEST`` is read (a small file): once it names another version
    than the one this run scores with (a training published a newer one, or an older one was activated), the
    run writes nothing more and ends ``superseded`` (``reason`` names that version): the serving version's own
    run scores the tasks, and this one would overwrite or duplicate its predictions and fields.

    Returns:
        The final progress (``state`` ``done``, ``stopped``, ``superseded`` with ``reason``, or ``failed``
        with ``error``).

    Raises:
        ValueError: ``chunk`` < 1.
    """
    if chunk < 1:
        raise ValueError(f"chunk: expected >= 1, got {chunk}")
    _, version = service.current()  # fails fast (NoModelError) before reading any task
    # When the latest version could not be loaded, an older one serves: only a later change of LATEST counts.
    latest_at_start = service.latest_version()
    progress = BulkProgress(project=project, version=version)
    lock = threading.Lock()
    superseded_by: list[str] = []  # set by the chunk thread, read by this one

    def report() -> None:
        progress.updated = time.time()
        if on_progress is not None:
            on_progress(progress)

    report()
    writer, close = _writer(source, project)
    # One thread writes chunks in order while this one predicts the next; at most CHUNKS_IN_FLIGHT wait.
    chunk_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-chunk")
    in_flight: deque[Future[None]] = deque()

    def write(pairs: list[tuple[ScoredTask, Mapping[str, Any]]]) -> None:
        if not superseded_by:
            latest = service.latest_version()
            if latest is not None and latest not in (version, latest_at_start):
                superseded_by.append(latest)
        if superseded_by:
            raise _SupersededError(superseded_by[0])
        failed_ids = writer.write(pairs)
        with lock:
            for scored, _ in pairs:
                ok = scored.ok and scored.task_id not in failed_ids
                progress.scored += int(ok)
                progress.failed += int(not ok)
                progress.done += 1
            report()

    def drain(limit: int) -> None:
        while len(in_flight) > limit:
            in_flight.popleft().result()

    def settle() -> None:
        """Wait for the pending write-backs (those after a version change write nothing)."""
        while in_flight:
            try:
                in_flight.popleft().result()
            except _SupersededError:
                continue

    todo: list[Mapping[str, Any]] = []
    unwritten: list[tuple[ScoredTask, Mapping[str, Any]]] = []

    def submit(*, final: bool) -> None:
        nonlocal unwritten
        if len(unwritten) >= max(chunk, WRITE_BATCH) or (final and unwritten):
            drain(CHUNKS_IN_FLIGHT - 1)
            in_flight.append(chunk_pool.submit(write, unwritten))
            unwritten = []

    def flush(*, final: bool) -> None:
        nonlocal todo
        while len(todo) >= chunk or (final and todo):
            if superseded_by:  # predicting more is wasted: nothing more is written
                raise _SupersededError(superseded_by[0])
            part, todo = todo[:chunk], todo[chunk:]
            started = time.perf_counter()
            scored = service.score_tasks(part, schema, version=version)
            logger.debug("scored %d tasks in %.2f s", len(part), time.perf_counter() - started)
            unwritten.extend(zip(scored, part, strict=True))
            stopping = stop is not None and stop.is_set()
            submit(final=final or stopping)
            if stopping:
                raise _StopRequestedError
        submit(final=final)

    try:
        for page, total in _pages(source, project, tasks):
            with lock:
                progress.total = max(progress.total, total)
            for task in page:
                state = scoring_state(task, version, is_expert)
                if state == "score":
                    todo.append(task)
                    continue
                with lock:
                    progress.done += 1
                    progress.skipped += int(state == "done")
                    progress.expert += int(state == "expert")
            flush(final=False)
            with lock:
                report()
        flush(final=True)
        drain(0)
        with lock:
            progress.state = "done"
            progress.total = max(progress.total, progress.done)
            report()
    except (_StopRequestedError, _SupersededError):
        settle()
        with lock:
            if superseded_by:
                progress.state = "superseded"
                progress.reason = (
                    f"{superseded_by[0]} serves now; a run with it (a training's re-scoring, POST /rescore) "
                    "scores the tasks"
                )
                logger.warning("bulk scoring of project %s with %s: %s", project, version, progress.reason)
            else:
                progress.state = "stopped"
            report()
    except Exception as exc:
        with lock:
            progress.state = "failed"
            progress.error = str(exc)[:2000]
            report()
        raise
    finally:
        chunk_pool.shutdown(wait=True)
        close()
    logger.info(
        "bulk scoring of project %s with %s %s: %d scored, %d already scored, %d expert, %d failed in %.1f s",
        project,
        version,
        progress.state,
        progress.scored,
        progress.skipped,
        progress.expert,
        progress.failed,
        progress.updated - progress.started,
    )
    return progress


class _StopRequestedError(Exception):
    """Raised inside :func:`run_bulk_scoring` when its ``stop`` event is set."""


class _SupersededError(Exception):
    """Raised inside :func:`run_bulk_scoring` once the registry serves another version than the run's."""
