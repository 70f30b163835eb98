"""A lab's own dataset for the benchmark: images with an expert and a crowd label set, in COCO JSON.

Layout (``bench.simulate --data DIR``)::

    DIR/
      expert.json    COCO detection JSON: every image, the expert's boxes
      crowd.json     COCO detection JSON: the same images (matched by file_name), the crowd's boxes
      <images>       wherever the ``file_name`` fields point, relative to DIR (or absolute)

Both files list the same images (an image of either file missing from the other is an error) and the same
category names; category ids must be 1..K (``formats.coco``). An image's ``width`` and ``height`` are
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

Every error names the file and the entry (``DIR/crowd.json: annotations[4] (id 17): ...``). The checks are
those of ``backend.ingest.sources.read_coco``, written again here: nothing imports ``backend``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from formats.coco import from_coco
from formats.images import image_size
from selection.calibration import expert_truth
from selection.consensus import merge_annotators
from selection.detections import Detections

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # Detections hold float32 pixels


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a --data folder needs expert.json and crowd.json (COCO)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: {key}: expected a list, got {type(data.get(key)).__name__}")
    return data


def _names(data: Mapping[str, Any], path: Path) -> list[str]:
    cats = data["categories"]
    for i, cat in enumerate(cats):
        if not isinstance(cat, Mapping) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise ValueError(f"{path}: categories[{i}]: expected {{'id': int, 'name': str}}, got {cat!r}")
        if not cat["name"].strip():
            raise ValueError(f"{path}: categories[{i}] (id {cat['id']}): empty name")
    if not cats:
        raise ValueError(f"{path}: expected at least one category")
    cats = sorted(cats, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if ids != list(range(1, len(cats) + 1)):
        raise ValueError(f"{path}: expected category ids 1..{len(cats)}, got {ids}")
    names = [str(c["name"]) for c in cats]
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise ValueError(f"{path}: categories: name {name!r} is listed twice (as {seen[name.lower()]!r})")
        seen[name.lower()] = name
    return names


def _images(
    data: Mapping[str, Any], path: Path, root: Path, sizes: dict[Path, tuple[int, int]]
) -> dict[int, _Image]:
    """Every image entry of one file, checked: ids, file names, the files and their sizes.

    ``sizes``: image sizes already read (file -> (width, height)), shared by the two files.
    """
    out: dict[int, _Image] = {}
    by_path: dict[Path, _Image] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, Mapping) or not _is_int(im.get("id")):
            raise ValueError(f"{path}: images[{i}]: expected an object with an integer 'id', got {im!r}")
        entry = f"images[{i}] (id {im['id']})"
        where = f"{path}: {entry}"
        if im["id"] in out:
            raise ValueError(f"{where}: image id {im['id']} is listed twice")
        file_name = im.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise ValueError(f"{where}: expected a 'file_name' string, got {file_name!r}")
        file = Path(file_name) if Path(file_name).is_absolute() else root / file_name
        if not file.is_file():
            raise FileNotFoundError(f"{where}: no file at {file}")
        resolved = file.resolve()
        if resolved in by_path:
            other = by_path[resolved]
            raise ValueError(
                f"{where}: file_name {file_name!r} is the same image as {other.entry} "
                f"({other.file_name!r}); list each image once"
            )
        if resolved not in sizes:
            try:
                sizes[resolved] = image_size(resolved)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        width, height = sizes[resolved]
        for key, actual in (("width", width), ("height", height)):
            if key in im and im[key] != actual:
                turned = (im.get("width"), im.get("height")) == (height, width)
                raise ValueError(
                    f"{where}: {key} {im[key]!r} but the image {file_name} has {key} {actual}"
                    + (" (as shown, turned by its EXIF orientation)" if turned else "")
                )
        image = _Image(im["id"], entry, where, file_name, resolved, width, height, im.get("split"))
        out[image.id] = by_path[resolved] = image
    return out


def _label_file(
    data: Mapping[str, Any], path: Path, images: Mapping[int, _Image], n_classes: int
) -> _LabelFile:
    """The boxes of one file, checked (every error names the annotation), clipped to their image."""
    kept: list[dict[str, Any]] = []
    for j, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, Mapping) else None
        where = f"{path}: annotations[{j}]" + (f" (id {ann_id})" if ann_id is not None else "")
        if not isinstance(ann, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(ann).__name__}")
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
            raise ValueError(
                f"{where}: image_id {ann.get('image_id')!r} is not among the images of {path.name}"
            )
        if not _is_int(ann.get("category_id")) or not 1 <= ann["category_id"] <= n_classes:
            raise ValueError(
                f"{where}: category_id {ann.get('category_id')!r} is not among the categories "
                f"(ids 1..{n_classes})"
            )
        image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
        if ann.get("iscrowd") not in (None, 0, False):
            raise ValueError(
                f"{where}: iscrowd {ann['iscrowd']!r}: a COCO crowd region (one box around a group of "
                "objects) cannot be used: the benchmark trains and scores one box per object, without ignore "
                "regions; box the objects one by one, or remove it"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise ValueError(f"{where}: bbox: expected [x, y, width, height] numbers, got {bbox!r}")
        if not all(isinstance(v, int) or math.isfinite(v) for v in bbox):
            raise ValueError(f"{where}: bbox: expected finite numbers, got {bbox!r}")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise ValueError(f"{where}: empty box ({bbox[2]} x {bbox[3]} px); width and height must be > 0")
        x1, y1, x2, y2 = bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]
        if not all(abs(v) < _FLOAT32_MAX for v in (x1, y1, x2, y2)):
            raise ValueError(f"{where}: bbox: coordinates {bbox!r} are beyond any image")
        image = images[image_id]
        if x1 >= image.width or y1 >= image.height or x2 <= 0 or y2 <= 0:
            raise ValueError(
                f"{where}: box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}] (xyxy px) lies outside the "
                f"{image.width} x {image.height} image {image.file_name}"
            )
        who = {"annotator": ann["annotator"]} if ann.get("annotator") is not None else {}
        kept.append({"image_id": image_id, "category_id": category_id, "bbox": list(bbox), **who})
    # Checked: formats.coco converts the boxes to pixel xyxy (float32), in file order per image.
    parsed = from_coco(
        {
            "images": [
                {"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
                for im in images.values()
            ],
            "annotations": kept,
        }
    )
    boxes: dict[int, Detections] = {}
    annotators: dict[int, tuple[str, ...] | None] = {}
    n_clipped = 0
    for image_id, coco_image in parsed.items():
        dets = coco_image.detections
        clipped = dets.clip(coco_image.width, coco_image.height)
        n_clipped += int(np.sum(np.any(clipped.xyxy != dets.xyxy, axis=1)))
        boxes[image_id] = Detections(clipped.xyxy, clipped.class_id)
        extra = coco_image.extra
        every = extra is not None and len(dets) > 0 and all("annotator" in e for e in extra)
        annotators[image_id] = tuple(str(e["annotator"]) for e in extra or ()) if every else None
    if n_clipped:
        log.warning("%s: %d boxes reach past their image and are clipped to it", path, n_clipped)
    return _LabelFile(images=dict(images), boxes=boxes, annotators=annotators)


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
    names = _names(expert_json, expert_path)
    crowd_names = _names(crowd_json, crowd_path)
    if crowd_names != names:
        raise ValueError(f"{crowd_path}: expected the categories of expert.json {names}, got {crowd_names}")
    sizes: dict[Path, tuple[int, int]] = {}
    expert = _label_file(expert_json, expert_path, _images(expert_json, expert_path, root, sizes), len(names))
    crowd = _label_file(crowd_json, crowd_path, _images(crowd_json, crowd_path, root, sizes), len(names))

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
