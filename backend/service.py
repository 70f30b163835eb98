"""The model holder: lazy loading of the registry's latest version, atomic swaps, and task scoring.

Weights are loaded on the first ``/predict`` (never at import or in ``/setup``: Label Studio gives setup
~3 s).
A newer version in the registry (published by training, or by another process) is picked up by the next
predict or by :meth:`ModelService.switch`; the new detector is loaded *outside* the lock and swapped in under
it, so requests keep being served by the previous version meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.images import ImageLoader, LoadedImage
from backend.labelconfig import LabelSchema
from backend.protocol import (
    TaskFields,
    build_prediction,
    build_regions,
    noise_types_text,
    proposals_from_score,
    task_image_url,
)
from backend.settings import Settings, lsm_as_dict
from formats.labelstudio import CROWD_FIELD, crowd_labels_to_detections
from selection.detections import Detections

if TYPE_CHECKING:
    from model.detector import Detector
    from model.registry import ModelVersion

logger = logging.getLogger(__name__)

__all__ = ["ModelService", "NoModelError", "ScoredTask", "TaskInputError"]


class NoModelError(RuntimeError):
    """No model version is published yet."""


class TaskInputError(ValueError):
    """A task of the request is malformed (bad crowd labels, missing image field); names the task."""


@dataclass(frozen=True)
class ScoredTask:
    """One task's outcome: the prediction JSON and the fields to write back."""

    task_id: int | None
    prediction: dict[str, Any]
    fields: TaskFields


def _task_name(task: Mapping[str, Any], index: int) -> str:
    return str(task["id"]) if "id" in task else f"#{index}"


def _check_tiling(mv: ModelVersion, settings: Settings) -> None:
    """Warn when a version trained by the backend saw another tile size than ``TILE_SIZE`` now gives it."""
    options = mv.meta.get("train_options")
    if not isinstance(options, Mapping):
        return  # not trained here (e.g. MODEL_WEIGHTS): nothing is known about its training scale
    trained = (options.get("tiling") or {}).get("size")
    now = settings.tiling.size if settings.tiling is not None else None
    if trained != now:
        logger.warning(
            "%s was trained on %s but predicts on %s (TILE_SIZE): objects change scale; retrain",
            mv.version,
            f"{trained} px tiles" if trained else "whole images",
            f"{now} px tiles" if now else "whole images",
        )


class ModelService:
    """Holds the current detector and scores Label Studio tasks with it.

    Args:
        settings: the backend settings (registry folder, device, thresholds).
        loader: image loader for task images.
    """

    def __init__(self, settings: Settings, *, loader: ImageLoader) -> None:
        from model.registry import ModelRegistry

        self.settings = settings
        self.loader = loader
        self.registry = ModelRegistry(settings.model_dir)
        self._swap_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._detector: Detector | None = None
        self._version: str | None = None
        self._warned_unmapped: set[str] = set()

    def publish_initial(self) -> None:
        """Publish ``MODEL_WEIGHTS`` as the first version when the registry is empty (a file copy, fast)."""
        if self.settings.model_weights is not None and self.registry.latest() is None:
            meta = {
                "source": "MODEL_WEIGHTS",
                "family": self.settings.detector_family,
                "lsm": lsm_as_dict(self.settings.lsm),
            }
            mv = self.registry.publish(self.settings.model_weights, meta)
            logger.info("published initial weights %s as %s", self.settings.model_weights, mv.version)

    def latest_version(self) -> str | None:
        """The registry's latest version name (reads a small file; no weights loaded)."""
        latest = self.registry.latest()
        return latest.version if latest is not None else None

    @property
    def loaded_version(self) -> str | None:
        return self._version

    def versions(self) -> list[str]:
        return [v.version for v in self.registry.versions()]

    def switch(self, version: str | None = None) -> str:
        """Load ``version`` (default: the latest) and swap it in; the old one serves until then.

        Raises:
            NoModelError: nothing published.
        """
        from model.detector import load_detector

        with self._load_lock:
            mv = self.registry.get(version) if version is not None else self.registry.latest()
            if mv is None:
                raise NoModelError(
                    "no model version published yet: set MODEL_WEIGHTS, or annotate tasks and train "
                    "(POST /train or Label Studio's 'Start training')"
                )
            if mv.version == self._version:
                return mv.version
            detector = load_detector(mv, device=self.settings.device)
            _check_tiling(mv, self.settings)
            if self.settings.tiling is not None:
                from model.tiling import TiledDetector

                detector = TiledDetector(detector, self.settings.tiling)
            with self._swap_lock:
                old, self._detector, self._version = self._version, detector, mv.version
            logger.info("model switched %s -> %s", old or "-", mv.version)
            return mv.version

    def current(self) -> tuple[Detector, str]:
        """The detector to use now, loading or upgrading to the registry's latest version when needed."""
        latest = self.latest_version()
        if latest is None and self._detector is None:
            raise NoModelError(
                "no model version published yet: set MODEL_WEIGHTS, or annotate tasks and train "
                "(POST /train or Label Studio's 'Start training')"
            )
        if latest is not None and latest != self._version:
            try:
                self.switch(latest)
            except Exception:
                if self._detector is None:
                    raise
                logger.exception("loading %s failed; serving %s", latest, self._version)
        with self._swap_lock:
            if self._detector is None:  # switch() failed and nothing was loaded before
                raise NoModelError(f"model version {latest} could not be loaded; see the backend log")
            return self._detector, str(self._version)

    def detect(self, images: Sequence[np.ndarray | LoadedImage]) -> tuple[list[Detections], list[str], str]:
        """Batched inference: one scored Detections per image, the model's class names, its version."""
        detector, version = self.current()
        arrays = [im.pixels if isinstance(im, LoadedImage) else im for im in images]
        preds = detector.predict(arrays, conf=self.settings.predict_conf, batch=self.settings.predict_batch)
        return preds, list(detector.names), version

    def score_tasks(self, tasks: Sequence[Mapping[str, Any]], schema: LabelSchema) -> list[ScoredTask]:
        """Score tasks: load images, run one batched prediction, grade each crowd instance, build regions.

        Raises:
            TaskInputError: a task without the image field or with malformed ``crowd_labels``.
            backend.images.ImageLoadError: an image cannot be loaded.
            NoModelError: nothing published.
        """
        from selection.lsm import score_image

        detector, _ = self.current()  # fail fast with 503 before downloading images
        del detector
        urls = []
        for i, task in enumerate(tasks):
            try:
                urls.append(task_image_url(task, schema))
            except ValueError as exc:
                raise TaskInputError(str(exc).replace("task ?", f"task {_task_name(task, i)}")) from None
        images = [
            self.loader.load(url, task=_task_name(t, i))
            for i, (t, url) in enumerate(zip(tasks, urls, strict=True))
        ]
        crowds = [
            self._crowd(task, i, image, schema)
            for i, (task, image) in enumerate(zip(tasks, images, strict=True))
        ]
        preds, names, version = self.detect(images)
        label_map = schema.label_map(names)
        if label_map.unmapped:
            key = f"{names}->{schema.labels}"
            if key not in self._warned_unmapped:
                self._warned_unmapped.add(key)
                logger.warning(
                    "model classes %s match no config label %s (predictions dropped); name them in a "
                    '<Label predicted_values="..."> attribute',
                    list(label_map.unmapped),
                    list(schema.labels),
                )
        out = []
        for task, image, crowd, pred in zip(tasks, images, crowds, preds, strict=True):
            pred = label_map.to_labels(pred)
            score = score_image(crowd, pred, config=self.settings.lsm)
            proposals = proposals_from_score(
                crowd, pred, score, score_threshold=self.settings.score_threshold
            )
            regions = build_regions(proposals, schema=schema, width=image.width, height=image.height)
            inst = score.instances
            types = [str(t) for t in inst.noise_type[inst.parent < 0]]
            fields = TaskFields(
                discrepancy=float(score.discrepancy),
                noise_grade=str(score.grade),
                noise_types=noise_types_text(types),
                model_version=version,
            )
            task_id = task.get("id")
            out.append(
                ScoredTask(
                    task_id=int(task_id)
                    if isinstance(task_id, int | str) and str(task_id).isdigit()
                    else None,
                    prediction=build_prediction(
                        regions, discrepancy=score.discrepancy, model_version=version
                    ),
                    fields=fields,
                )
            )
        return out

    @staticmethod
    def _crowd(task: Mapping[str, Any], index: int, image: LoadedImage, schema: LabelSchema) -> Detections:
        data = task.get("data") or {}
        records = data.get(CROWD_FIELD)
        if records is None:
            return Detections.empty()
        try:
            return crowd_labels_to_detections(
                records, width=image.width, height=image.height, label_to_id=schema.label_ids
            )
        except ValueError as exc:
            raise TaskInputError(f"task {_task_name(task, index)}: {exc}") from None
