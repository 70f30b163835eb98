"""The model holder: lazy loading of the registry's latest version, atomic swaps, and task scoring.

Weights are loaded on the first ``/predict`` (never at import or in ``/setup``: Label Studio gives setup
~3 s).
A newer version in the registry (published by training, or by another process) is picked up by the next
predict or by :meth:`ModelService.switch`; the new detector is loaded *outside* the lock and swapped in under
it, so requests keep being served by the previous version meanwhile.

Fault isolation: one bad task (missing, unreachable or undecodable image, malformed ``crowd_labels``) gets a
failed :class:`ScoredTask` carrying the reason while every other task of the request is scored. Images are
loaded, predicted and released in chunks of ``PREDICT_BATCH``: a request never holds all its images at once.

Images are normalised to 8-bit with the normalisation recorded in the serving version's meta
(``image_normalization``; ``IMAGE_NORMALIZE`` / ``IMAGE_PERCENTILES`` for versions without one), so a version
always sees the pixels it was trained on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.crowd import CrowdLabels, CrowdReader
from backend.images import ImageLoader, ImageLoadError, LoadedImage
from backend.labelconfig import LabelSchema, predictable_labels
from backend.protocol import (
    TaskFields,
    build_prediction,
    build_regions,
    noise_types_text,
    proposals_from_score,
    task_image_url,
)
from backend.roles import UserDirectory
from backend.settings import Settings, lsm_as_dict
from formats.images import ImageNormalization
from selection.detections import Detections

if TYPE_CHECKING:
    from pathlib import Path

    from model.detector import Detector
    from model.registry import ModelVersion
    from selection.calibration import Calibration

logger = logging.getLogger(__name__)

_LOAD_THREADS = 4
"""Images of a chunk loaded at once (HTTP round trips to Label Studio overlap)."""

__all__ = ["SCORE_ERROR_FIELD", "ModelService", "NoModelError", "ScoredTask", "TaskInputError"]


class NoModelError(RuntimeError):
    """No model version is published yet."""


class TaskInputError(ValueError):
    """A task of the request is malformed (bad crowd labels, missing image field); names the task."""


CALIBRATION_FILE = "calibration.json"
"""A version's grade calibration (``backend.calibration``), in its registry folder beside the weights."""


def read_calibration(path: Path) -> Calibration | None:
    """The calibration stored at ``path`` (a ``CALIBRATION_FILE``); None when it stores none (nothing fitted).

    Raises:
        OSError, ValueError, KeyError, TypeError: the file is missing or unreadable.
    """
    from selection.calibration import Calibration

    stored = json.loads(path.read_text(encoding="utf-8"))["calibration"]
    return None if stored is None else Calibration.from_dict(stored)


SCORE_ERROR_FIELD = "score_error"
"""Task data field holding why the task could not be scored ("" once it was scored)."""


@dataclass(frozen=True)
class ScoredTask:
    """One task's outcome: the prediction JSON and the fields to write back.

    A failed task (``error`` set) has ``fields=None`` and a prediction without a ``result`` key: Label Studio
    1.23 skips such an entry (it logs it) and stores no prediction for the task, so the task is sent again by
    the next "Retrieve predictions" instead of being skipped as already predicted by the serving version.

    Attributes:
        task_id: Label Studio's task id (None when the task had none).
        prediction: one entry of ``/predict``'s ``results``.
        fields: the scores to merge into the task's data (None when the task failed).
        error: why the task could not be scored, naming the task.
        error_cause: ``image_<cause>`` (see ``backend.images.ImageFailure``), ``task_input``, ``inference``
            or ``scoring``.
    """

    task_id: int | None
    prediction: dict[str, Any]
    fields: TaskFields | None
    error: str | None = None
    error_cause: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the task was scored."""
        return self.error is None

    def writeback(self) -> dict[str, Any]:
        """The fields to merge into the task's data: the scores and an empty ``score_error``, or the error."""
        if self.fields is None:
            return {SCORE_ERROR_FIELD: str(self.error or "")}
        return {**self.fields.as_data(), SCORE_ERROR_FIELD: ""}


def _task_id(task: Mapping[str, Any]) -> int | None:
    raw = task.get("id")
    return int(raw) if isinstance(raw, int | str) and str(raw).isdigit() else None


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

    def __init__(
        self, settings: Settings, *, loader: ImageLoader, users: UserDirectory | None = None
    ) -> None:
        from model.registry import ModelRegistry

        self.settings = settings
        self.loader = loader
        self.registry = ModelRegistry(settings.model_dir)
        self._swap_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._detector: Detector | None = None
        self._version: str | None = None
        self._normalizations: dict[str, ImageNormalization] = {}
        self._pinned: OrderedDict[str, Detector] = OrderedDict()  # older versions asked for by name, LRU
        self._pool = ThreadPoolExecutor(max_workers=_LOAD_THREADS, thread_name_prefix="image-load")
        self._warned_unmapped: set[str] = set()
        self._calibrations: dict[str, tuple[int, Calibration | None]] = {}
        if users is None and settings.label_studio_enabled and settings.crowd.from_annotations:
            from backend.lsclient import make_sdk_client

            url, key = str(settings.label_studio_url), str(settings.label_studio_api_key)
            users = UserDirectory(lambda: make_sdk_client(url, key))
        self.crowd_reader = CrowdReader(settings.crowd, settings.expert, users=users)

    def publish_initial(self) -> None:
        """Publish ``MODEL_WEIGHTS`` as the first version when the registry is empty (a file copy, fast)."""
        if self.settings.model_weights is not None and self.registry.latest() is None:
            meta = {
                "source": "MODEL_WEIGHTS",
                "family": self.settings.detector_family,
                "lsm": lsm_as_dict(self.settings.lsm),
                "image_normalization": self.settings.image_normalization.as_dict(),
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

        with self._load_lock:
            mv = self.registry.get(version) if version is not None else self.registry.latest()
            if mv is None:
                raise NoModelError(
                    "no model version published yet: set MODEL_WEIGHTS, or annotate tasks and train "
                    "(POST /train or Label Studio's 'Start training')"
                )
            if mv.version == self._version:
                return mv.version
            detector = self._load_version(mv)
            self.image_normalization(mv.version)  # a version with an unreadable one is not served
            with self._swap_lock:
                old, self._detector, self._version = self._version, detector, mv.version
            logger.info("model switched %s -> %s", old or "-", mv.version)
            return mv.version

    def image_normalization(self, version: str) -> ImageNormalization:
        """How images are normalised for ``version``: its meta's ``image_normalization`` (what it was trained
        with), else the configured ``IMAGE_NORMALIZE``/``IMAGE_PERCENTILES``.

        Raises:
            ValueError: the meta's value is not a valid normalisation.
            KeyError: no such version.
        """
        if version not in self._normalizations:
            recorded = self.registry.get(version).meta.get("image_normalization")
            try:
                norm = (
                    ImageNormalization.from_dict(recorded)
                    if recorded is not None
                    else self.settings.image_normalization
                )
            except ValueError as exc:
                raise ValueError(f"model version {version}: meta.image_normalization: {exc}") from None
            self._normalizations[version] = norm
        return self._normalizations[version]

    def current(self, version: str | None = None) -> tuple[Detector, str]:
        """The detector to use now, loading or upgrading to the registry's latest version when needed.

        Args:
            version: serve this published version instead of the latest (an unknown name is ignored).
        """
        latest = self.latest_version()
        if version is not None and version != latest:
            with self._swap_lock:
                if version == self._version and self._detector is not None:
                    return self._detector, version
            pinned = self._pinned_detector(version)
            if pinned is not None:
                return pinned, version
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

    def calibration(self, version: str) -> Calibration | None:
        """The stored calibration of ``version`` (``backend.calibration``), re-read when its file changes."""
        path = self.registry.versions_dir / version / CALIBRATION_FILE
        try:  # one stat per task; the file is read again only when it changed
            stamp = path.stat().st_mtime_ns
        except (OSError, ValueError):
            return None
        cached = self._calibrations.get(version)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, read_calibration(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("calibration %s unreadable (%s); the LSM's grades are used", path, exc)
                cached = (stamp, None)
            self._calibrations[version] = cached
        return cached[1]

    def _pinned_detector(self, version: str) -> Detector | None:
        """A detector of an older published version (kept for the last two asked for), or None if unknown."""

        with self._load_lock:
            if version in self._pinned:
                self._pinned.move_to_end(version)
                return self._pinned[version]
            try:
                mv = self.registry.get(version)
            except (KeyError, ValueError):
                return None
            detector = self._load_version(mv)
            self.image_normalization(version)  # like an unloadable checkpoint, an unreadable one raises
            self._pinned[version] = detector
            while len(self._pinned) > 2:
                self._pinned.popitem(last=False)
            return detector

    def _load_version(self, mv: ModelVersion) -> Detector:
        """Load a version with its family (at most ``MAX_DET`` boxes per image), tiled when ``TILE_SIZE`` is
        set: the cap is then per tile, and the merged image is not cut back to it."""
        from model.detector import load_detector

        detector = load_detector(mv, device=self.settings.device, max_det=self.settings.max_det)
        _check_tiling(mv, self.settings)
        if self.settings.tiling is None:
            return detector
        from model.tiling import TiledDetector

        return TiledDetector(detector, self.settings.tiling)

    def detect(self, images: Sequence[np.ndarray | LoadedImage]) -> tuple[list[Detections], list[str], str]:
        """Batched inference: one scored Detections per image, the model's class names, its version."""
        detector, version = self.current()
        arrays = [im.pixels if isinstance(im, LoadedImage) else im for im in images]
        preds = detector.predict(arrays, conf=self.settings.predict_conf, batch=self.settings.predict_batch)
        return preds, list(detector.names), version

    def score_tasks(
        self, tasks: Sequence[Mapping[str, Any]], schema: LabelSchema, *, version: str | None = None
    ) -> list[ScoredTask]:
        """Score tasks, one outcome per task in order; a bad task fails alone (see :class:`ScoredTask`).

        Images are loaded, predicted in one batched pass and released ``PREDICT_BATCH`` tasks at a time.

        Args:
            tasks: Label Studio tasks (``id``, ``data``).
            schema: the labelling config's names and labels.
            version: a published version to serve instead of the latest (unknown names are ignored).

        Raises:
            NoModelError: nothing published (the whole request fails: there is nothing to score with).
        """
        detector, served = self.current(version)  # fail fast with 503 before downloading images
        names = list(detector.names)
        normalization = self.image_normalization(served)
        label_map = schema.label_map(names)
        predictable = predictable_labels(schema, label_map)
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
        out: list[ScoredTask | None] = [None] * len(tasks)
        todo: list[tuple[int, str]] = []
        for i, task in enumerate(tasks):
            try:
                todo.append((i, task_image_url(task, schema)))
            except ValueError as exc:
                reason = str(exc).replace("task ?", f"task {_task_name(task, i)}")
                out[i] = self._failed(task, reason, "task_input", served)
        chunk = max(1, self.settings.predict_batch)
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            # Downloads and decoding overlap (sockets and cv2 release the GIL); order is kept.
            images = list(self._pool.map(lambda it: self._load(tasks, it[0], it[1], normalization), part))
            loaded: list[tuple[int, LoadedImage, CrowdLabels]] = []
            for (i, _), image in zip(part, images, strict=True):
                task = tasks[i]
                try:
                    if isinstance(image, ImageLoadError):
                        raise image
                    loaded.append((i, image, self._crowd(task, i, image, schema)))
                except ImageLoadError as exc:
                    out[i] = self._failed(task, str(exc), f"image_{exc.cause}", served)
                except TaskInputError as exc:
                    out[i] = self._failed(task, str(exc), "task_input", served)
            del images
            preds = self._predict(detector, loaded, conf=self.settings.predict_conf)
            for (i, image, crowd), pred in zip(loaded, preds, strict=True):
                name = _task_name(tasks[i], i)
                if isinstance(pred, Exception):
                    reason = f"task {name}: inference failed ({type(pred).__name__}: {pred})"
                    out[i] = self._failed(tasks[i], reason, "inference", served)
                    continue
                try:
                    mapped = label_map.to_labels(pred)
                    out[i] = self._score_one(
                        tasks[i], image, _scorable(crowd, predictable), mapped, schema, served
                    )
                except Exception as exc:  # a bug or odd input in one task must not fail the batch
                    logger.debug("scoring task %s failed", name, exc_info=True)
                    reason = f"task {name}: scoring failed ({type(exc).__name__}: {exc})"
                    out[i] = self._failed(tasks[i], reason, "scoring", served)
            del loaded  # the chunk's pixels go before the next chunk is read
        assert all(item is not None for item in out)  # every task got a result or an error
        return [item for item in out if item is not None]

    def _load(
        self, tasks: Sequence[Mapping[str, Any]], i: int, url: str, normalization: ImageNormalization
    ) -> LoadedImage | ImageLoadError:
        try:
            image = self.loader.load(url, task=_task_name(tasks[i], i), normalization=normalization)
            # Scoring needs the pixels only: the fetched file's bytes (kept for the export) go at once.
            return replace(image, data=None) if image.data is not None else image
        except ImageLoadError as exc:
            return exc

    @staticmethod
    def _predict(
        detector: Detector, loaded: Sequence[tuple[int, LoadedImage, CrowdLabels]], *, conf: float
    ) -> list[Detections | Exception]:
        """One batched forward pass over a chunk; if it fails, image by image so one bad input fails alone."""
        if not loaded:
            return []
        arrays = [image.pixels for _, image, _ in loaded]
        try:
            return list(detector.predict(arrays, conf=conf, batch=len(arrays)))
        except Exception as exc:
            if len(arrays) == 1:
                return [exc]
            logger.warning("batched inference of %d images failed; retrying image by image", len(arrays))
            return [_predict_one(detector, a, conf) for a in arrays]

    def _score_one(
        self,
        task: Mapping[str, Any],
        image: LoadedImage,
        labels: CrowdLabels,
        pred: Detections,
        schema: LabelSchema,
        version: str,
    ) -> ScoredTask:
        from selection.calibration import DEFAULT_PRIORITY, calibrated_verdict, image_priority
        from selection.lsm import score_image

        crowd = labels.detections
        score = score_image(crowd, pred, config=self.settings.lsm)
        priority = score.discrepancy  # uncalibrated: the LSM's own order, as the benchmark's first rounds buy
        calibration = self.calibration(version)
        if calibration is not None:  # grades and type weights fitted on the project's expert tasks
            priority = image_priority(
                crowd,
                pred,
                score,
                calibration,
                rule=DEFAULT_PRIORITY,
                agreement=labels.agreement,
                config=self.settings.lsm,
            )
            score = calibrated_verdict(
                crowd, pred, score, calibration, agreement=labels.agreement, config=self.settings.lsm
            )
        proposals = proposals_from_score(
            crowd,
            pred,
            score,
            score_threshold=self.settings.score_threshold,
            votes=labels.votes,
            annotators=labels.annotators,
        )
        regions = build_regions(proposals, schema=schema, width=image.width, height=image.height)
        inst = score.instances
        types = [str(t) for t in inst.noise_type[inst.parent < 0]]
        fields = TaskFields(
            discrepancy=float(score.discrepancy),
            priority=float(priority),
            noise_grade=str(score.grade),
            noise_types=noise_types_text(types),
            model_version=version,
        )
        return ScoredTask(
            task_id=_task_id(task),
            prediction=build_prediction(regions, score=priority, model_version=version),
            fields=fields,
        )

    @staticmethod
    def _failed(task: Mapping[str, Any], reason: str, cause: str, version: str) -> ScoredTask:
        logger.warning("not scored: %s", reason)
        return ScoredTask(
            task_id=_task_id(task),
            prediction={"model_version": version, "error": reason},
            fields=None,
            error=reason,
            error_cause=cause,
        )

    def _crowd(
        self, task: Mapping[str, Any], index: int, image: LoadedImage, schema: LabelSchema
    ) -> CrowdLabels:
        try:
            return self.crowd_reader.read(task, width=image.width, height=image.height, schema=schema)
        except ValueError as exc:
            raise TaskInputError(f"task {_task_name(task, index)}: {exc}") from None


def _predict_one(detector: Detector, pixels: np.ndarray, conf: float) -> Detections | Exception:
    try:
        return detector.predict([pixels], conf=conf, batch=1)[0]
    except Exception as exc:
        return exc


def _scorable(labels: CrowdLabels, predictable: np.ndarray) -> CrowdLabels:
    """The crowd boxes the model can judge: those of a label it was trained without (``predictable_labels``
    False: a label added to the config later) are left out of the scoring, so no finding proposes deleting
    them; annotators still see them as the crowd drew them."""
    dets = labels.detections
    if len(dets) == 0 or bool(predictable[dets.class_id].all()):
        return labels
    keep = predictable[dets.class_id]
    votes = labels.votes[keep] if labels.votes is not None else None
    return replace(labels, detections=dets.subset(keep), votes=votes)
