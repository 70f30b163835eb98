"""``python -m backend.bootstrap``: train the first model version on a project's crowd labels and publish it.

A lab with images and crowd labels but no weights gets a first model without writing code::

    python -m backend.bootstrap --project 3 [--init my-weights.pt] [--epochs 30]

The crowd labels are the tasks' ``data.crowd_labels`` (the field ``python -m backend.ingest`` writes and the
backend scores). Every task that has the field is a training image (an empty list: an image with no object,
a useful negative); its boxes train the model classes their labels map to (the labelling config's labels
without deletion labels such as ``background``). The job is the backend's own training job
(``backend.train_job`` as a child process, the same family, options and registry); the version's meta says
``"source": "crowd bootstrap"``. Training starts from ``--init`` (a checkpoint or model definition the
detector family accepts), else ``TRAIN_INIT`` (the family's default, e.g. ``yolov8n.yaml``).

Inside the backend, ``BOOTSTRAP=auto`` (the default; :mod:`backend.bootstrap.auto`) does the same without a
command: when the registry is empty and ``MODEL_WEIGHTS`` is unset, the first ``/setup`` or ``/predict`` of a
project (Label Studio calls ``/setup`` as soon as the backend is connected) queues a bootstrap through the
training manager; its progress (``kind: "bootstrap"``, epochs) is in ``/health`` and ``/predict`` answers 503
until the version is published.

Modules: this one (reading crowd labels into a training job; it imports nothing of ``backend.training``, which
runs the job), ``auto`` (the backend's trigger), ``__main__`` (the command line).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from backend.crowd import CrowdReader
from backend.images import ImageLoader, ImageLoadError
from backend.labelconfig import DROP_LABEL_NAMES, LabelConfigError, LabelSchema, parse_label_config
from backend.protocol import task_image_url
from backend.roles import CrowdPolicy, annotation_email
from backend.settings import ExpertPolicy, Settings
from backend.train_job import TrainItem, job_settings
from formats.labelstudio import CROWD_FIELD

logger = logging.getLogger(__name__)

__all__ = [
    "BOOTSTRAP_SOURCE",
    "WEAK_MAP50",
    "BootstrapError",
    "BootstrapJob",
    "BootstrapSourceError",
    "CrowdSource",
    "bootstrap_names",
    "crowd_training_items",
    "has_crowd_labels",
    "new_job_dir",
    "prepare_bootstrap",
    "project_id",
    "validation_map50",
]

BOOTSTRAP_SOURCE = "crowd bootstrap"
"""``meta["source"]`` of a version trained by the bootstrap."""


class BootstrapError(RuntimeError):
    """Nothing to train on, a setting or an input that stops the bootstrap (exit 2); the message says what to
    do."""


class BootstrapSourceError(BootstrapError):
    """Label Studio, or the host of a task's image, could not be read (an HTTP error, a network failure): not
    the options' or the data's fault, running again may help (exit 1)."""


class CrowdSource(Protocol):
    """Where the project's tasks come from (``backend.training.LabelStudioSource`` in production)."""

    def label_config(self, project: int | None) -> str: ...

    def tasks(self, project: int | None) -> list[dict[str, Any]]: ...


def bootstrap_names(schema: LabelSchema) -> list[str]:
    """The first model's class names: the config's labels without deletion labels (``background``...)."""
    return [lab for lab in schema.labels if lab.casefold() not in DROP_LABEL_NAMES]


def crowd_training_items(
    tasks: Sequence[Mapping[str, Any]],
    *,
    schema: LabelSchema,
    names: Sequence[str],
    loader: ImageLoader,
    image_dir: Path,
    progress: bool = False,
    reader: CrowdReader | None = None,
) -> list[TrainItem]:
    """Tasks with crowd labels -> training items (image on disk, boxes as model class ids).

    The crowd boxes are read as the backend scores them (``reader``: ``CROWD_SOURCE``, the ``crowd_labels``
    field by default, or the crowd users' annotations, fused per annotator); a task counts when it has the
    field (an empty list: an image without objects) or, from annotations, at least one crowd annotation.
    Labels map to ``names`` through ``schema.label_map`` read backwards, as expert annotations do in
    ``backend.training.training_items``; boxes of labels that map to no class are left out. Images that are
    not local files are saved under ``image_dir`` at their own depth (``formats.images.write_image``), so the
    dataset writer normalises them like local files and like ``/predict``.

    Raises:
        BootstrapError: a task's crowd labels are malformed, or its image reference is malformed, names a
            missing local file, or is not an image (naming the task).
        BootstrapSourceError: a task's image cannot be fetched (a network failure, an HTTP error).
    """
    import numpy as np
    from tqdm import tqdm

    from formats.images import write_image

    reader = reader or CrowdReader(CrowdPolicy(), ExpertPolicy(), users=None)
    label_to_class = schema.label_map(names).label_to_class
    to_class = np.array([label_to_class.get(lab, -1) for lab in schema.labels], np.int64)
    with_crowd = [t for t in tasks if has_crowd_labels(t, reader)]
    image_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for task in tqdm(with_crowd, desc="reading crowd labels", unit="task", disable=not progress):
        tid = task.get("id", "?")
        try:
            url = task_image_url(task, schema)
        except ValueError as exc:
            raise BootstrapError(str(exc)) from None
        try:
            image = loader.decode(url, task=str(tid))
        except ImageLoadError as exc:
            if exc.source_failed:  # backend.images.SOURCE_FAILURES: a retry may help (exit 1)
                raise BootstrapSourceError(str(exc)) from None
            raise BootstrapError(str(exc)) from None
        try:
            crowd = reader.read(task, width=image.width, height=image.height, schema=schema).detections
        except ValueError as exc:
            raise BootstrapError(f"task {tid}: {exc}") from None
        cls = to_class[crowd.class_id] if len(crowd) else crowd.class_id
        keep = cls >= 0
        path = image.path
        if path is None:
            path = write_image(image_dir / f"task{tid}", image.pixels)
        items.append(TrainItem(path, crowd.xyxy[keep], cls[keep], image.width, image.height))
    return items


def has_crowd_labels(task: Mapping[str, Any], reader: CrowdReader) -> bool:
    """Whether a task has crowd labels under the reader's ``CROWD_SOURCE`` (without loading its image)."""
    if not reader.crowd.from_annotations:
        return (task.get("data") or {}).get(CROWD_FIELD) is not None
    return any(
        isinstance(ann, Mapping)
        and reader.crowd.is_crowd(ann, expert=reader.expert, user_email=annotation_email(ann))
        for ann in task.get("annotations") or []
    )


@dataclass(frozen=True)
class BootstrapJob:
    """A prepared bootstrap: the training job and what it was made from.

    Attributes:
        job: the ``backend.train_job`` job (JSON-ready).
        schema: the project's labelling config.
        tasks: the project's tasks (the backend re-scores them after the version is published).
        n_boxes: crowd boxes in the training and validation images.
    """

    job: dict[str, Any]
    schema: LabelSchema
    tasks: list[dict[str, Any]]
    n_boxes: int


def new_job_dir(settings: Settings, prefix: str = "bootstrap") -> Path:
    """A fresh job folder under the scratch folder (``WORK_DIR``)."""
    job_dir = settings.scratch_dir / f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    job_dir.mkdir(parents=True, exist_ok=True)
    return job_dir


def prepare_bootstrap(
    settings: Settings,
    source: CrowdSource,
    project: int | None,
    *,
    loader: ImageLoader,
    job_dir: Path,
    init: str | None = None,
    epochs: int | None = None,
    progress: bool = False,
) -> BootstrapJob:
    """Read the project's crowd labels and write nothing but the training images: the job to run.

    Args:
        settings: the backend settings (family, training options, LSM thresholds recorded in the meta).
        source: the project's tasks and labelling config (Label Studio in production).
        project: the project id.
        loader: the backend's image loader.
        job_dir: the job's folder.
        init: what training starts from (default ``TRAIN_INIT``); checked by the family.
        epochs: epochs (default ``TRAIN_EPOCHS``).
        progress: show a progress bar while reading images.

    Raises:
        BootstrapError: no project given, no crowd labels, crowd labels without a box of a class to train, a
            bad ``init``, a malformed task or task image (:func:`crowd_training_items`).
        BootstrapSourceError: Label Studio failed to give the config or the tasks (naming the HTTP status), or
            a task's image could not be fetched.
    """
    from backend.lsproject import api_error_message
    from model.detector import get_family

    if project is None:
        raise BootstrapError("project: the bootstrap needs a project id")
    try:
        config_xml = source.label_config(project)
    except Exception as exc:  # the SDK's ApiError, requests' errors
        if getattr(exc, "status_code", None) == 404:
            raise BootstrapError(f"project {project}: not found in Label Studio") from None
        raise BootstrapSourceError(
            f"project {project}: its labelling config cannot be read: {api_error_message(exc)}"
        ) from None
    try:
        schema = parse_label_config(config_xml)
    except LabelConfigError as exc:
        raise BootstrapError(f"project {project}: {exc}") from None
    try:
        tasks = source.tasks(project)
    except Exception as exc:  # the SDK's ApiError, requests' errors
        raise BootstrapSourceError(
            f"project {project}: its tasks cannot be listed: {api_error_message(exc)}"
        ) from None
    reader = CrowdReader(settings.crowd, settings.expert, users=None)  # tasks carry completed_by_email
    where = (
        f"data.{CROWD_FIELD}"
        if not settings.crowd.from_annotations
        else f"annotations of crowd users, CROWD_SOURCE={settings.crowd.describe()}"
    )
    no_crowd = BootstrapError(
        f"project {project}: none of its {len(tasks)} tasks has crowd labels ({where}) to train on: import "
        "them with python -m backend.ingest, or set MODEL_WEIGHTS to your own weights"
    )
    if not any(has_crowd_labels(t, reader) for t in tasks):
        raise no_crowd
    family = get_family(settings.detector_family)
    start = init or settings.train_init
    try:
        family.check_init(start)
    except ValueError as exc:
        raise BootstrapError(f"--init: {str(exc).removeprefix('init: ')}") from None
    names = bootstrap_names(schema)
    if not names:
        raise BootstrapError(
            f"project {project}: the labelling config's labels {list(schema.labels)} are all deletion "
            "labels: add a label for the objects to detect"
        )
    items = crowd_training_items(
        tasks,
        schema=schema,
        names=names,
        loader=loader,
        image_dir=job_dir / "images",
        progress=progress,
        reader=reader,
    )
    n_boxes = sum(len(it.class_id) for it in items)
    if n_boxes == 0:  # labelled, but only empty lists or deletion labels: importing again would not help
        raise BootstrapError(
            f"project {project}: the crowd labels ({where}) of its {len(items)} labelled tasks hold no box "
            f"of a class to train ({', '.join(names)}): no box at all, or only boxes of deletion labels such "
            "as background; have the crowd draw the objects, or set MODEL_WEIGHTS to your own weights"
        )
    items.sort(key=lambda it: str(it.path))
    # The same split as expert trainings: a tenth for validation from 10 images on, else validate on train.
    n_val = len(items) // 10 if len(items) >= 10 else 0
    train, val = (items[n_val:], items[:n_val]) if n_val else (items, items)
    job = {
        **job_settings(settings),
        "work_dir": str(job_dir),
        "names": names,
        "train": [it.as_json() for it in train],
        "val": [it.as_json() for it in val],
        "init": start,
        "epochs": epochs or settings.train_epochs,
        "source": BOOTSTRAP_SOURCE,
        "project": project,
    }
    logger.info(
        "bootstrap of project %s: %d images (%d val), %d crowd boxes, from %s, %d epochs",
        project,
        len(train),
        n_val,
        n_boxes,
        start,
        job["epochs"],
    )
    return BootstrapJob(job=job, schema=schema, tasks=list(tasks), n_boxes=n_boxes)


WEAK_MAP50 = 0.1
"""Below this validation mAP50 the bootstrap and the export warn that the model is not ready to grade crowd
labels: a model that misses most objects finds "background" under most crowd boxes."""


def validation_map50(meta: Mapping[str, Any]) -> float | None:
    """The mAP50 a version's training reported (``meta["metrics"]``, e.g. YOLO's ``metrics/mAP50(B)``).

    >>> validation_map50({"metrics": {"metrics/mAP50(B)": 0.62, "metrics/mAP50-95(B)": 0.3}})
    0.62
    >>> validation_map50({"metrics": {}}) is None
    True
    """
    for key, value in (meta.get("metrics") or {}).items():
        name = key.lower()
        if "map50" in name and "95" not in name and isinstance(value, int | float):
            return float(value)
    return None


def project_id(raw: Any) -> int | None:
    """A project id from Label Studio's ``project`` fields: ``3``, ``"3"`` or ``"3.1732780000"``.

    >>> project_id("3.1732780000"), project_id(3), project_id(None), project_id("x")
    (3, 3, None, None)
    """
    if raw is None:
        return None
    head = str(raw).split(".")[0].strip()
    return int(head) if head.isdigit() else None
