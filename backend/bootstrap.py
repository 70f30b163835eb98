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

Inside the backend, ``BOOTSTRAP=auto`` (the default) does the same without a command: when the registry is
empty and ``MODEL_WEIGHTS`` is unset, the first ``/setup`` or ``/predict`` of a project (Label Studio calls
``/setup`` as soon as the backend is connected) queues a bootstrap through the training manager; its
progress (``kind: "bootstrap"``, epochs) is in ``/health`` and ``/predict`` answers 503 until it is published.

Settings come from the backend's environment variables (``Settings.from_env``); flags override them.
Exit status: 0 published, 2 bad options or settings or nothing to train on, 1 Label Studio or training
failures.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.images import ImageLoader, ImageLoadError
from backend.labelconfig import DROP_LABEL_NAMES, LabelConfigError, LabelSchema, parse_label_config
from backend.settings import Settings, SettingsError, lsm_as_dict
from formats.labelstudio import CROWD_FIELD, crowd_labels_to_detections

if TYPE_CHECKING:
    from backend.service import ModelService
    from backend.training import TaskSource, TrainingManager

logger = logging.getLogger(__name__)

__all__ = [
    "BOOTSTRAP_SOURCE",
    "AutoBootstrap",
    "BootstrapError",
    "BootstrapJob",
    "bootstrap_names",
    "crowd_training_items",
    "main",
    "prepare_bootstrap",
    "run_bootstrap",
]

BOOTSTRAP_SOURCE = "crowd bootstrap"
"""``meta["source"]`` of a version trained by the bootstrap."""


class BootstrapError(RuntimeError):
    """Nothing to train on, or a setting that stops the bootstrap; the message says what to do."""


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
) -> list[Any]:
    """Tasks with a ``crowd_labels`` field -> training items (image on disk, boxes as model class ids).

    Labels map to ``names`` through ``schema.label_map`` read backwards, as expert annotations do in
    ``backend.training.training_items``; boxes of labels that map to no class are left out. Images that are
    not local files are saved under ``image_dir`` as PNG.

    Raises:
        BootstrapError: a task's crowd labels are malformed or its image cannot be loaded (naming the task).
    """
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from backend.training import _Item

    label_to_class = schema.label_map(names).label_to_class
    to_class = np.array([label_to_class.get(lab, -1) for lab in schema.labels], np.int64)
    with_crowd = [t for t in tasks if (t.get("data") or {}).get(CROWD_FIELD) is not None]
    image_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for task in tqdm(with_crowd, desc="reading crowd labels", unit="task", disable=not progress):
        tid = task.get("id", "?")
        data = task.get("data") or {}
        url = data.get(schema.image_key)
        if not isinstance(url, str) or not url:
            raise BootstrapError(f"task {tid}: data.{schema.image_key} is missing or not a URL string")
        try:
            image = loader.load(url, task=str(tid))
        except ImageLoadError as exc:
            raise BootstrapError(str(exc)) from None
        try:
            crowd = crowd_labels_to_detections(
                data[CROWD_FIELD], width=image.width, height=image.height, label_to_id=schema.label_ids
            )
        except ValueError as exc:
            raise BootstrapError(f"task {tid}: {exc}") from None
        cls = to_class[crowd.class_id] if len(crowd) else crowd.class_id
        keep = cls >= 0
        path = image.path
        if path is None:
            path = image_dir / f"task{tid}.png"
            Image.fromarray(image.pixels).save(path)
        items.append(_Item(path, crowd.xyxy[keep], cls[keep], image.width, image.height))
    return items


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
    source: TaskSource,
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
        BootstrapError: no project given, no crowd labels, a bad ``init``, a malformed task.
    """
    from model.detector import get_family

    if project is None:
        raise BootstrapError("project: the bootstrap needs a project id")
    try:
        schema = parse_label_config(source.label_config(project))
    except LabelConfigError as exc:
        raise BootstrapError(f"project {project}: {exc}") from None
    tasks = source.tasks(project)
    n_boxes = sum(len(c) for t in tasks if isinstance(c := (t.get("data") or {}).get(CROWD_FIELD), list))
    if n_boxes == 0:
        raise BootstrapError(
            f"project {project}: none of its {len(tasks)} tasks has crowd labels (data.{CROWD_FIELD}) to "
            "train on: import them with python -m backend.ingest, or set MODEL_WEIGHTS to your own weights"
        )
    family = get_family(settings.detector_family)
    start = init or settings.train_init
    try:
        family.check_init(start)
    except ValueError as exc:
        raise BootstrapError(f"--init: {str(exc).removeprefix('init: ')}") from None
    names = bootstrap_names(schema)
    items = crowd_training_items(
        tasks, schema=schema, names=names, loader=loader, image_dir=job_dir / "images", progress=progress
    )
    items.sort(key=lambda it: str(it.path))
    # The same split as expert trainings: a tenth for validation from 10 images on, else validate on train.
    n_val = len(items) // 10 if len(items) >= 10 else 0
    train, val = (items[n_val:], items[:n_val]) if n_val else (items, items)
    job = {
        "work_dir": str(job_dir),
        "model_dir": str(settings.model_dir),
        "names": names,
        "train": [it.as_json() for it in train],
        "val": [it.as_json() for it in val],
        "init": start,
        "epochs": epochs or settings.train_epochs,
        "imgsz": settings.train_imgsz or None,
        "batch": settings.train_batch,
        "device": settings.device,
        "family": family.name,
        "lsm": lsm_as_dict(settings.lsm),
        "log_level": settings.log_level,
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


class AutoBootstrap:
    """``BOOTSTRAP=auto``: queue a bootstrap for a project the first time it calls an empty backend.

    It acts only when every condition holds: ``BOOTSTRAP=auto``, Label Studio credentials set,
    ``MODEL_WEIGHTS`` unset, nothing in the registry; and once per project per process (a project without
    crowd labels fails once, visibly in ``/health``, and is not retried until the backend restarts).

    Args:
        settings: the backend settings.
        service: the model holder (its registry says whether a version exists).
        trainer: the training manager that runs the job (one job at a time, like webhook trainings).
    """

    def __init__(self, settings: Settings, service: ModelService, trainer: TrainingManager) -> None:
        self.settings = settings
        self.service = service
        self.trainer = trainer
        self._tried: set[int] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        s = self.settings
        return s.bootstrap == "auto" and s.label_studio_enabled and s.model_weights is None

    def maybe_start(self, project: int | None) -> bool:
        """Queue the bootstrap of ``project`` if the conditions hold; True when it was queued now."""
        if project is None or not self.enabled or self.service.latest_version() is not None:
            return False
        with self._lock:
            if project in self._tried:
                return False
            self._tried.add(project)
        status = self.trainer.request(project, kind="bootstrap")
        logger.info(
            "empty model registry: bootstrapping from project %s's crowd labels (%s)", project, status
        )
        return True

    def running_for(self, project: int | None) -> bool:
        """Whether a bootstrap was queued for ``project`` (for /predict's 503 message)."""
        with self._lock:
            return project in self._tried


def project_id(raw: Any) -> int | None:
    """A project id from Label Studio's ``project`` fields: ``3``, ``"3"`` or ``"3.1732780000"``.

    >>> project_id("3.1732780000"), project_id(3), project_id(None), project_id("x")
    (3, 3, None, None)
    """
    if raw is None:
        return None
    head = str(raw).split(".")[0].strip()
    return int(head) if head.isdigit() else None


# --- the command line ------------------------------------------------------------------------------------


def run_bootstrap(
    settings: Settings,
    *,
    project: int,
    init: str | None = None,
    epochs: int | None = None,
    force: bool = False,
    progress: bool = True,
    source: TaskSource | None = None,
) -> dict[str, Any]:
    """Train and publish the first version (what the CLI does); returns the published version's meta.

    Raises:
        BootstrapError: the registry already has a version (without ``force``), no such project, no crowd
            labels, a bad ``init``.
        RuntimeError: the training job failed (its log named in the message).
    """
    from tqdm import tqdm

    from backend.lsclient import LabelStudioAuth
    from backend.lsproject import api_error_message
    from backend.training import LabelStudioSource, run_train_job
    from model.registry import ModelRegistry

    registry = ModelRegistry(settings.model_dir)
    latest = registry.latest()
    if latest is not None and not force:
        raise BootstrapError(
            f"MODEL_DIR {settings.model_dir} already holds {latest.version}: the bootstrap trains the first "
            "version (--force publishes a crowd-trained version over it)"
        )
    if source is None:
        if not settings.label_studio_enabled:
            raise BootstrapError(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --url and --api-key) are needed"
            )
        source = LabelStudioSource(settings)
        try:
            source.label_config(project)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                raise BootstrapError(
                    f"project {project}: not found in Label Studio at {settings.label_studio_url}"
                ) from None
            raise BootstrapError(f"project {project}: {api_error_message(exc)}") from None
    auth = (
        LabelStudioAuth(str(settings.label_studio_url), str(settings.label_studio_api_key))
        if settings.label_studio_enabled
        else None
    )
    loader = ImageLoader.from_settings(settings, auth=auth)
    job_dir = new_job_dir(settings)
    prepared = prepare_bootstrap(
        settings, source, project, loader=loader, job_dir=job_dir, init=init, epochs=epochs, progress=progress
    )
    n_epochs = int(prepared.job["epochs"])
    bar = tqdm(total=n_epochs, desc="training", unit="epoch", disable=not progress)

    def on_progress(state: Mapping[str, Any]) -> None:
        epoch = int(state.get("epoch") or 0)
        if epoch > bar.n:
            bar.update(epoch - bar.n)

    try:
        version = run_train_job(job_dir, prepared.job, on_progress=on_progress)
        on_progress({"epoch": n_epochs})
    finally:
        bar.close()
    return registry.get(version).meta


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backend.bootstrap",
        description="Train the first model version on a Label Studio project's crowd labels "
        "(data.crowd_labels) and publish it into MODEL_DIR's registry. Settings: the backend's environment "
        "variables (MODEL_DIR, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, LOCAL_FILES_DOCUMENT_ROOT, "
        "TRAIN_EPOCHS, TRAIN_IMGSZ, TRAIN_BATCH, TRAIN_INIT, DETECTOR_FAMILY, DEVICE); flags override.",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--init", help="weights to start from (default: TRAIN_INIT, the family's default)")
    parser.add_argument("--epochs", type=int, help="TRAIN_EPOCHS")
    parser.add_argument("--imgsz", help="TRAIN_IMGSZ")
    parser.add_argument("--force", action="store_true", help="train even if MODEL_DIR already has a version")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--url", help="LABEL_STUDIO_URL")
    parser.add_argument("--api-key", help="LABEL_STUDIO_API_KEY")
    parser.add_argument("--model-dir", help="MODEL_DIR")
    parser.add_argument("--document-root", help="LOCAL_FILES_DOCUMENT_ROOT")
    parser.add_argument("--device", help="DEVICE")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: expected >= 1, got {args.epochs}")
    return args


_FLAG_VARS = {
    "url": "LABEL_STUDIO_URL",
    "api_key": "LABEL_STUDIO_API_KEY",
    "model_dir": "MODEL_DIR",
    "document_root": "LOCAL_FILES_DOCUMENT_ROOT",
    "device": "DEVICE",
    "imgsz": "TRAIN_IMGSZ",
    "epochs": "TRAIN_EPOCHS",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bootstrap; returns the exit status."""
    args = parse_args(argv)
    env = dict(os.environ)
    for attr, var in _FLAG_VARS.items():
        if getattr(args, attr) is not None:
            env[var] = str(getattr(args, attr))
    env.pop("MODEL_WEIGHTS", None)  # the bootstrap is what runs when there are none
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings.scratch_dir / "yolo-config"))
    try:
        meta = run_bootstrap(
            settings,
            project=args.project,
            init=args.init,
            force=args.force,
            progress=not args.no_progress,
        )
    except BootstrapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(meta.get("metrics", {}).items()) if "map" in k)
    print(
        f"published {meta['version']} to {settings.model_dir} ({meta['source']}: project {args.project}, "
        f"{meta['n_train']} train / {meta['n_val']} val images, {meta['epochs']} epochs from "
        f"{Path(str(meta['init'])).name}, {meta['seconds']:.0f} s)"
    )
    if metrics:
        print(f"validation on crowd labels: {metrics}")
    print("next: start the backend (python -m backend) and score the project")
    return 0


if __name__ == "__main__":
    sys.exit(main())
