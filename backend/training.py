"""Background retraining on expert annotations, one job at a time, in a separate process.

Flow: a webhook event (``ANNOTATION_CREATED``/``ANNOTATION_UPDATED`` from an expert, or ``START_TRAINING``)
-> :meth:`TrainingManager.on_event` answers at once -> a worker thread gathers the expert-annotated tasks
(:class:`TaskSource`), writes the job, runs ``python -m backend.train_job`` as a child process, and on success
switches the server to the newly published version and re-scores the remaining (non-expert) tasks.

* Bursts coalesce: events during a running job set ``pending``; one more job runs after it.
* Annotation events train only when the number of distinct expert-annotated tasks seen since the last
  training reached ``TRAIN_MIN_ANNOTATIONS``; ``START_TRAINING`` trains whenever there is >= 1 expert task.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from backend.images import ImageLoader
from backend.labelconfig import DROP_LABEL_NAMES, LabelSchema, parse_label_config
from backend.lsclient import merge_task_data
from backend.metrics import TrainingCounts
from backend.service import ModelService, ScoredTask
from backend.settings import ExpertPolicy, Settings, lsm_as_dict
from formats.labelstudio import regions_to_detections

logger = logging.getLogger(__name__)

__all__ = ["LabelStudioSource", "TaskSource", "TrainingManager", "expert_annotation", "training_items"]

_TRAIN_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


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
        self._emails: dict[int, str] = {}

    def label_config(self, project: int | None) -> str:
        if project is None:
            raise ValueError("project: the webhook did not say which project to train on")
        return str(self._client.projects.get(id=project).label_config)

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        if project is None:
            raise ValueError("project: the webhook did not say which project to train on")
        out = []
        for task in self._client.tasks.list(project=project, fields="all", page_size=100):
            item = _as_dict(task)
            item["annotations"] = [_as_dict(a) for a in item.get("annotations") or []]
            for ann in item["annotations"]:
                author = ann.get("completed_by")
                if isinstance(author, int):
                    ann["completed_by_email"] = self._email(author)
            out.append(item)
        return out

    def _email(self, user_id: int) -> str:
        if user_id not in self._emails:
            try:
                self._emails[user_id] = str(self._client.users.get(id=user_id).email or "")
            except Exception:  # a deleted or hidden user: not an expert
                self._emails[user_id] = ""
        return self._emails[user_id]

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


def expert_annotation(task: Mapping[str, Any], policy: ExpertPolicy) -> dict[str, Any] | None:
    """The task's most recent expert annotation (by ``updated_at``, then ``id``), or None."""
    best: dict[str, Any] | None = None
    for ann in task.get("annotations") or []:
        if not isinstance(ann, Mapping):
            continue
        email = ann.get("completed_by_email")
        if not policy.is_expert(ann, user_email=str(email) if email else None):
            continue
        key = (str(ann.get("updated_at") or ""), int(ann.get("id") or 0))
        if best is None or key >= (str(best.get("updated_at") or ""), int(best.get("id") or 0)):
            best = dict(ann)
    return best


@dataclass(frozen=True)
class _Item:
    path: Path
    xyxy: np.ndarray
    class_id: np.ndarray
    width: int
    height: int

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "xyxy": self.xyxy.tolist(),
            "class_id": self.class_id.tolist(),
            "width": self.width,
            "height": self.height,
        }


def training_items(
    tasks: Sequence[Mapping[str, Any]],
    *,
    schema: LabelSchema,
    names: Sequence[str],
    policy: ExpertPolicy,
    loader: ImageLoader,
    image_dir: Path,
) -> list[_Item]:
    """Expert-annotated tasks -> training items (image on disk, boxes as model class ids).

    Labels map to ``names`` through ``schema.label_map`` read backwards (the same mapping ``/predict`` uses);
    labels that map to no model class (e.g. a ``background`` deletion label) are left out. Images from HTTP
    or data URIs are saved under ``image_dir`` as PNG.

    Raises:
        ValueError: no label of the config maps to a model class (training would see no boxes at all).
    """
    label_to_class = schema.label_map(names).label_to_class
    if not label_to_class:
        raise ValueError(
            f"no label of the labelling config {list(schema.labels)} maps to a model class {list(names)}: "
            'name the classes in a <Label predicted_values="..."> attribute or rename the labels'
        )
    items = []
    image_dir.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        ann = expert_annotation(task, policy)
        if ann is None:
            continue
        tid = task.get("id", "?")
        data = task.get("data") or {}
        url = data.get(schema.image_key)
        if not isinstance(url, str):
            logger.warning("task %s: no data.%s; skipped for training", tid, schema.image_key)
            continue
        image = loader.load(url, task=str(tid))
        path = image.path
        if path is None:
            path = image_dir / f"task{tid}.png"
            Image.fromarray(image.pixels).save(path)
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
        items.append(
            _Item(path=path, xyxy=det.xyxy, class_id=det.class_id, width=image.width, height=image.height)
        )
    return items


def count_expert_tasks(tasks: Sequence[Mapping[str, Any]], policy: ExpertPolicy) -> int:
    return sum(expert_annotation(t, policy) is not None for t in tasks)


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
        self._pending = False
        self._pending_project: int | None = None
        self._state = "idle"
        self._last_error: str | None = None
        self._last_version: str | None = None
        self._last_seconds: float | None = None
        self._seen: set[int] = set()  # expert-annotated task ids seen by webhooks since the last training
        self.counts = TrainingCounts()  # finished jobs, for /metrics
        self.last_schema_xml: str | None = None

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
                "pending": self._pending,
                "new_expert_tasks": len(self._seen),
                "min_annotations": self.settings.train_min_annotations,
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
        if not self.settings.expert.is_expert(annotation):
            return "not an expert annotation"
        task_id = annotation.get("task")
        if task_id is None and task is not None:
            task_id = task.get("id")
        with self._lock:
            if task_id is not None:
                self._seen.add(int(task_id))
            n = len(self._seen)
        if n < self.settings.train_min_annotations:
            return f"not enough annotations ({n}/{self.settings.train_min_annotations})"
        return self.request(project)

    def request(self, project: int | None) -> str:
        """Queue a training job; ``"pending"`` when one is running (it will run once more after it)."""
        with self._lock:
            self._seen.clear()
            if project is not None:
                self._pending_project = project
            if self._thread is not None and self._thread.is_alive():
                self._pending = True
                return "pending"
            self._pending = True
            self._thread = threading.Thread(target=self._worker, name="training", daemon=True)
            self._thread.start()
            return "training queued"

    def training_counts(self) -> TrainingCounts:
        """Finished jobs, failures and their seconds (for /metrics)."""
        with self._lock:
            return self.counts

    def train_once(self, project: int | None) -> str:
        """One job, synchronously (what a queue worker runs): train, publish, switch, re-score; the version.

        Raises:
            Exception: whatever stopped the job (no expert tasks, Label Studio unreachable, training failed).
        """
        return self._train_once(project)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker is done (tests, shutdown); True if it finished."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _worker(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    if self._state == "running":
                        self._state = "idle"
                    return
                self._pending = False
                project = self._pending_project
                self._state = "running"
            start = time.monotonic()
            try:
                version = self._train_once(project)
            except Exception as exc:
                logger.error("training failed: %s", exc)
                logger.debug("training failed", exc_info=True)
                with self._lock:
                    self._state = "failed"
                    self._last_error = str(exc)[:2000]
                    self._last_seconds = round(time.monotonic() - start, 1)
                    self.counts = _add_run(self.counts, time.monotonic() - start, failed=True)
                continue
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
        items = training_items(
            tasks,
            schema=schema,
            names=names,
            policy=self.settings.expert,
            loader=self.service.loader,
            image_dir=job_dir / "images",
        )
        items.sort(key=lambda it: str(it.path))
        n_val = len(items) // 10 if len(items) >= 10 else 0
        train, val = (items[n_val:], items[:n_val]) if n_val else (items, items)
        family = self.settings.detector_family
        # Warm start only from weights the configured family can read.
        warm = latest if latest is not None and latest.family == family else None
        init = str(warm.weights) if warm is not None else self.settings.train_init
        job = {
            "work_dir": str(job_dir),
            "model_dir": str(self.settings.model_dir),
            "names": names,
            "train": [it.as_json() for it in train],
            "val": [it.as_json() for it in val],
            "init": init,
            "epochs": self.settings.train_epochs,
            "imgsz": self.settings.train_imgsz or None,
            "batch": self.settings.train_batch,
            "device": self.settings.device,
            "family": family,
            "lsm": lsm_as_dict(self.settings.lsm),
            "log_level": self.settings.log_level,
            "tiling": self.settings.tiling.as_dict() if self.settings.tiling is not None else None,
            "threads": self.settings.train_thread_count,
            "nice": self.settings.train_nice,
        }
        job_path = job_dir / "job.json"
        job_path.write_text(json.dumps(job))
        logger.info(
            "training a %s detector on %d expert tasks (%d val) from %s, %d epochs",
            family,
            len(train),
            len(val),
            Path(init).name or "the family's default",
            self.settings.train_epochs,
        )
        log_path = job_dir / "train.log"
        with open(log_path, "wb") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "backend.train_job", str(job_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(Path(__file__).resolve().parents[1]),
                check=False,
            )
        result_path = job_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if proc.returncode != 0 or "version" not in result:
            tail = log_path.read_text(errors="replace")[-800:]
            raise RuntimeError(
                f"training job exited with {proc.returncode}: {result.get('error', 'no result')} "
                f"(log {log_path}): {tail}"
            )
        version = str(result["version"])
        self.service.switch(version)
        logger.info("now serving %s; re-scoring the non-expert tasks", version)
        self._rescore(source, schema, tasks)
        return version

    def rescore(self, project: int | None) -> int:
        """Bulk scoring: every non-expert task of the project with the serving version, published in chunks
        (their superseded predictions removed); the number of tasks scored."""
        source = self.source()
        schema = parse_label_config(source.label_config(project))
        return self._rescore(source, schema, source.tasks(project))

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

    def _rescore_worker(self, project: int | None) -> None:
        try:
            self.rescore(project)
        except Exception as exc:  # a background job: report and carry on
            logger.error("re-scoring project %s failed: %s", project, exc)

    def _rescore(self, source: TaskSource, schema: LabelSchema, tasks: Sequence[Mapping[str, Any]]) -> int:
        """Score every non-expert task with the new model and publish (chunk errors are logged, not fatal)."""
        remaining = [t for t in tasks if expert_annotation(t, self.settings.expert) is None]
        chunk = max(1, self.settings.predict_batch)
        done = 0
        for start in range(0, len(remaining), chunk):
            part = remaining[start : start + chunk]
            try:
                scored = self.service.score_tasks(part, schema)
                source.publish(scored)
                done += sum(s.ok for s in scored)
            except Exception as exc:
                logger.warning("re-scoring tasks %d..%d failed: %s", start, start + len(part) - 1, exc)
        logger.info("re-scored %d/%d non-expert tasks", done, len(remaining))
        return done


def _add_run(counts: TrainingCounts, seconds: float, *, failed: bool) -> TrainingCounts:
    return TrainingCounts(counts.runs + 1, counts.failures + int(failed), counts.seconds + seconds)
