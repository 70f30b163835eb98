"""``python -m backend.export``: write a project's cleaned dataset (COCO, YOLO or Label Studio JSON).

Per task, one of three sources gives the exported boxes:

* ``expert``: the task's expert annotation (the backend's ``EXPERT_MODE`` policy; the most recent one);
* ``auto-corrected``: the crowd labels (read as the backend reads them, ``CROWD_SOURCE``: the task field or
  the crowd users' annotations, fused) with the confident fixes of the serving model applied -- the very
  ``selection.correction.plan_corrections`` plan the backend renders as proposals (same ``LSM_*``
  thresholds, predictions at the same ``PREDICT_CONF``), applied by ``correct_labels``;
* ``crowd``: the crowd labels as they are, when the plan changes nothing.

The model version is loaded and fed as ``/predict`` does (``backend.service.ModelService``): tiled under
``TILE_SIZE``, images normalised with the version's recorded ``image_normalization``, and, where the version
has a grade calibration (``backend.calibration``), the findings regraded with it first; so the export applies
the fixes the annotators were shown.

Tasks nobody labelled (no crowd labels under ``CROWD_SOURCE``, no expert annotation) are left out and listed
in ``manifest.json``'s ``unlabelled``. Crowd boxes of a label the model cannot predict (added to the labelling
config after it was trained) are exported as the crowd drew them, unscored, with one warning naming the
labels (``counts.unscored_crowd_boxes``, ``model.unpredicted_labels``).

Instances the plan leaves for an expert (grade ``uncertain``, edit ``review``) stay as the crowd drew them
(a prediction under review is not added) and are listed in ``review.json`` / ``review.csv``. ``manifest.json``
records each image's source, the model version, the thresholds and the counts. ``SCORE_THRESHOLD`` only hides
low-confidence model boxes from annotators; it changes neither the plan nor this export.

Output (``--out DIR``, which must not exist or be empty; written to a temporary folder and renamed)::

    DIR/manifest.json  DIR/review.json  DIR/review.csv
    coco: DIR/annotations.json  DIR/images/<name>              (COCO file_name = <name>, image id = task id)
    yolo: DIR/data.yaml  DIR/images/<name>  DIR/labels/<name without suffix>.txt
    ls:   DIR/tasks.json  (Label Studio import form: the task data, one ground-truth-or-not annotation)
    --train-final: DIR/model/versions/<version>/weights.pt (+ meta.json), a registry of its own

``--train-final`` is the full method's last step (``bench.simulate``'s full arm): the detector trained on the
cleaned labels of every image, warm-started from the version that proposed the fixes, with the backend's
``TRAIN_*`` settings; ``manifest.json`` gains ``final_model`` (version, init, sizes, validation mAP50). It is
published to the export's own registry, never to ``MODEL_DIR``: a model trained on its own fixes would no
longer find them, so the serving version stays the one trained on expert labels only.

Images are written as they were fetched (byte for byte), except in the YOLO layout, which ultralytics trains
on as it stands: there an image ultralytics would not read as the model sees it (16-bit, which it reads by its
high byte, so 12-bit data comes out nearly black; float or int16; any TIFF; every image under the
``percentile`` normalisation) is written as the 8-bit PNG of the pixels the model saw, normalised with the
version's ``image_normalization`` -- the file ``--train-final``'s own dataset holds too
(``model.dataset.links_unchanged``, ``write_normalized_png``) -- and its ``<name>`` takes the suffix ``.png``.
``manifest.json`` records the normalisation (``image_conversion``) and, per image, ``converted``.
``--original-images`` keeps every YOLO image as fetched; COCO always does (its readers decode images their own
way).

Categories are the labelling config's labels without deletion labels (``background``, ``drop``...): boxes an
expert labelled with one of those are left out. ``<name>`` is the task's ``image_id`` (or the image URL's file
name) with the image's suffix, prefixed ``task<id>_`` when two tasks would share it without its suffix or
case (``a.png``, ``a.jpg`` and ``A.png`` would share a YOLO label file or, on macOS and Windows, an image).

Settings come from the backend's environment variables (``Settings.from_env``); flags override them.
Exit status (one ``error:`` line; nothing is left half-written): 0 done; 2 what the user must fix: bad options
or settings (checked before anything is loaded: an ``--out`` that is not a new or empty folder in a writable
one), a task image that is malformed (or no image reference), missing (no such local file), too large or not
an image, malformed crowd labels or expert regions (:class:`ExportInputError`; images classified as
``backend.bootstrap`` does, by ``backend.images.SOURCE_FAILURES``); 1 the rest: a task image that cannot be
fetched (a network failure, an HTTP error: running again may help), Label Studio, model or disk failures.
"""

from __future__ import annotations

import argparse
import csv
import enum
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from backend.bootstrap import WEAK_MAP50, has_crowd_labels, validation_map50
from backend.crowd import CrowdLabels, CrowdReader
from backend.images import ImageLoader, ImageLoadError, LoadedImage
from backend.labelconfig import DROP_LABEL_NAMES, LabelSchema, predictable_labels
from backend.protocol import task_image_url
from backend.roles import CrowdPolicy, expert_annotation
from backend.settings import ExpertPolicy, Settings, SettingsError, lsm_as_dict, settings_with_overrides
from formats.images import ImageNormalization, normalize_image
from formats.labelstudio import regions_to_detections
from selection.calibration import Calibration, calibrated_verdict
from selection.correction import CorrectionPlan, Edit, correct_labels, plan_corrections
from selection.detections import Detections
from selection.lsm import LSMConfig, score_image

if TYPE_CHECKING:
    from model.detector import Detector
    from model.registry import ModelVersion

logger = logging.getLogger(__name__)

__all__ = [
    "CleanedTask",
    "Decision",
    "ExportError",
    "ExportFormat",
    "ExportInputError",
    "ImageSource",
    "ReviewItem",
    "clean_tasks",
    "decide",
    "export_categories",
    "main",
    "review_items",
    "unlabelled_tasks",
    "write_export",
]


class ExportError(RuntimeError):
    """The export cannot proceed (no such project, no model version, a bad task, an image that cannot be
    fetched); the message says why. The command exits 1 on it, 2 on the options it refuses before starting."""


class ExportInputError(ExportError):
    """A task is the user's to fix: its image has no or a malformed reference, no such local file, is too
    large or not an image, or its crowd labels or expert regions are malformed (exit 2: running again fails
    the same way). An image whose host or network failed is a plain :class:`ExportError`
    (``backend.images.ImageLoadError.source_failed``)."""


class ExportFormat(enum.StrEnum):
    """Output layouts."""

    COCO = "coco"
    YOLO = "yolo"
    LS = "ls"


class ImageSource(enum.StrEnum):
    """Where an image's exported boxes come from."""

    EXPERT = "expert"
    AUTO_CORRECTED = "auto-corrected"
    CROWD = "crowd"


_APPLIED = ("moved", "dropped", "split", "added")
"""``Correction.counts`` keys of edits that change the crowd labels."""


@dataclass(frozen=True)
class Decision:
    """What is exported for one image.

    Attributes:
        source: expert, auto-corrected (the plan changed something) or crowd.
        labels: the exported boxes (pixels, unscored; class ids index the labelling config's labels).
        plan: the correction plan (None for expert images).
        counts: ``correct_labels`` counts (kept, moved, dropped, split, added, flagged, vetoed); empty for
            expert images.
        discrepancy: the image's LSM discrepancy (None for expert images).
        grade: the image's worst grade (None for expert images).
        unscored: crowd boxes of labels the model has no class for, exported as the crowd drew them (not in
            ``counts``, which count the boxes the plan acted on).
    """

    source: ImageSource
    labels: Detections
    plan: CorrectionPlan | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    discrepancy: float | None = None
    grade: str | None = None
    unscored: int = 0


def decide(
    crowd: Detections,
    pred: Detections | None,
    expert: Detections | None,
    *,
    config: LSMConfig,
    calibration: Calibration | None = None,
    agreement: np.ndarray | None = None,
    predictable: np.ndarray | None = None,
) -> Decision:
    """Decide one image's exported boxes: the expert's, else the crowd's with the plan's fixes applied.

    A crowd box of a label the model cannot predict (a label added to the config after training) would be
    graded background and dropped: the model is blind to it, not the crowd wrong. Such boxes (``predictable``
    False for their label) are left out of the scoring and exported as the crowd drew them.

    Args:
        crowd: the crowd boxes (pixels; class ids = label indices).
        pred: the serving model's predictions (pixels, scored, class ids already label indices); may be None
            only when ``expert`` is given.
        expert: the expert annotation's boxes, or None when the image has none.
        config: the LSM thresholds the backend scores with.
        calibration: the model version's grade calibration (``backend.calibration``), applied as ``/predict``
            applies it; None: the LSM's own grades.
        agreement: float (M,) annotator agreement per crowd box, for the calibration (None: unknown).
        predictable: bool (n_labels,) per label index, whether the model predicts that label
            (:func:`predictable_labels`); None: every label.

    Returns:
        The decision (see :class:`Decision`).

    Raises:
        ValueError: ``pred`` is None for an image without an expert annotation.

    Example:
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[105, 100, 125, 120]]), np.array([0]), score=np.array([0.9]))
        >>> d = decide(crowd, pred, None, config=LSMConfig())
        >>> str(d.source), d.labels.xyxy.tolist(), d.counts["moved"]
        ('auto-corrected', [[105.0, 100.0, 125.0, 120.0]], 1)
        >>> str(decide(crowd, None, crowd, config=LSMConfig()).source)
        'expert'
        >>> blind = decide(crowd, Detections.empty(with_score=True), None, config=LSMConfig(),
        ...                predictable=np.array([False]))  # the model has no class for label 0
        >>> str(blind.source), blind.labels.xyxy.tolist(), blind.unscored
        ('crowd', [[100.0, 100.0, 120.0, 120.0]], 1)
    """
    if expert is not None:
        return Decision(ImageSource.EXPERT, Detections(expert.xyxy, expert.class_id))
    if pred is None:
        raise ValueError("pred: predictions are needed for an image without an expert annotation")
    as_drawn = Detections.empty()
    if predictable is not None and len(crowd):
        scored = predictable[crowd.class_id]
        as_drawn = crowd.subset(~scored)
        crowd = crowd.subset(scored)
        agreement = agreement[scored] if agreement is not None else None
    score = score_image(crowd, pred, config=config)
    if calibration is not None:
        score = calibrated_verdict(crowd, pred, score, calibration, agreement=agreement, config=config)
    plan = plan_corrections(crowd, pred, score, config=config)
    correction = correct_labels(crowd, pred, score, config=config)
    changed = any(correction.counts[k] for k in _APPLIED)
    return Decision(
        source=ImageSource.AUTO_CORRECTED if changed else ImageSource.CROWD,
        labels=Detections.concat([correction.labels, as_drawn]) if len(as_drawn) else correction.labels,
        plan=plan,
        counts=dict(correction.counts),
        discrepancy=float(score.discrepancy),
        grade=str(score.grade),
        unscored=len(as_drawn),
    )


@dataclass(frozen=True)
class ReviewItem:
    """One instance the plan leaves for an expert (a row of the review file).

    Attributes:
        task_id: the Label Studio task.
        image: the image's name in the export.
        xyxy: the box in pixels (the crowd box, or the prediction for a model instance).
        label: its label name.
        noise_type: the LSM's noise type.
        grade: always ``uncertain`` today (the grade that leads to review).
        severity: in [0, 1].
        confidence: the model's confidence behind the finding.
        origin: ``crowd`` (a crowd box, kept in the export) or ``model`` (a prediction, not added).
    """

    task_id: int
    image: str
    xyxy: tuple[float, float, float, float]
    label: str
    noise_type: str
    grade: str
    severity: float
    confidence: float
    origin: str

    def as_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "image": self.image,
            "box_xyxy": [round(v, 2) for v in self.xyxy],
            "label": self.label,
            "noise_type": self.noise_type,
            "grade": self.grade,
            "severity": round(self.severity, 4),
            "confidence": round(self.confidence, 4),
            "origin": self.origin,
        }


def review_items(
    plan: CorrectionPlan, *, task_id: int, image: str, labels: Sequence[str]
) -> list[ReviewItem]:
    """The plan's ``review`` instances of one image as review-file rows.

    Args:
        plan: the image's correction plan.
        task_id: the task id.
        image: the image's name in the export.
        labels: label names by class id (the labelling config's labels).
    """
    f = plan.findings
    out = []
    for i in np.flatnonzero(plan.edit == Edit.REVIEW.value):
        cls = int(plan.class_id[i])
        out.append(
            ReviewItem(
                task_id=task_id,
                image=image,
                xyxy=tuple(float(v) for v in plan.xyxy[i]),  # type: ignore[arg-type]
                label=labels[cls] if 0 <= cls < len(labels) else str(cls),
                noise_type=str(f.noise_type[i]),
                grade=str(f.grade[i]),
                severity=float(f.severity[i]),
                confidence=float(f.confidence[i]),
                origin="crowd" if int(f.source[i]) == 0 else "model",
            )
        )
    return out


def export_categories(schema: LabelSchema) -> tuple[list[str], np.ndarray]:
    """The exported categories and the label -> category map.

    Returns:
        The config's labels without deletion labels, and int64 (n_labels,) category index per label
        (-1 for a deletion label, whose boxes are not exported).
    """
    categories = [lab for lab in schema.labels if lab.casefold() not in DROP_LABEL_NAMES]
    index = {lab: i for i, lab in enumerate(categories)}
    return categories, np.array([index.get(lab, -1) for lab in schema.labels], np.int64)


def _to_categories(labels: Detections, label_to_category: np.ndarray) -> Detections:
    cat = label_to_category[labels.class_id] if len(labels) else labels.class_id
    keep = cat >= 0
    return Detections(labels.xyxy[keep], cat[keep].astype(np.int64))


@dataclass(frozen=True)
class CleanedTask:
    """One exported image.

    Attributes:
        task_id: the Label Studio task.
        name: the image's name in the export (relative POSIX path with suffix).
        data: the task's data (written to the Label Studio export).
        width, height: image size in pixels.
        decision: what is exported and why.
        labels: the exported boxes, class ids = category indices.
        review: the instances left for an expert.
        converted: the image was written as the 8-bit PNG of its normalised pixels, not as fetched (see the
            module docstring).
    """

    task_id: int
    name: str
    data: Mapping[str, Any]
    width: int
    height: int
    decision: Decision
    labels: Detections
    review: tuple[ReviewItem, ...]
    converted: bool = False


_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
# Suffixes an exported image keeps (all among ultralytics' image formats, so a YOLO export trains on every
# image); any other image (.gif, .pgm, none ...) is written as a PNG.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _url_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme == "data":
        return ""
    if parsed.path.startswith("/data/local-files"):
        # parse_qs percent-decodes once, as Label Studio serves ?d= (a second unquote would turn a file
        # named scan%20a.png into scan a.png).
        return parse_qs(parsed.query).get("d", [""])[0]
    return unquote(parsed.path)


def image_name(task: Mapping[str, Any], url: str, *, default_suffix: str = ".png") -> str:
    """The image's name in the export: ``data.image_id`` (else the URL's file name) plus the image's suffix.

    >>> image_name({"id": 3, "data": {"image_id": "train/000012"}}, "/data/local-files/?d=d/000012.png")
    'train/000012.png'
    >>> image_name({"id": 3, "data": {}}, "/data/upload/1/ab12cd34-scan 1.jpg")
    'ab12cd34-scan_1.jpg'
    >>> image_name({"id": 3, "data": {}}, "data:image/png;base64,AAAA")
    'task3.png'
    """
    data = task.get("data") or {}
    path = PurePosixPath(_url_path(url))
    suffix = path.suffix.lower() if path.suffix.lower() in _IMAGE_SUFFIXES else default_suffix
    stem = str(data.get("image_id") or "") or (path.stem if path.name else "") or f"task{task.get('id')}"
    parts = [p for p in _UNSAFE.sub("_", stem).split("/") if p not in ("", ".", "..")]
    return "/".join(parts or [f"task{task.get('id')}"]) + suffix


def _unique_name(name: str, task_id: object, taken: set[str]) -> str:
    """``name``, or ``task<id>_<name>`` when an earlier image has it without its suffix (``a.png`` and
    ``a.jpg`` would share the YOLO label file ``labels/a.txt``) or in another case (``A.png`` and ``a.png``
    are one file on macOS and Windows); ``taken`` holds those keys and gains this name's.

    >>> taken = set()
    >>> [_unique_name(n, i, taken) for i, n in enumerate(["s/a.png", "s/a.jpg", "s/A.png", "b.png"])]
    ['s/a.png', 's/task1_a.jpg', 's/task2_A.png', 'b.png']
    """

    def key(candidate: PurePosixPath) -> str:
        return str(candidate.with_suffix("")).casefold()

    path = PurePosixPath(name)
    candidate, n = path, 1
    while key(candidate) in taken:
        prefix = f"task{task_id}_" if n == 1 else f"task{task_id}_{n}_"
        candidate, n = path.with_name(prefix + path.name), n + 1
    taken.add(key(candidate))
    return str(candidate)


def _task_regions(ann: Mapping[str, Any], schema: LabelSchema) -> list[Mapping[str, Any]]:
    return [r for r in ann.get("result") or [] if r.get("from_name") == schema.from_name]


def clean_tasks(
    tasks: Sequence[Mapping[str, Any]],
    *,
    schema: LabelSchema,
    detector: Detector | None,
    loader: ImageLoader,
    policy: ExpertPolicy,
    config: LSMConfig,
    predict_conf: float,
    batch: int = 16,
    image_dir: Path | None = None,
    progress: bool = False,
    crowd_reader: CrowdReader | None = None,
    calibration: Calibration | None = None,
    normalization: ImageNormalization | None = None,
    convert_images: bool = False,
) -> list[CleanedTask]:
    """Decide every task's exported boxes (images loaded and predicted in chunks of ``batch``).

    Tasks nobody labelled (:func:`unlabelled_tasks`: no crowd labels, no expert annotation) are left out:
    their image is neither loaded nor exported. Crowd boxes of labels the model has no class for are exported
    as drawn (see :func:`decide`), with one warning naming those labels.

    Args:
        tasks: Label Studio tasks with ``data`` and ``annotations`` (as ``LabelStudioSource.tasks`` gives
            them: ``completed_by_email`` set for user ids).
        schema: the project's labelling config.
        detector: the serving model; None only when every task has an expert annotation.
        loader: loads the task images (the backend's loader: same auth and document root).
        policy: which annotations are expert annotations (``EXPERT_MODE``).
        config: the LSM thresholds (``LSM_*``).
        predict_conf: the prediction confidence floor (``PREDICT_CONF``).
        batch: images per chunk (``PREDICT_BATCH``).
        image_dir: when given, each image is written there under its export name.
        progress: show a progress bar (tqdm, on stderr).
        crowd_reader: reads each task's crowd boxes as the backend does (``CROWD_SOURCE``: the
            ``crowd_labels`` field or crowd users' annotations, fused per annotator); default: the field.
        calibration: the model version's grade calibration (None: the LSM's own grades), as ``/predict``
            regrades with it.
        normalization: how images become the detector's uint8 pixels: the model version's recorded one, as
            ``/predict`` loads them (``ModelService.image_normalization``); None: the loader's.
        convert_images: with ``image_dir``, write each image ultralytics would not read as the model sees it
            as the 8-bit PNG of those pixels (``model.dataset.links_unchanged``; the YOLO layout), renamed
            ``.png`` (``CleanedTask.converted``); False: every image as fetched.

    Returns:
        One :class:`CleanedTask` per labelled task, in order.

    Raises:
        ExportInputError: a task's image reference is missing or malformed, names a missing local file, or is
            too large or not an image (naming the task).
        ExportError: a task's image cannot be fetched (a network failure, an HTTP error), its crowd labels or
            expert regions are malformed, or a task needs the model and there is none.
    """
    from tqdm import tqdm

    _, to_category = export_categories(schema)
    norm = normalization if normalization is not None else loader.normalization
    reader = crowd_reader or CrowdReader(CrowdPolicy(), policy, users=None)
    label_map = schema.label_map(detector.names) if detector is not None else None
    if label_map is not None and label_map.unmapped:
        logger.warning(
            "model classes %s match no label of %s: their predictions are ignored",
            list(label_map.unmapped),
            list(schema.labels),
        )
    predictable = predictable_labels(schema, label_map) if label_map is not None else None
    unscored: Counter[str] = Counter()  # label -> crowd boxes exported as drawn (the model has no class)
    tasks = [t for t in tasks if not _unlabelled(t, policy, reader)]
    taken: set[str] = set()  # image names without suffix, casefolded (see _unique_name)
    out: list[CleanedTask] = []
    bar = tqdm(total=len(tasks), desc="exporting", unit="task", disable=not progress)
    try:
        for start in range(0, len(tasks), max(1, batch)):
            chunk = tasks[start : start + max(1, batch)]
            loaded: list[
                tuple[Mapping[str, Any], LoadedImage, str, bool, CrowdLabels, Detections | None]
            ] = []
            for task in chunk:
                tid = task.get("id", "?")
                try:
                    url = task_image_url(task, schema)
                except ValueError as exc:
                    raise ExportInputError(str(exc)) from None
                try:  # ImageLoader.load, keeping the decoded pixels to tell how to write the image
                    decoded = loader.decode(url, task=str(tid))
                except ImageLoadError as exc:
                    if exc.source_failed:  # backend.images.SOURCE_FAILURES: a retry may help (exit 1)
                        raise ExportError(str(exc)) from None
                    raise ExportInputError(str(exc)) from None
                pixels = normalize_image(decoded.pixels, norm)
                image = LoadedImage(pixels, path=decoded.path, data=decoded.data)
                crowd, expert = _task_labels(task, schema, policy, reader, image)
                fmt = _file_format(image.data) if image.data is not None else None  # read once, used twice
                name = _unique_name(image_name(task, url, default_suffix=_suffix(fmt)), tid, taken)
                converted = False
                if image_dir is not None:
                    if convert_images and not _reads_unchanged(image, decoded.pixels, name, fmt, norm):
                        name, converted = str(PurePosixPath(name).with_suffix(".png")), True
                        _write_converted(image, decoded.pixels, image_dir / name)
                    else:
                        _write_image(image, image_dir / name, fmt)
                del decoded
                loaded.append((task, image, name, converted, crowd, expert))
            need = [i for i, item in enumerate(loaded) if item[5] is None]
            preds: dict[int, Detections] = {}
            if need:
                if detector is None or label_map is None:
                    raise ExportError("no model version: tasks without an expert annotation need the model")
                found = detector.predict(
                    [loaded[i][1].pixels for i in need], conf=predict_conf, batch=max(1, batch)
                )
                preds = {i: label_map.to_labels(p) for i, p in zip(need, found, strict=True)}
            for i, (task, image, name, converted, crowd, expert) in enumerate(loaded):
                decision = decide(
                    crowd.detections,
                    preds.get(i),
                    expert,
                    config=config,
                    calibration=calibration,
                    agreement=crowd.agreement,
                    predictable=predictable,
                )
                if decision.unscored and predictable is not None:
                    blind = crowd.detections.class_id[~predictable[crowd.detections.class_id]]
                    unscored.update(schema.labels[int(c)] for c in blind)
                tid = int(task["id"])
                review = (
                    review_items(decision.plan, task_id=tid, image=name, labels=schema.labels)
                    if decision.plan is not None
                    else []
                )
                out.append(
                    CleanedTask(
                        task_id=tid,
                        name=name,
                        data=dict(task.get("data") or {}),
                        width=image.width,
                        height=image.height,
                        decision=decision,
                        labels=_to_categories(decision.labels, to_category),
                        review=tuple(review),
                        converted=converted,
                    )
                )
            bar.update(len(chunk))
    finally:
        bar.close()
    if unscored and detector is not None:
        logger.warning(
            "the model (classes %s) cannot predict the label(s) %s: their %d crowd boxes are exported as the "
            "crowd drew them, unchecked; train a version that knows them to check them",
            list(detector.names),
            sorted(unscored),
            sum(unscored.values()),
        )
    return out


def _unlabelled(task: Mapping[str, Any], policy: ExpertPolicy, reader: CrowdReader) -> bool:
    return expert_annotation(task, policy) is None and not has_crowd_labels(task, reader)


def unlabelled_tasks(
    tasks: Iterable[Mapping[str, Any]], *, policy: ExpertPolicy, crowd_reader: CrowdReader
) -> list[int]:
    """Ids of the tasks nobody labelled, which the export leaves out: no expert annotation (``policy``) and no
    crowd labels under the reader's ``CROWD_SOURCE`` (no ``crowd_labels`` field, or no crowd annotation;
    ``backend.bootstrap.has_crowd_labels``, the bootstrap's rule). An empty ``crowd_labels`` list is a label:
    the crowd saw nothing there.

    >>> reader = CrowdReader(CrowdPolicy(), ExpertPolicy(), users=None)
    >>> tasks = [{"id": 1, "data": {"crowd_labels": []}}, {"id": 2, "data": {}}]
    >>> unlabelled_tasks(tasks, policy=ExpertPolicy.parse("ground_truth"), crowd_reader=reader)
    [2]
    """
    return [int(t.get("id") or 0) for t in tasks if _unlabelled(t, policy, crowd_reader)]


def _task_labels(
    task: Mapping[str, Any],
    schema: LabelSchema,
    policy: ExpertPolicy,
    reader: CrowdReader,
    image: LoadedImage,
) -> tuple[CrowdLabels, Detections | None]:
    """The task's crowd labels and its expert boxes (None without an expert annotation), label indices."""
    tid = task.get("id", "?")
    try:
        crowd = reader.read(task, width=image.width, height=image.height, schema=schema)
    except ValueError as exc:  # the task's data: running again fails the same way (exit 2)
        raise ExportInputError(f"task {tid}: {exc}") from None
    ann = expert_annotation(task, policy)
    if ann is None:
        return crowd, None
    try:
        expert = regions_to_detections(
            _task_regions(ann, schema),
            label_to_id=schema.label_ids,
            width=image.width,
            height=image.height,
            from_name=schema.from_name,
        )
    except ValueError as exc:
        raise ExportInputError(f"task {tid}: expert annotation {ann.get('id', '?')}: {exc}") from None
    return crowd, expert


def _in_own_format(image: LoadedImage, suffix: str, fmt: str | None) -> bool:
    """Whether the image's file (or its fetched bytes, of PIL format ``fmt``) is in the format ``suffix``
    names, so that it can be written unchanged under that suffix."""
    if image.path is not None and image.path.suffix.lower() == suffix:
        return True
    from PIL import Image

    return image.data is not None and fmt == Image.registered_extensions().get(suffix)


def _write_image(image: LoadedImage, target: Path, fmt: str | None) -> None:
    """The image file unchanged (copied, or the fetched bytes written) when its format (``fmt``, the fetched
    bytes' :func:`_file_format`) is the name's suffix; else re-encoded from the pixels the model saw (a .gif
    as PNG)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if image.path is not None and image.path.suffix.lower() == target.suffix:
        shutil.copyfile(image.path, target)
        return
    from PIL import Image

    if image.data is not None and fmt == Image.registered_extensions().get(target.suffix):
        target.write_bytes(image.data)
        return
    Image.fromarray(image.pixels).save(target)


def _reads_unchanged(
    image: LoadedImage, decoded: np.ndarray, name: str, fmt: str | None, normalization: ImageNormalization
) -> bool:
    """Whether ultralytics, reading the image written unchanged as ``name``, gets the pixels the model saw:
    the file is in the format of the name's suffix and ``model.dataset.links_unchanged`` holds for it (the
    rule ``--train-final``'s training data follows)."""
    from model.dataset import links_unchanged

    suffix = PurePosixPath(name).suffix.lower()
    return _in_own_format(image, suffix, fmt) and links_unchanged(suffix, decoded.dtype, normalization)


def _write_converted(image: LoadedImage, decoded: np.ndarray, target: Path) -> None:
    """The pixels the model saw (``image.pixels``) as the 8-bit PNG ``target`` (gray when the file was gray),
    as the training dataset writes them (``model.dataset.write_normalized_png``)."""
    from model.dataset import write_normalized_png

    target.parent.mkdir(parents=True, exist_ok=True)
    write_normalized_png(image.pixels, target.with_suffix(""), gray=decoded.ndim == 2)


_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def _suffix(fmt: str | None) -> str:
    """The suffix of a fetched image's own format (``fmt``), for a URL without one (a data URI, a storage
    proxy URL); ``.png`` when unknown."""
    return _FORMAT_SUFFIX.get(fmt or "", ".png")


def _file_format(data: bytes) -> str | None:
    """PIL's name of the format of an image file's bytes (``PNG``, ``JPEG``...), None if unknown."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format) if im.format else None
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _counts(cleaned: Sequence[CleanedTask], unlabelled: Sequence[int]) -> dict[str, Any]:
    sources = Counter(str(c.decision.source) for c in cleaned)
    edits: Counter[str] = Counter()
    for c in cleaned:
        edits.update({k: int(v) for k, v in c.decision.counts.items()})
    return {
        "images": len(cleaned),
        "by_source": {s.value: sources.get(s.value, 0) for s in ImageSource},
        "boxes": int(sum(len(c.labels) for c in cleaned)),
        # crowd boxes on the images without an expert annotation (what the corrections act on)
        "crowd_boxes": int(sum(edits.get(k, 0) for k in ("kept", "moved", "dropped", "split"))),
        # crowd boxes of labels the model cannot predict, exported as drawn (not among crowd_boxes)
        "unscored_crowd_boxes": int(sum(c.decision.unscored for c in cleaned)),
        "unlabelled": len(unlabelled),
        "review_instances": int(sum(len(c.review) for c in cleaned)),
        "review_images": int(sum(bool(c.review) for c in cleaned)),
        "edits": {k: edits.get(k, 0) for k in ("kept", "moved", "dropped", "split", "added", "flagged")},
    }


def build_manifest(
    cleaned: Sequence[CleanedTask],
    *,
    fmt: ExportFormat,
    project: int | None,
    categories: Sequence[str],
    model: Mapping[str, Any] | None,
    settings: Settings,
    unlabelled: Sequence[int] = (),
    conversion: ImageNormalization | None = None,
) -> dict[str, Any]:
    """The export's ``manifest.json``: sources, model version, thresholds, counts, one row per image.

    Args:
        cleaned: the exported tasks.
        fmt: the output format.
        project: the Label Studio project id.
        categories: the exported category names (index = class id in the files).
        model: ``{"version", "family", "source"}`` of the model version used, or None when none was needed.
        settings: the settings in force (expert policy, ``PREDICT_CONF``, ``LSM_*``).
        unlabelled: ids of the tasks left out because nobody labelled them (:func:`unlabelled_tasks`).
        conversion: the normalisation the images ``CleanedTask.converted`` were written with (the YOLO
            layout: ``image_conversion``, with how many); None when every image is written as fetched.
    """
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": fmt.value,
        "project": project,
        "label_studio_url": settings.label_studio_url,
        "categories": list(categories),
        "model": dict(model) if model is not None else None,
        "expert_mode": settings.expert.describe(),
        "crowd": settings.crowd.describe(),
        "predict_conf": settings.predict_conf,
        "lsm": lsm_as_dict(settings.lsm),
        "counts": _counts(cleaned, unlabelled),
        "image_conversion": None
        if conversion is None
        else {
            "normalization": conversion.as_dict(),
            "converted": int(sum(c.converted for c in cleaned)),
        },
        "unlabelled": [int(t) for t in unlabelled],
        "images": [
            {
                "task_id": c.task_id,
                "image": c.name,
                "source": str(c.decision.source),
                "boxes": len(c.labels),
                "review": len(c.review),
                "discrepancy": None if c.decision.discrepancy is None else round(c.decision.discrepancy, 4),
                "grade": c.decision.grade,
                "edits": {k: int(v) for k, v in c.decision.counts.items() if v},
                "unscored": c.decision.unscored,
                "converted": c.converted,
            }
            for c in cleaned
        ],
    }


def write_export(
    out_dir: Path,
    cleaned: Sequence[CleanedTask],
    *,
    fmt: ExportFormat,
    categories: Sequence[str],
    schema: LabelSchema,
    manifest: Mapping[str, Any],
) -> None:
    """Write the labels, the review file and the manifest into ``out_dir`` (images are written by
    :func:`clean_tasks`).

    Args:
        out_dir: the export folder (created).
        cleaned: the exported tasks.
        fmt: the layout (module docstring).
        categories: category names, index = class id of ``CleanedTask.labels``.
        schema: the labelling config (control and object names of the Label Studio regions).
        manifest: the manifest (:func:`build_manifest`).
    """
    from formats.coco import CocoImage, to_coco
    from formats.labelstudio import detections_to_regions
    from formats.yolo import write_yolo_labels

    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt is ExportFormat.COCO:
        coco = to_coco(
            [CocoImage(c.task_id, c.name, c.width, c.height, c.labels) for c in cleaned],
            categories=categories,
        )
        (out_dir / "annotations.json").write_text(json.dumps(coco, indent=1))
    elif fmt is ExportFormat.YOLO:
        import yaml

        for c in cleaned:
            label_path = (out_dir / "labels" / c.name).with_suffix(".txt")
            write_yolo_labels(label_path, c.labels, c.width, c.height)
        # No "path": ultralytics then resolves train/val against the file's own folder (a relative "path"
        # would be taken from the current directory).
        spec = {"train": "images", "val": "images", "names": dict(enumerate(categories))}
        (out_dir / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    else:
        tasks = []
        for c in cleaned:
            regions = detections_to_regions(
                c.labels,
                width=c.width,
                height=c.height,
                labels=categories,
                from_name=schema.from_name,
                to_name=schema.to_name,
            )
            tasks.append(
                {
                    "id": c.task_id,
                    "data": dict(c.data),
                    "annotations": [
                        {"result": regions, "ground_truth": c.decision.source is ImageSource.EXPERT}
                    ],
                    "meta": {"cleaned_source": str(c.decision.source)},
                }
            )
        (out_dir / "tasks.json").write_text(json.dumps(tasks, indent=1))
    _write_review(out_dir, [r for c in cleaned for r in c.review])
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))


REVIEW_COLUMNS = (
    "task_id",
    "image",
    "x1",
    "y1",
    "x2",
    "y2",
    "label",
    "noise_type",
    "grade",
    "severity",
    "confidence",
    "origin",
)
"""Columns of ``review.csv`` (box corners in pixels)."""


def _write_review(out_dir: Path, items: Iterable[ReviewItem]) -> None:
    rows = [r.as_json() for r in items]
    (out_dir / "review.json").write_text(json.dumps(rows, indent=1))
    with open(out_dir / "review.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REVIEW_COLUMNS)
        for r in rows:
            x1, y1, x2, y2 = r["box_xyxy"]
            fields = (r["label"], r["noise_type"], r["grade"], r["severity"], r["confidence"], r["origin"])
            writer.writerow([r["task_id"], r["image"], x1, y1, x2, y2, *fields])


# --- the command line ------------------------------------------------------------------------------------

_FLAG_VARS = {
    "url": "LABEL_STUDIO_URL",
    "api_key": "LABEL_STUDIO_API_KEY",
    "model_dir": "MODEL_DIR",
    "document_root": "LOCAL_FILES_DOCUMENT_ROOT",
    "expert_mode": "EXPERT_MODE",
    "predict_conf": "PREDICT_CONF",
    "device": "DEVICE",
    "batch": "PREDICT_BATCH",
}


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The backend's settings from ``environ``, with the command line's flags and ``--set VAR=VALUE`` over it.

    Raises:
        SettingsError: as ``Settings.from_env`` (naming the variable).
    """
    flags = {var: getattr(args, attr, None) for attr, var in _FLAG_VARS.items()}
    # The export never publishes: a missing MODEL_WEIGHTS file must not stop it.
    return settings_with_overrides(environ, flags, assignments=args.set or [])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backend.export",
        description="Write a Label Studio project's cleaned dataset: expert annotations where there are, "
        "else the crowd labels with the serving model's confident corrections; uncertain instances go to a "
        "review file. Settings: the backend's environment variables (MODEL_DIR, LABEL_STUDIO_URL, "
        "LABEL_STUDIO_API_KEY, LOCAL_FILES_DOCUMENT_ROOT, EXPERT_MODE, PREDICT_CONF, LSM_*); flags override.",
    )
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--format", choices=[f.value for f in ExportFormat], required=True)
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--version", help="model version to use (default: the registry's latest)")
    parser.add_argument("--no-images", action="store_true", help="do not copy the images (coco, yolo)")
    parser.add_argument(
        "--original-images",
        action="store_true",
        help="yolo: write every image as fetched, 16-bit included (default: an image ultralytics would "
        "misread, e.g. 16-bit, becomes the 8-bit PNG the model saw; coco always writes them as fetched)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--train-final",
        action="store_true",
        help="then train the final detector on the export, from the serving version (TRAIN_* settings), "
        "into OUT/model (coco or yolo with images)",
    )
    parser.add_argument("--url", help="LABEL_STUDIO_URL")
    parser.add_argument("--api-key", help="LABEL_STUDIO_API_KEY")
    parser.add_argument("--model-dir", help="MODEL_DIR")
    parser.add_argument("--document-root", help="LOCAL_FILES_DOCUMENT_ROOT")
    parser.add_argument("--expert-mode", help="EXPERT_MODE (all | ground_truth | emails:a@x,b@y)")
    parser.add_argument("--predict-conf", help="PREDICT_CONF")
    parser.add_argument("--device", help="DEVICE")
    parser.add_argument("--batch", help="PREDICT_BATCH")
    parser.add_argument(
        "--set", action="append", metavar="VAR=VALUE", help="any backend setting, e.g. LSM_MATCH_IOU=0.4"
    )
    return parser.parse_args(argv)


FINAL_SOURCE = "cleaned labels (python -m backend.export --train-final)"
"""``meta["source"]`` of a detector trained on an export."""


def final_training_job(
    settings: Settings,
    cleaned: Sequence[CleanedTask],
    *,
    image_dir: Path,
    categories: Sequence[str],
    init: ModelVersion | None,
    job_dir: Path,
    model_dir: Path,
    project: int | None = None,
    normalization: ImageNormalization | None = None,
) -> dict[str, Any]:
    """The training job of the final detector on the exported labels (``backend.train_job``'s format).

    The full method's last step: every image, with its exported boxes (the expert's, or the crowd's with the
    confident fixes applied; uncertain instances as the crowd drew them), warm-started from ``init`` (the
    version that proposed the fixes, as ``bench.simulate``'s ``warm_cleaning`` recipe) when its family is the
    configured one, else from ``TRAIN_INIT``. Validation: a tenth of the expert images, held out, when there
    are ten or more; else every expert image, trained on too (``val_held_out`` False); with no expert image,
    the training images themselves.

    Args:
        settings: ``TRAIN_*``, ``DEVICE``, family, threads, as a webhook training takes them.
        cleaned: the exported tasks (:func:`clean_tasks`).
        image_dir: where the export wrote the images (``<out>/images``).
        categories: class names (index = class id of ``CleanedTask.labels``).
        init: the version to start from.
        job_dir: the job's scratch folder.
        model_dir: the registry the final detector is published to (not the serving one).
        project: recorded in the meta.
        normalization: the normalisation the export converted images with (the YOLO layout), which the job
            then trains with and records: those images hold already normalised pixels, and the final
            detector must see the same ones when it predicts on the originals. None: ``IMAGE_NORMALIZE``
            / ``IMAGE_PERCENTILES``, as every training.
    """
    from backend.train_job import TrainItem, job_settings

    items = {
        c.task_id: TrainItem(
            path=image_dir / c.name,
            xyxy=c.labels.xyxy.astype(np.float32),
            class_id=c.labels.class_id.astype(np.int64),
            width=c.width,
            height=c.height,
        )
        for c in cleaned
    }
    expert = sorted(c.task_id for c in cleaned if c.decision.source is ImageSource.EXPERT)
    n_val = len(expert) // 10 if len(expert) >= 10 else 0
    held_out = set(expert[:: max(1, len(expert) // max(1, n_val))][:n_val]) if n_val else set()
    train = [items[t] for t in sorted(items) if t not in held_out]
    val = [items[t] for t in sorted(held_out or expert)] or train
    family = settings.detector_family
    warm = init if init is not None and init.family == family else None
    job = job_settings(settings)
    if normalization is not None:
        job["image_normalization"] = normalization.as_dict()
    return {
        **job,
        "model_dir": str(model_dir),
        "work_dir": str(job_dir),
        "names": list(categories),
        "train": [it.as_json() for it in train],
        "val": [it.as_json() for it in val],
        "init": str(warm.weights) if warm is not None else settings.train_init,
        "source": FINAL_SOURCE,
        "project": project,
        "task_ids": sorted(items),
        "val_held_out": bool(held_out),
    }


def train_final(
    settings: Settings,
    cleaned: Sequence[CleanedTask],
    *,
    out: Path,
    categories: Sequence[str],
    init: ModelVersion | None,
    project: int | None = None,
    normalization: ImageNormalization | None = None,
) -> dict[str, Any]:
    """Train the final detector on an export in ``out`` (images in ``out/images``) and publish it to the
    registry ``out/model``; returns the manifest's ``final_model`` entry. ``normalization``: as
    :func:`final_training_job`'s.

    Raises:
        ExportError: the training failed (the export itself stays as written).
    """
    import time

    from backend.training import run_train_job
    from model.registry import ModelRegistry

    job_dir = settings.scratch_dir / f"final-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    job_dir.mkdir(parents=True, exist_ok=True)
    job = final_training_job(
        settings,
        cleaned,
        image_dir=out / "images",
        categories=categories,
        init=init,
        job_dir=job_dir,
        model_dir=out / "model",
        project=project,
        normalization=normalization,
    )
    logger.info(
        "training the final detector on %d exported images (%d validation) from %s, %d epochs",
        len(job["train"]),
        len(job["val"]),
        Path(job["init"]).name or "the family's default",
        job["epochs"],
    )
    try:
        version = run_train_job(job_dir, job)
    except RuntimeError as exc:
        raise ExportError(f"the final training failed; the export in {out} is complete: {exc}") from None
    mv = ModelRegistry(out / "model").get(version)
    return {
        "version": version,
        "weights": str(mv.weights.relative_to(out)),
        "family": mv.family,
        "init": job["init"] or None,
        "epochs": job["epochs"],
        "n_train": len(job["train"]),
        "n_val": len(job["val"]),
        "val_held_out": job["val_held_out"],
        "validation_map50": validation_map50(mv.meta),
        "seconds": mv.meta.get("seconds"),
    }


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` the export could not be renamed into, before anything is loaded.

    Raises:
        ExportError: ``out`` names no folder of its own (``.``, ``..``, ``/``: the export is written beside it
            and renamed), exists and is not an empty folder, or its parent cannot be written.
    """
    if out.name in ("", ".."):
        raise ExportError(
            f"--out: {str(out)!r} names no new folder (the export is written beside it, then renamed into "
            "it); give a folder name, e.g. --out ./export"
        )
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ExportError(f"--out: {out} exists and is not an empty folder; choose a new one")
        parent = out.parent  # created by the export when missing: its nearest existing folder is written
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        writable = parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    except OSError as exc:
        raise ExportError(f"--out: {out}: {exc.strerror or exc}") from None
    if not writable:
        what = "is not a folder" if not parent.is_dir() else "is not writable"
        raise ExportError(f"--out: {parent} {what}: the export cannot be written under it")


def _check_final(fmt: ExportFormat, *, images: bool, final: bool) -> None:
    if final and (fmt is ExportFormat.LS or not images):
        raise ExportError(
            "--train-final trains on the exported images: use --format coco or yolo, without --no-images"
        )


def run_export(
    settings: Settings,
    *,
    project: int,
    fmt: ExportFormat,
    out: Path,
    version: str | None = None,
    images: bool = True,
    progress: bool = True,
    source: Any = None,
    final: bool = False,
    original_images: bool = False,
) -> dict[str, Any]:
    """Export a project (what the CLI does); returns the manifest.

    The model version is loaded and its images normalised as ``/predict`` does (``ModelService``: tiled when
    ``TILE_SIZE`` is set; the version's recorded ``image_normalization``; its stored calibration), so the
    export applies the fixes the annotators were shown. Tasks nobody labelled are left out and listed in the
    manifest's ``unlabelled``.

    Args:
        settings: the backend settings (Label Studio connection, registry, policies, thresholds).
        project: the project id.
        fmt: the output layout.
        out: the output folder (must not exist, or be empty).
        version: the model version (default: the registry's latest, the one the backend serves).
        images: copy the images (coco, yolo).
        progress: show a progress bar.
        source: the task source (default: ``backend.training.LabelStudioSource(settings)``).
        final: then train the final detector on the export (:func:`train_final`; needs the images) and add
            it to the manifest as ``final_model``.
        original_images: write the YOLO layout's images as fetched, 16-bit included (``--original-images``);
            by default those ultralytics would not read as the model sees them are written as 8-bit PNGs
            (module docstring). The other layouts always write them as fetched.

    Raises:
        ExportInputError: a task's image is the user's to fix (as :func:`clean_tasks`).
        ExportError: a bad ``out``, no such project, Label Studio failing, no labelled task, no model version
            when one is needed or one that cannot be loaded, an image that cannot be fetched, bad tasks, a
            final training without images, or a failed final training (the export stays written).
        OSError: the export cannot be written (disk full...); nothing is left half-written.
    """
    from backend.labelconfig import LabelConfigError, parse_label_config
    from backend.lsclient import LabelStudioAuth
    from backend.lsproject import api_error_message
    from backend.service import ModelService
    from backend.training import LabelStudioSource, count_expert_tasks
    from model.registry import ModelRegistry

    _check_out(out)
    _check_final(fmt, images=images, final=final)
    if source is None:
        if not settings.label_studio_enabled:
            raise ExportError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --url and --api-key) are needed")
        source = LabelStudioSource(settings)
    try:
        config_xml = source.label_config(project)
    except Exception as exc:
        if getattr(exc, "status_code", None) == 404:
            raise ExportError(
                f"project {project}: not found in Label Studio at {settings.label_studio_url}"
            ) from None
        raise ExportError(f"project {project}: {api_error_message(exc)}") from None
    try:
        schema = parse_label_config(config_xml)
    except LabelConfigError as exc:
        raise ExportError(f"project {project}: {exc}") from None
    try:
        tasks = source.tasks(project)
    except Exception as exc:  # the SDK's ApiError, requests' errors: Label Studio failed, not the options
        raise ExportError(
            f"project {project}: its tasks cannot be listed: {api_error_message(exc)}"
        ) from None
    if not tasks:
        raise ExportError(f"project {project}: has no tasks")
    reader = CrowdReader(settings.crowd, settings.expert, users=None)  # tasks carry completed_by_email
    unlabelled = unlabelled_tasks(tasks, policy=settings.expert, crowd_reader=reader)
    if len(unlabelled) == len(tasks):
        raise ExportError(
            f"project {project}: none of its {len(tasks)} tasks has crowd labels "
            f"(CROWD_SOURCE={settings.crowd.describe()}) or an expert annotation "
            f"(EXPERT_MODE={settings.expert.describe()}): nothing to export; import crowd labels with "
            "python -m backend.ingest"
        )
    if unlabelled:
        logger.info(
            "%d of %d tasks have neither crowd labels nor an expert annotation: left out of the export "
            "(manifest.json: unlabelled)",
            len(unlabelled),
            len(tasks),
        )

    auth = (
        LabelStudioAuth(str(settings.label_studio_url), str(settings.label_studio_api_key))
        if settings.label_studio_enabled
        else None
    )
    loader = ImageLoader.from_settings(settings, auth=auth)
    registry = ModelRegistry(settings.model_dir)
    detector = None
    serving: ModelVersion | None = None
    calibration: Calibration | None = None
    normalization: ImageNormalization | None = None
    model_info: dict[str, Any] | None = None
    n_need = len(tasks) - count_expert_tasks(tasks, settings.expert) - len(unlabelled)
    if n_need > 0:
        try:
            mv = registry.get(version) if version else registry.latest()
        except KeyError as exc:
            raise ExportError(str(exc.args[0])) from None
        if mv is None:
            raise ExportError(
                f"no model version in {settings.model_dir} (MODEL_DIR), and {n_need} tasks have no expert "
                f"annotation: train one first (python -m backend.bootstrap --project {project})"
            )
        # The service /predict serves from: the same loading (tiled under TILE_SIZE), normalisation and
        # calibration, so the export applies exactly the fixes the annotators were shown.
        service = ModelService(settings, loader=loader)
        try:
            service.switch(mv.version)
            detector, _ = service.current(mv.version)
            normalization = service.image_normalization(mv.version)
        except Exception as exc:  # unknown family, weights gone or unreadable, a bad recorded normalisation
            raise ExportError(
                f"model version {mv.version}: cannot be loaded ({type(exc).__name__}: {exc})"
            ) from None
        serving = mv
        calibration = service.calibration(mv.version)
        blind = ~predictable_labels(schema, schema.label_map(detector.names))
        model_info = {
            "version": mv.version,
            "family": mv.family,
            "source": mv.meta.get("source"),
            "validation_map50": validation_map50(mv.meta),
            "calibrated_types": None if calibration is None else calibration.fitted_types,
            "image_normalization": normalization.as_dict(),
            "tiling": None if settings.tiling is None else settings.tiling.size,
            "max_det": settings.max_det,
            "unpredicted_labels": [schema.labels[i] for i in np.flatnonzero(blind)],
        }
        logger.info("predicting with %s", mv.version)
    categories, _ = export_categories(schema)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    with_images = images and fmt is not ExportFormat.LS
    # The YOLO layout is trained on as it is: its images must read as the model saw them.
    conversion = (
        (normalization or loader.normalization)
        if with_images and fmt is ExportFormat.YOLO and not original_images
        else None
    )
    try:
        cleaned = clean_tasks(
            tasks,
            schema=schema,
            detector=detector,
            loader=loader,
            policy=settings.expert,
            config=settings.lsm,
            predict_conf=settings.predict_conf,
            batch=settings.predict_batch,
            image_dir=staging / "images" if with_images else None,
            progress=progress,
            crowd_reader=reader,
            calibration=calibration,
            normalization=normalization,
            convert_images=conversion is not None,
        )
        manifest = build_manifest(
            cleaned,
            fmt=fmt,
            project=project,
            categories=categories,
            model=model_info,
            settings=settings,
            unlabelled=unlabelled,
            conversion=conversion,
        )
        write_export(staging, cleaned, fmt=fmt, categories=categories, schema=schema, manifest=manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final:
        if serving is None:  # every task expert-annotated: start from the latest version, if any
            serving = registry.latest()
        manifest["final_model"] = train_final(
            settings,
            cleaned,
            out=out,
            categories=categories,
            init=serving,
            project=project,
            normalization=conversion,
        )
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; returns the exit status."""
    args = parse_args(argv)
    try:
        settings = settings_from(args, os.environ)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("YOLO_CONFIG_DIR", str(settings.scratch_dir / "yolo-config"))
    out = Path(args.out).expanduser()
    fmt = ExportFormat(args.format)
    try:  # bad options: refused before Label Studio or the model is touched
        _check_out(out)
        _check_final(fmt, images=not args.no_images, final=args.train_final)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        manifest = run_export(
            settings,
            project=args.project,
            fmt=fmt,
            out=out,
            version=args.version,
            images=not args.no_images,
            progress=not args.no_progress,
            final=args.train_final,
            original_images=args.original_images,
        )
    except ExportInputError as exc:  # a task image the user must fix: running again fails the same way
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, a folder removed under the export: nothing is left half-written
        print(f"error: the export to {out} failed ({exc})", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    by = counts["by_source"]
    model = manifest["model"]
    print(
        f"project {args.project}: {counts['images']} images exported as {args.format} to {out} "
        f"({by['expert']} expert, {by['auto-corrected']} auto-corrected, {by['crowd']} crowd); "
        f"{counts['boxes']} boxes"
    )
    conversion = manifest["image_conversion"]
    if conversion is not None and conversion["converted"]:
        norm = conversion["normalization"]
        print(
            f"images: {conversion['converted']} written as 8-bit PNG, normalised as the model sees them "
            f"({norm['mode']}, percentiles {norm['percentiles'][0]:g}-{norm['percentiles'][1]:g}), so that "
            "ultralytics reads them right (manifest.json: converted; --original-images keeps them as fetched)"
        )
    edits = ", ".join(f"{v} {k}" for k, v in counts["edits"].items() if v and k != "kept") or "none"
    n_crowd = counts["crowd_boxes"]
    if model is None:
        print("no model needed (every image has an expert annotation)")
    else:
        quality = model["validation_map50"]
        trained = f"{model['source'] or 'no source recorded'}" + (
            f", validation mAP50 {quality:.3f}" if quality is not None else ""
        )
        print(f"model {model['version']} ({trained})")
        print(f"corrections applied to {n_crowd} crowd boxes of non-expert images: {edits}")
        if quality is not None and quality < WEAK_MAP50:
            print(
                f"warning: {model['version']} reported validation mAP50 {quality:.3f} (< {WEAK_MAP50}): a "
                "model that misses most objects proposes deleting the crowd boxes it cannot see; check the "
                "manifest before using this export, or train further first",
                file=sys.stderr,
            )
    print(
        f"review: {counts['review_instances']} uncertain instances on {counts['review_images']} images "
        f"-> {out / 'review.csv'}"
    )
    if manifest["unlabelled"]:
        shown = ", ".join(str(t) for t in manifest["unlabelled"][:10])
        more = f" and {len(manifest['unlabelled']) - 10} more" if len(manifest["unlabelled"]) > 10 else ""
        print(
            f"left out: {counts['unlabelled']} tasks nobody labelled (no crowd labels, no expert "
            f"annotation): {shown}{more} (manifest.json: unlabelled)"
        )
    final = manifest.get("final_model")
    if final is not None:
        quality = final["validation_map50"]
        held = "held-out expert images" if final["val_held_out"] else "images it also trained on"
        print(
            f"final detector {final['version']}: {final['n_train']} images, {final['epochs']} epochs from "
            f"{Path(final['init']).name if final['init'] else 'the default'}; validation mAP50 "
            f"{'n/a' if quality is None else f'{quality:.3f}'} on {final['n_val']} {held} -> "
            f"{out / final['weights']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
