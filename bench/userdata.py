"""A lab's own dataset for the benchmark: images with an expert and a crowd label set, in COCO JSON.

Layout (``bench.simulate --data DIR``)::

    DIR/
      expert.json    COCO detection JSON: every image, the expert's boxes
      crowd.json     COCO detection JSON: the same images (matched by file_name), the crowd's boxes
      <images>       wherever the ``file_name`` fields point, relative to DIR (or absolute)

Both files list the same images (an image of either file missing from the other is an error) and the same
category names (matched by name, case-insensitively: the ids, any integers, and the order may differ; class
ids follow ``expert.json``'s order). An image's ``width`` and ``height`` are
optional; when given they must be the file's size as shown (after its EXIF orientation). An image entry
of ``expert.json`` may carry ``"split": "train" | "val" | "test"``; when no image has one, each seed draws its
own split (``SPLIT_FRACTIONS``). Splits are read from ``expert.json`` only: a split in ``crowd.json`` that
``expert.json`` does not give is an error. Boxes reaching past their image are clipped to it (as
``python -m backend.ingest`` does); a box wholly outside it, and COCO's ``iscrowd`` regions (one box around a
group of objects: the benchmark trains and scores one box per object, with no ignore regions) are errors.

When every crowd box of an image names its ``annotator``, the boxes are fused per annotator
(``selection.consensus.merge_annotators``, IoU 0.5, every box kept), as the backend fuses the crowd labels
``python -m backend.ingest`` writes: three annotators boxing one object give one crowd box, not three.

The crowd's errors are named from the expert boxes (``selection.calibration.expert_truth``), so the
benchmark's "noisy image" and per-type figures work as on simulated data.

Every error names the file and the entry (``DIR/crowd.json: annotations[4] (id 17): ...``). The checks of
each COCO file are ``formats.coco``'s, those ``python -m backend.ingest`` makes, so a file one accepts the
other accepts too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from formats.coco import (
    CocoCategories,
    ImageFrame,
    check_coco_lists,
    check_image_size,
    image_entries,
    read_boxes,
    read_categories,
)
from formats.images import image_size
from selection.calibration import expert_truth
from selection.consensus import merge_annotators
from selection.detections import Detections

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@dataclass(frozen=True, eq=False)
class UserRecord:
    """One image of a user's dataset, with the fields the benchmark reads (as ``synth.ImageRecord``).

    Attributes:
        crowd_noise: str (M,) each crowd box's error type by the expert boxes (clean, localization,
            box_in_box, background).
        missed: int64 (K,) expert boxes no crowd box stands for.
    """

    id: str
    split: str
    path: Path
    width: int
    height: int
    expert: Detections
    crowd: Detections
    crowd_noise: np.ndarray = field(repr=False)
    missed: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class _Image:
    """One checked image entry of a COCO file."""

    id: int
    entry: str  # "images[3] (id 4)"
    where: str  # "DIR/expert.json: images[3] (id 4)"
    file_name: str
    path: Path  # resolved
    width: int
    height: int
    split: Any  # as given (None: none)


@dataclass(frozen=True)
class _LabelFile:
    """One checked COCO file: its images by id and their boxes (pixels, clipped to the image)."""

    images: dict[int, _Image]
    boxes: dict[int, Detections]
    annotators: dict[int, tuple[str, ...] | None]  # per image, each box's annotator when every box names one


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a --data folder needs expert.json and crowd.json (COCO)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    return dict(check_coco_lists(data, path))


def _images(
    data: dict[str, Any], path: Path, root: Path, sizes: dict[Path, tuple[int, int]]
) -> dict[int, _Image]:
    """Every image entry of one file, checked: ids, file names, the files and their sizes.

    ``sizes``: image sizes already read (file -> (width, height)), shared by the two files.
    """
    out: dict[int, _Image] = {}
    by_path: dict[Path, _Image] = {}
    for entry in image_entries(data, path):
        file = Path(entry.file_name) if Path(entry.file_name).is_absolute() else root / entry.file_name
        if not file.is_file():
            raise FileNotFoundError(f"{entry.where}: no file at {file}")
        resolved = file.resolve()
        if resolved in by_path:
            other = by_path[resolved]
            raise ValueError(
                f"{entry.where}: file_name {entry.file_name!r} is the same image as {other.entry} "
                f"({other.file_name!r}); list each image once"
            )
        if resolved not in sizes:
            try:
                sizes[resolved] = image_size(resolved)
            except ValueError as exc:
                raise ValueError(f"{entry.where}: {exc}") from None
        width, height = sizes[resolved]
        check_image_size(entry, width, height, image=entry.file_name)
        image = _Image(
            entry.id,
            entry.entry,
            entry.where,
            entry.file_name,
            resolved,
            width,
            height,
            entry.fields.get("split"),
        )
        out[image.id] = by_path[resolved] = image
    return out


def _label_file(
    data: dict[str, Any], path: Path, images: dict[int, _Image], categories: CocoCategories
) -> _LabelFile:
    """The boxes of one file, checked (every error names the annotation), clipped to their image."""
    frames = {image_id: ImageFrame(im.width, im.height, im.file_name) for image_id, im in images.items()}
    found = read_boxes(data, path, images=frames, categories=categories)
    if found.n_clipped:
        log.warning("%s: %d boxes reach past their image and are clipped to it", path, found.n_clipped)
    return _LabelFile(images=images, boxes=found.boxes, annotators=found.annotators)


def _fused(boxes: Detections, annotators: tuple[str, ...] | None) -> Detections:
    """The crowd boxes of one image fused per annotator when every box names one (as the backend does)."""
    if annotators is None:
        return boxes
    groups: dict[str, list[int]] = {}
    for k, who in enumerate(annotators):
        groups.setdefault(who, []).append(k)
    merged, _ = merge_annotators([boxes.subset(np.array(idx, np.int64)) for idx in groups.values()])
    return Detections(merged.xyxy, merged.class_id)


def load_user_dataset(root: Path | str, *, seed: int) -> tuple[list[UserRecord], list[str]]:
    """Read a user's dataset (layout and rules in the module docstring).

    Args:
        root: the dataset folder.
        seed: draws the train/val/test split when the JSON gives none.

    Returns:
        The records (every image of ``expert.json``, by image id) and the class names.

    Raises:
        FileNotFoundError: a JSON file or an image is missing.
        ValueError: malformed JSON or entries, mismatched images, sizes or categories, a bad split value,
            or a split without training, validation or test images; the message names the file and the
            entry.
    """
    root = Path(root)
    expert_path, crowd_path = root / "expert.json", root / "crowd.json"
    expert_json, crowd_json = _read(expert_path), _read(crowd_path)
    categories = read_categories(expert_json, expert_path)
    crowd_categories = read_categories(crowd_json, crowd_path).matched_to(
        categories.names, source=crowd_path, reference="expert.json"
    )
    names = list(categories.names)
    sizes: dict[Path, tuple[int, int]] = {}
    expert = _label_file(expert_json, expert_path, _images(expert_json, expert_path, root, sizes), categories)
    crowd = _label_file(
        crowd_json, crowd_path, _images(crowd_json, crowd_path, root, sizes), crowd_categories
    )

    expert_by_path = {im.path: im for im in expert.images.values()}
    crowd_by_path = {im.path: im for im in crowd.images.values()}
    for im in crowd.images.values():
        if im.path not in expert_by_path:
            raise ValueError(
                f"{im.where}: file_name {im.file_name!r} is not in expert.json; both files must list the "
                "same images (an image without expert boxes still needs its entry there)"
            )
    for im in expert.images.values():
        if im.path not in crowd_by_path:
            raise ValueError(
                f"{crowd_path}: no image with file_name {im.file_name!r} (it is in expert.json as image "
                f"{im.id}); both files must list the same images (an image the crowd left empty still needs "
                "its entry)"
            )
        theirs = crowd_by_path[im.path].split
        if theirs is not None and theirs != im.split:
            raise ValueError(
                f"{crowd_by_path[im.path].where}: split {theirs!r}, but expert.json gives "
                f"{'none' if im.split is None else repr(im.split)} for {im.file_name!r}; splits are read "
                "from expert.json only: give them there"
            )

    splits_given = {image_id: im.split for image_id, im in expert.images.items()}
    if any(v is not None for v in splits_given.values()):
        for image_id, value in splits_given.items():
            if value not in SPLIT_FRACTIONS:
                raise ValueError(
                    f"{expert.images[image_id].where}: split {value!r}; give every image one of "
                    f"{list(SPLIT_FRACTIONS)} or none at all"
                )
        split_of = dict(splits_given)
    else:
        ids = sorted(expert.images)
        order = np.random.default_rng(seed).permutation(len(ids))
        n_train = round(SPLIT_FRACTIONS["train"] * len(ids))
        n_val = max(1, round(SPLIT_FRACTIONS["val"] * len(ids)))
        split_of = {}
        for rank, k in enumerate(order):
            split_of[ids[k]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"

    records = []
    n_fused = n_before = 0
    for image_id, im in sorted(expert.images.items()):
        theirs = crowd_by_path[im.path].id
        crowd_boxes = _fused(crowd.boxes[theirs], crowd.annotators[theirs])
        if crowd.annotators[theirs] is not None:
            n_before, n_fused = n_before + len(crowd.boxes[theirs]), n_fused + len(crowd_boxes)
        expert_boxes = expert.boxes[image_id]
        truth = expert_truth(crowd_boxes, expert_boxes)
        records.append(
            UserRecord(
                id=str(image_id),
                split=str(split_of[image_id]),
                path=im.path,
                width=im.width,
                height=im.height,
                expert=expert_boxes,
                crowd=crowd_boxes,
                crowd_noise=truth.crowd_type,
                missed=np.flatnonzero(truth.missed).astype(np.int64),
            )
        )
    if n_before:
        log.info(
            "%s: %d crowd boxes of images whose every box names its annotator fused per annotator into %d",
            crowd_path,
            n_before,
            n_fused,
        )
    for split in SPLIT_FRACTIONS:
        if not any(r.split == split for r in records):
            raise ValueError(f"{root}: no {split} images (need train, val and test images)")
    return records, names
