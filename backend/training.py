"""Background retraining on expert annotations, one job at a time, in a separate process.

Flow: a webhook event (``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` from an expert, or ``START_TRAINING``)
-> :meth:`TrainingManager.on_event` answers at once -> a worker thread gathers the expert-annotated tasks
(:class:`TaskSource`), writes the job, runs ``python -m backend.train_job`` as a child process, and on success
switches the server to the newly published version and re-scores the remaining (non-expert) tasks.

* Bursts coalesce: requests during a running job queue one pending entry per project (its kinds merged,
  see :meth:`TrainingManager.request`); the entries run after it, in the order their projects were first
  requested.
* Annotation events train only when the number of distinct expert-annotated tasks of the project seen since
  its last successful training reached ``TRAIN_MIN_ANNOTATIONS``; ``START_TRAINING`` trains whenever there is
  >= 1 expert task. A failed training gives its count back, so the next expert annotation retries it.
* After a training the project's tasks are listed again (annotations, data and predictions made during the
  training) for the calibration and the re-scoring.
* A job whose child process published its version and then died before reporting it counts as succeeded.
* The previous model keeps serving during training and after a failure; the failure shows in the logs and in
  ``/health`` (``training.state == "failed"``, ``training.last_error``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backend.calibration import ProjectCalibration, calibrate_project, skipped_summary
from backend.images import ImageLoader, LoadedImage
from backend.labelconfig import DROP_LABEL_NAMES, LabelSchema, parse_label_config
from backend.lsclient import merge_task_data
from backend.metrics import TrainingCounts
from backend.roles import UserDirectory, expert_annotation
from backend.service import ModelService, ScoredTask
from backend.settings import ExpertMode, ExpertPolicy, Settings
from backend.train_job import PROGRESS_NAME, TrainItem, job_settings
from formats.images import write_image
from formats.labelstudio import regions_to_detections
from selection.detections import Detections

logger = logging.getLogger(__name__)

__all__ = [
    "ExpertTrainingSet",
    "LabelStudioSource",
    "TaskSource",
    "TrainingManager",
    "expert_annotation",
    "training_items",
]

_TRAIN_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
_KINDS = ("bootstrap", "expert")
"""Training kinds, in the order one project's pending kinds run (an expert training warm-starts from the
bootstrapped version)."""


class TaskSource(Protocol):
    """Where training data comes from and where new scores go (Label Studio in production)."""

    def label_config(self, project: int | None) -> str: ...

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        """Every task of the project with its ``annotations`` (``completed_by``, ``ground_truth``...)."""
        ...

    def publish(self, scored: Sequence[ScoredTask]) -> None:
        """Store new predictions and task fields."""
        ...


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    for name in ("model_dump", "dict"):
        if hasattr(obj, name):
            return dict(getattr(obj, name)())
    raise TypeError(f"expected a mapping or pydantic model, got {type(obj).__name__}")


class LabelStudioSource:
    """:class:`TaskSource` over the Label Studio API (label-studio-sdk 2.x)."""

    def __init__(self, settings: Settings) -> None:
        from backend.lsclient import make_sdk_client

        if not settings.label_studio_enabled:
            raise ValueError(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY: both needed to train from Label Studio"
            )
        self._client = make_sdk_client(str(settings.label_studio_url), str(settings.label_studio_api_key))
        self.users = UserDirectory(lambda: self._client)

    def label_config(self, project: int | None) -> str:
        if project is None:
            raise ValueError("project: the webhook did not say which project to train on")
        return str(self._client.projects.get(id=project).label_config)

    @property
    def client(self) -> Any:
        """The SDK client (bulk scoring writes through it: ``backend.bulk.LabelStudioWriter``)."""
        return self._client

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return [task for page, _ in self.task_pages(project, 100) for task in page]

    def task_pages(self, project: int | None, page_size: int) -> Iterator[tuple[list[dict[str, Any]], int]]:
        """The project's tasks a page at a time, ordered by id, each with the project's task count.

        Tasks carry ``annotations`` (with ``completed_by_email``) and ``predictions``.
        """
        if project is None:
            raise ValueError("project: the webhook did not say which project to train on")
        query = json.dumps({"ordering": ["tasks:id"]})
        seen, number = 0, 1
        while True:
            try:
                page = self._client.tasks.list(
                    project=project,
                    fields="all",
                    page=number,
                    page_size=page_size,
                    query=query,
                    # The stored image references (s3://...), the same ones /predict receives.
                    resolve_uri=False,
                )
            except Exception as exc:  # Label Studio answers 404 for a page past the end
                if number > 1 and getattr(exc, "status_code", None) == 404:
                    return
                raise
            items = [self._item(task) for task in page.items or []]
            total = int(getattr(page.response, "total", None) or 0)
            seen += len(items)
            yield items, total
            if len(items) < page_size or seen >= total:
                return
            number += 1

    def _item(self, task: Any) -> dict[str, Any]:
        item = _as_dict(task)
        item["annotations"] = [_as_dict(a) for a in item.get("annotations") or []]
        item["predictions"] = [_as_dict(p) for p in item.get("predictions") or []]
        for ann in item["annotations"]:
            author = ann.get("completed_by")
            if isinstance(author, int):
                ann["completed_by_email"] = self.users.email(author) or ""
        return item

    def publish(self, scored: Sequence[ScoredTask]) -> None:
        """Create each scored task's prediction, remove the ones it supersedes, merge the task fields.

        Superseded = this backend's predictions (model_version named like a registry version) of another
        version; predictions of other sources (e.g. imported crowd predictions) and annotations stay.
        A task that failed gets only its ``score_error`` field.
        """
        for item in scored:
            if item.task_id is None:
                continue
            if item.ok:
                pred = item.prediction
                self._client.predictions.create(
                    task=item.task_id,
                    result=pred["result"],
                    score=pred["score"],
                    model_version=pred["model_version"],
                )
                self._remove_superseded(item.task_id, str(pred["model_version"]))
            merge_task_data(self._client, item.task_id, item.writeback())

    def _remove_superseded(self, task_id: int, version: str) -> None:
        from model.registry import is_version_name

        for old in self._client.predictions.list(task=task_id):
            old_version = str(getattr(old, "model_version", "") or "")
            if old_version != version and is_version_name(old_version) and old.id is not None:
                self._client.predictions.delete(id=old.id)


@dataclass(frozen=True)
class ExpertTrainingSet:
    """What :func:`training_items` made of a project's expert annotations.

    Attributes:
        items: one training item per usable expert-annotated task, in task order.
        task_ids: those tasks' ids (the job's ``task_ids``, kept as the version's ``meta["trained_on"]``).
        skipped: task id -> why it was left out (no image field, an image that cannot be loaded, a region
            that cannot be read, such as a rotated rectangle), for each expert-annotated task left out.
    """

    items: list[TrainItem]
    task_ids: list[int]
    skipped: dict[str, str] = field(default_factory=dict)


_MAX_NAMED = 5  # skipped tasks named in an error message (the log names every one)


def training_items(
    tasks: Sequence[Mapping[str, Any]],
    *,
    schema: LabelSchema,
    names: Sequence[str],
    policy: ExpertPolicy,
    loader: ImageLoader,
    image_dir: Path,
) -> ExpertTrainingSet:
    """Expert-annotated tasks -> training items (image on disk, boxes as model class ids).

    Labels map to ``names`` through ``schema.label_map`` read backwards (the same mapping ``/predict`` uses);
    labels that map to no model class (e.g. a ``background`` deletion label) are left out. Images from HTTP
    or data URIs are saved under ``image_dir`` at their own depth (``formats.images.write_image``: 16-bit
    stays 16-bit), so that the dataset writer normalises them exactly as it normalises local files and as
    ``/predict`` does.

    An expert task that cannot be read (no image field, an image that cannot be loaded, a malformed or
    rotated rectangle of a label that maps to a class) is left out with a warning naming it and why (as
    calibration leaves it out), and listed in ``skipped``; the other tasks still train.

    Raises:
        ValueError: no label of the config maps to a model class (training would see no boxes at all), or
            there are expert-annotated tasks and none of them can be read (the message names them and why).
    """
    label_to_class = schema.label_map(names).label_to_class
    if not label_to_class:
        raise ValueError(
            f"no label of the labelling config {list(schema.labels)} maps to a model class {list(names)}: "
            'name the classes in a <Label predicted_values="..."> attribute or rename the labels'
        )
    items: list[TrainItem] = []
    task_ids: list[int] = []
    skipped: dict[str, str] = {}
    image_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        ann = expert_annotation(task, policy)
        if ann is None:
            continue
        tid = task.get("id", "?")
        try:
            image, det = _expert_example(task, ann, schema, label_to_class, loader)
        except (ValueError, TypeError, AttributeError) as exc:  # one bad task must not stop the others
            why = str(exc).removeprefix(f"task {tid}: ")
            logger.warning("task %s: skipped for training (%s)", tid, why)
            skipped[str(tid)] = why
            continue
        path = image.path
        if path is None:
            path = write_image(image_dir / f"task{tid}", image.pixels)
        items.append(
            TrainItem(path=path, xyxy=det.xyxy, class_id=det.class_id, width=image.width, height=image.height)
        )
        if isinstance(tid, int) or (isinstance(tid, str) and tid.isdigit()):
            task_ids.append(int(tid))
    if skipped and not items:
        raise ValueError(
            f"none of the {len(skipped)} expert-annotated tasks can be trained on: "
            f"{skipped_summary(skipped, limit=_MAX_NAMED)}"
        )
    return ExpertTrainingSet(items, sorted(task_ids), skipped)


def _expert_example(
    task: Mapping[str, Any],
    ann: Mapping[str, Any],
    schema: LabelSchema,
    label_to_class: Mapping[str, int],
    loader: ImageLoader,
) -> tuple[LoadedImage, Detections]:
    """One expert task's image (at its own depth) and boxes (model class ids).

    Raises:
        ValueError: no image field, the image cannot be loaded (``ImageLoadError``), or a region of a label
            that maps to a class cannot be read (``annotation <id>: region <i>: ...``).
    """
    url = (task.get("data") or {}).get(schema.image_key)
    if not isinstance(url, str):
        raise ValueError(f"no data.{schema.image_key} (the image URL)")
    image = loader.decode(url, task=str(task.get("id", "?")))
    try:
        regions = [
            r
            for r in ann.get("result") or []
            if r.get("from_name") == schema.from_name
            and str(((r.get("value") or {}).get("rectanglelabels") or [""])[0]) in label_to_class
        ]
        det = regions_to_detections(
            regions,
            label_to_id=label_to_class,
            width=image.width,
            height=image.height,
            from_name=schema.from_name,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"annotation {ann.get('id', '?')}: {exc}") from None
    return image, det


def count_expert_tasks(tasks: Sequence[Mapping[str, Any]], policy: ExpertPolicy) -> int:
    return sum(expert_annotation(t, policy) is not None for t in tasks)


def read_job_progress(job_dir: Path) -> dict[str, Any]:
    """The running job's progress (``{"epoch": k, "epochs": n}`` once an epoch ended), else ``{}``."""
    try:
        progress = json.loads((job_dir / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def run_train_job(
    job_dir: Path, job: Mapping[str, Any], *, on_progress: Callable[[dict[str, Any]], None] | None = None
) -> str:
    """Write ``job_dir/job.json``, run ``python -m backend.train_job`` on it as a child process, wait.

    Args:
        job_dir: the job's folder (the child writes ``train.log``, ``progress.json``, ``result.json`` there).
        job: the job (see ``backend.train_job``).
        on_progress: called with :func:`read_job_progress` about once a second while the child runs.

    Returns:
        The published version name.

    Raises:
        RuntimeError: the job failed (its error and the log's tail in the message).
    """
    job_path = job_dir / "job.json"
    job_path.write_text(json.dumps(job))
    log_path = job_dir / "train.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.train_job", str(job_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        while True:
            try:
                returncode = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                if on_progress is not None:
                    on_progress(read_job_progress(job_dir))
    result_path = job_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if returncode != 0 or "version" not in result:
        tail = log_path.read_text(errors="replace")[-800:]
        raise RuntimeError(
            f"training job exited with {returncode}: {result.get('error', 'no result')} "
            f"(log {log_path}): {tail}"
        )
    return str(result["version"])


class TrainingManager:
    """Runs at most one training job at a time and reports its state for ``/health``.

    Args:
        settings: backend settings (thresholds, epochs, folders).
        service: the model holder to switch after a successful job and to re-score with.
        source: training data and score sink; ``None`` builds a :class:`LabelStudioSource` on first use.
    """

    def __init__(
        self, settings: Settings, service: ModelService, *, source: TaskSource | None = None
    ) -> None:
        self.settings = settings
        self.service = service
        self._source = source
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._rescore_thread: threading.Thread | None = None
        # Whether a worker thread owns the queue: set by request() when it starts one, cleared by the worker
        # in the same critical section in which it finds the queue empty, so no request is left behind.
        self._running = False
        # Project -> the kinds requested for it (run order), projects in the order they were first requested.
        self._queue: dict[int | None, list[str]] = {}
        self._last_project: int | None = None  # the project last named by a request or an expert annotation
        self._state = "idle"
        self._last_error: str | None = None
        self._last_version: str | None = None
        self._last_seconds: float | None = None
        # Project -> expert-annotated task ids seen by webhooks since its last successful training (a running
        # expert job holds its project's ids and gives them back if it fails).
        self._seen: dict[int | None, set[int]] = {}
        self._bulk: dict[int | None, Any] = {}  # project -> its last bulk-scoring progress
        self.counts = TrainingCounts()  # finished jobs, for /metrics
        self._kind: str | None = None  # the current or last job's kind
        self._job_dir: Path | None = None
        self.on_progress: Callable[[dict[str, Any]], None] | None = None  # e.g. a queue worker's reporter
        self.last_schema_xml: str | None = None
        self._users: UserDirectory | None = None

    def source(self) -> TaskSource:
        if self._source is None:
            self._source = LabelStudioSource(self.settings)
        return self._source

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self._state,
                "last_error": self._last_error,
                "last_version": self._last_version,
                "last_seconds": self._last_seconds,
                "pending": bool(self._queue),
                # Counted towards the next training of the project last named (min_annotations applies to
                # each project alone).
                "new_expert_tasks": len(self._seen.get(self._last_project, ())),
                "min_annotations": self.settings.train_min_annotations,
                "kind": self._kind,
                "progress": read_job_progress(self._job_dir)
                if self._state == "running" and self._job_dir is not None
                else {},
            }

    def on_event(
        self,
        action: str,
        *,
        project: int | None,
        annotation: Mapping[str, Any] | None = None,
        task: Mapping[str, Any] | None = None,
    ) -> str:
        """Handle a webhook action; returns the status text at once (never blocks on training)."""
        if action == "START_TRAINING":
            return self.request(project)
        if action not in _TRAIN_ACTIONS or annotation is None:
            return "ignored"
        email = self._author_email(annotation)
        if not self.settings.expert.is_expert(annotation, user_email=email):
            return "not an expert annotation"
        task_id = annotation.get("task")
        if task_id is None and task is not None:
            task_id = task.get("id")
        with self._lock:
            seen = self._expert_tasks_seen(project)
            if task_id is not None:
                seen.add(int(task_id))
            n = len(seen)
            self._last_project = project
        if n < self.settings.train_min_annotations:
            return f"not enough annotations ({n}/{self.settings.train_min_annotations})"
        return self.request(project)

    def _author_email(self, annotation: Mapping[str, Any]) -> str | None:
        """The author's e-mail: webhooks carry ``completed_by`` as a bare user id, resolved through the
        Label Studio users API (cached) when the policy needs e-mails."""
        if self.settings.expert.mode is ExpertMode.ALL and not self.settings.expert.crowd_emails:
            return None
        if self._users is None and self.settings.label_studio_enabled:
            from backend.lsclient import make_sdk_client

            url, key = str(self.settings.label_studio_url), str(self.settings.label_studio_api_key)
            self._users = UserDirectory(lambda: make_sdk_client(url, key))
        return self._users.author_email(annotation) if self._users is not None else None

    def _expert_tasks_seen(self, project: int | None) -> Any:
        """The set of ``project``'s expert-annotated task ids counted towards its next training (call with
        the lock held; ``backend.jobs.RedisTrainer`` keeps them in Redis, shared by its replicas)."""
        return self._seen.setdefault(project, set())

    def request(self, project: int | None, *, kind: str = "expert") -> str:
        """Queue a training job; ``"pending"`` when one is running (the queued ones run after it).

        Each project has at most one pending entry, run in the order the projects were first requested;
        asking again for a pending project adds nothing but a kind it does not have yet. Its kinds run
        bootstrap first: an expert training then warm-starts from the bootstrapped version.

        ``kind="bootstrap"`` trains the first version on the project's crowd labels (``backend.bootstrap``).

        Raises:
            ValueError: ``kind`` is neither ``"expert"`` nor ``"bootstrap"``.
        """
        if kind not in _KINDS:
            raise ValueError(f"kind: expected one of {list(_KINDS)}, got {kind!r}")
        with self._lock:
            kinds = self._queue.setdefault(project, [])
            if kind not in kinds:
                kinds.append(kind)
                kinds.sort(key=_KINDS.index)
            self._last_project = project
            if self._running:
                return "pending"
            self._running = True
            self._thread = threading.Thread(target=self._worker, name="training", daemon=True)
            self._thread.start()
            return "training queued"

    def training_counts(self) -> TrainingCounts:
        """Finished jobs, failures and their seconds (for /metrics)."""
        with self._lock:
            return self.counts

    def train_once(self, project: int | None, *, kind: str = "expert") -> str:
        """One job, synchronously (what a queue worker runs): train, publish, switch, re-score; the version.

        ``kind="bootstrap"`` trains on the project's crowd labels instead of its expert annotations.

        Raises:
            Exception: whatever stopped the job (no expert tasks, Label Studio unreachable, training failed).
        """
        if kind == "bootstrap":
            return self._bootstrap_once(project)
        return self._train_once(project)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker is done (tests, shutdown); True if it finished."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _worker(self) -> None:
        """Run the queued jobs one after the other; exit (clearing ``_running``) once the queue is empty."""
        exited = False
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        # Decided under the lock request() takes: a later request starts a new worker.
                        self._running = False
                        exited = True
                        if self._state == "running":
                            self._state = "idle"
                        return
                    project, kinds = next(iter(self._queue.items()))
                    kind = kinds.pop(0)
                    if not kinds:
                        del self._queue[project]
                    counted: set[int] = set()
                    if kind == "expert":  # the ids this training consumes; given back if it fails
                        seen = self._expert_tasks_seen(project)
                        counted = set(seen)
                        seen.clear()
                    self._kind = kind
                    self._job_dir = None
                    self._state = "running"
                self._run_job(project, kind, counted)
        finally:
            if not exited:  # an error escaped the loop: let the next request start a worker
                with self._lock:
                    self._running = False

    def _run_job(self, project: int | None, kind: str, counted: set[int]) -> None:
        start = time.monotonic()
        try:
            version = self.train_once(project, kind=kind)
        except Exception as exc:
            logger.error("training failed: %s", exc)
            logger.debug("training failed", exc_info=True)
            with self._lock:
                seen = self._expert_tasks_seen(project)
                for task_id in counted:  # they still count towards the next training of the project
                    seen.add(task_id)
                self._state = "failed"
                self._last_error = str(exc)[:2000]
                self._last_seconds = round(time.monotonic() - start, 1)
                self.counts = _add_run(self.counts, time.monotonic() - start, failed=True)
            return
        with self._lock:
            self._state = "idle"
            self._last_error = None
            self._last_version = version
            self._last_seconds = round(time.monotonic() - start, 1)
            self.counts = _add_run(self.counts, time.monotonic() - start, failed=False)

    def _train_once(self, project: int | None) -> str:
        source = self.source()
        schema = parse_label_config(source.label_config(project))
        tasks = source.tasks(project)
        n_expert = count_expert_tasks(tasks, self.settings.expert)
        if n_expert == 0:
            raise ValueError(
                f"no expert-annotated tasks to train on (EXPERT_MODE={self.settings.expert.describe()})"
            )
        latest = self.service.registry.latest()
        names = list(latest.meta.get("names") or []) if latest is not None else []
        if not names and self.service.loaded_version is not None:
            names = list(self.service.current()[0].names)
        if not names:
            names = [lab for lab in schema.labels if lab.lower() not in DROP_LABEL_NAMES]
        job_dir = self.settings.scratch_dir / f"job-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        job_dir.mkdir(parents=True, exist_ok=True)
        expert_set = training_items(
            tasks,
            schema=schema,
            names=names,
            policy=self.settings.expert,
            loader=self.service.loader,
            image_dir=job_dir / "images",
        )
        if expert_set.skipped:
            logger.warning(
                "%d of %d expert tasks left out of this training: %s",
                len(expert_set.skipped),
                n_expert,
                skipped_summary(expert_set.skipped, limit=_MAX_NAMED),
            )
        items = sorted(expert_set.items, key=lambda it: str(it.path))
        n_val = len(items) // 10 if len(items) >= 10 else 0
        train, val = (items[n_val:], items[:n_val]) if n_val else (items, items)
        family = self.settings.detector_family
        # Warm start only from weights the configured family can read.
        warm = latest if latest is not None and latest.family == family else None
        init = str(warm.weights) if warm is not None else self.settings.train_init
        job = {
            **job_settings(self.settings),
            "work_dir": str(job_dir),
            "names": names,
            "train": [it.as_json() for it in train],
            "val": [it.as_json() for it in val],
            "init": init,
            # The tasks it trains on (the version's meta["trained_on"]): a skipped task stays one that
            # calibration may learn from and a later training may train on once it is fixed.
            "task_ids": expert_set.task_ids,
            "skipped": expert_set.skipped,
        }
        logger.info(
            "training a %s detector on %d expert tasks (%d val) from %s, %d epochs",
            family,
            len(train),
            len(val),
            Path(init).name or "the family's default",
            self.settings.train_epochs,
        )
        version = self._publish(job_dir, job)
        self.service.switch(version)
        # The training may have taken hours: calibrate and re-score on what the project holds now (new
        # expert annotations, task data written meanwhile, predictions made meanwhile).
        self._calibrate_quietly(source, schema, version, project)
        logger.info("now serving %s; re-scoring the non-expert tasks", version)
        # A tasks file names no project: its tasks may (the bulk progress is kept by project).
        self._rescore(source, schema, project if project is not None else _project_of(tasks))
        return version

    def _bootstrap_once(self, project: int | None) -> str:
        """Train the first version on the project's crowd labels (``backend.bootstrap``), then re-score."""
        from backend.bootstrap import new_job_dir, prepare_bootstrap

        source = self.source()
        job_dir = new_job_dir(self.settings)
        job = prepare_bootstrap(self.settings, source, project, loader=self.service.loader, job_dir=job_dir)
        version = self._publish(job_dir, job.job)
        self.service.switch(version)
        logger.info("now serving %s (bootstrapped from crowd labels); scoring the tasks", version)
        self._rescore(source, job.schema, project if project is not None else _project_of(job.tasks))
        return version

    def _publish(self, job_dir: Path, job: Mapping[str, Any]) -> str:
        """Run the job (:func:`run_train_job`) under a fresh ``job_id``; the version it published.

        A child that published its version and then died (killed, out of memory) before writing its result
        still moved the registry's ``LATEST``, which every process now serves: when ``LATEST`` is the
        version whose meta carries this job's id, the job counts as succeeded (with a warning).
        """
        job_id = uuid.uuid4().hex
        self._job_dir = job_dir
        try:
            return run_train_job(job_dir, {**job, "job_id": job_id}, on_progress=self.on_progress)
        except Exception as exc:
            latest = self.service.registry.latest()
            if latest is None or latest.meta.get("job_id") != job_id:
                raise
            logger.warning(
                "training job %s published %s but then failed (%s); using that version",
                job_dir.name,
                latest.version,
                exc,
            )
            return latest.version

    def calibrate(self, project: int | None, *, version: str | None = None) -> ProjectCalibration:
        """Fit and store the grade calibration of ``version`` (default: the serving one) on the project's
        expert tasks (``backend.calibration``)."""
        source = self.source()
        schema = parse_label_config(source.label_config(project))
        tasks = source.tasks(project)
        return calibrate_project(self.service, tasks, schema, version=version, project=project)

    def _calibrate_quietly(
        self, source: TaskSource, schema: LabelSchema, version: str, project: int | None
    ) -> None:
        """Calibrate a new version on the project's tasks listed now, before it re-scores; a failure leaves
        the LSM's grades (logged)."""
        try:
            tasks = source.tasks(project)
            calibrate_project(self.service, tasks, schema, version=version, project=project)
        except Exception as exc:
            logger.warning("calibration of %s failed (the LSM's grades apply): %s", version, exc)

    def rescore(self, project: int | None, *, on_progress: Any = None) -> int:
        """Bulk scoring (``backend.bulk``): every non-expert task of the project not yet scored by the
        serving version, read page by page, scored in chunks, written back; the number of tasks scored.

        Args:
            project: the Label Studio project.
            on_progress: also called with each ``backend.bulk.BulkProgress`` (a queue job's meta).
        """
        source = self.source()
        schema = parse_label_config(source.label_config(project))
        return int(self._bulk_score(source, schema, project, None, on_progress).scored)

    def request_rescore(self, project: int | None) -> str:
        """Run :meth:`rescore` in a background thread (one at a time); the status text at once."""
        with self._lock:
            if self._rescore_thread is not None and self._rescore_thread.is_alive():
                return "already running"
            self._rescore_thread = threading.Thread(
                target=self._rescore_worker, args=(project,), name="rescore", daemon=True
            )
            self._rescore_thread.start()
        return "re-scoring queued"

    def bulk_status(self) -> dict[str, Any]:
        """Each project's last bulk-scoring progress (``/health``'s ``bulk_scoring``), by project id."""
        from backend.bulk import ProgressFile

        with self._lock:
            known = dict(self._bulk)
        for saved in ProgressFile(self._bulk_dir()).load_all():  # runs of an earlier process
            known.setdefault(saved.project, saved)
        return {("none" if p is None else str(p)): prog.as_dict() for p, prog in known.items()}

    def resume_bulk_scoring(self) -> list[int | None]:
        """Restart the bulk-scoring runs an earlier process left ``running`` (it died or was stopped);
        each continues where it stopped (tasks already scored are skipped). The projects resumed."""
        from backend.bulk import ProgressFile

        resumed = [p.project for p in ProgressFile(self._bulk_dir()).load_all() if p.state == "running"]
        if not resumed:
            return []
        logger.info("resuming the bulk scoring of project(s) %s", ", ".join(map(str, resumed)))
        with self._lock:  # one thread, the projects one after the other (as request_rescore runs them)
            self._rescore_thread = threading.Thread(
                target=self._resume_worker, args=(resumed,), name="rescore", daemon=True
            )
            self._rescore_thread.start()
        return resumed

    def _bulk_dir(self) -> Path:
        return self.settings.scratch_dir / "bulk-scoring"

    def _resume_worker(self, projects: Sequence[int | None]) -> None:
        for project in projects:
            self._rescore_worker(project)

    def _rescore_worker(self, project: int | None) -> None:
        try:
            self.rescore(project)
        except Exception as exc:  # a background job: report and carry on
            logger.error("re-scoring project %s failed: %s", project, exc)

    def _bulk_score(
        self,
        source: TaskSource,
        schema: LabelSchema,
        project: int | None,
        tasks: Sequence[Mapping[str, Any]] | None,
        on_progress: Any = None,
    ) -> Any:
        """Run ``backend.bulk.run_bulk_scoring``, its progress kept for ``/health`` and in a file."""
        from backend.bulk import BulkProgress, ProgressFile, run_bulk_scoring

        store = ProgressFile(self._bulk_dir())
        last_saved = [0.0]

        def keep(progress: BulkProgress) -> None:
            with self._lock:
                self._bulk[progress.project] = progress
            now = time.monotonic()
            if progress.state != "running" or now - last_saved[0] >= 1.0:
                last_saved[0] = now
                store.save(progress)
            if on_progress is not None:
                on_progress(progress)

        return run_bulk_scoring(
            project=project,
            source=source,
            service=self.service,
            schema=schema,
            is_expert=lambda task: expert_annotation(task, self.settings.expert) is not None,
            chunk=max(1, self.settings.predict_batch),
            tasks=tasks,
            on_progress=keep,
        )

    def _rescore(self, source: TaskSource, schema: LabelSchema, project: int | None) -> int:
        """Score the non-expert tasks with the new model and publish them (see :meth:`rescore`), listing the
        project's tasks afresh (never a listing from before the training: its data would be written back)."""
        try:
            return int(self._bulk_score(source, schema, project, None).scored)
        except Exception as exc:  # the new version serves anyway; POST /rescore finishes the job later
            logger.warning("re-scoring project %s after the training failed: %s", project, exc)
            return 0


def _project_of(tasks: Sequence[Mapping[str, Any]]) -> int | None:
    """The project the tasks name (``task["project"]``), if any."""
    return next((int(t["project"]) for t in tasks if isinstance(t.get("project"), int)), None)


def _add_run(counts: TrainingCounts, seconds: float, *, failed: bool) -> TrainingCounts:
    return TrainingCounts(counts.runs + 1, counts.failures + int(failed), counts.seconds + seconds)
