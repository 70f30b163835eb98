"""COCO detection JSON <-> Detections, and the checks of a COCO file someone else wrote.

:func:`to_coco` and :func:`from_coco` convert the project's own files: category ids in the JSON are
``class_id + 1`` (COCO reserves 0); boxes are ``[x, y, w, h]`` in pixels.

A lab's COCO file (any integer category ids, images found by the caller, boxes clipped to their image) is
read with the checks below :func:`from_coco`, shared by ``python -m backend.ingest`` and
``bench.simulate --data``, so the two accept and refuse the same files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from formats.boxes import clip_to_image
from selection.detections import Detections


@dataclass(frozen=True)
class CocoImage:
    """One COCO image with its boxes.

    Attributes:
        id: the COCO image id (stable: the caller chooses it).
        file_name: image path as written in the JSON.
        width, height: image size in pixels.
        detections: boxes in pixels; scores are written as ``score``.
        extra: optional per-box fields merged into each annotation (e.g. ``{"noise": "clean"}``).
    """

    id: int
    file_name: str
    width: int
    height: int
    detections: Detections
    extra: tuple[Mapping[str, Any], ...] | None = None


def to_coco(images: Sequence[CocoImage], *, categories: Sequence[str]) -> dict[str, Any]:
    """Build a COCO detection dict; annotation ids count from 1 in image order.

    Args:
        images: the images and their boxes.
        categories: class names, index = class_id.
    """
    seen: set[int] = set()
    out_images = []
    annotations: list[dict[str, Any]] = []
    for image in images:
        if image.id in seen:
            raise ValueError(f"images: duplicate image id {image.id}")
        seen.add(image.id)
        out_images.append(
            {"id": int(image.id), "file_name": image.file_name, "width": image.width, "height": image.height}
        )
        dets = image.detections
        if image.extra is not None and len(image.extra) != len(dets):
            raise ValueError(
                f"images[{image.id}].extra: expected {len(dets)} entries, got {len(image.extra)}"
            )
        for i in range(len(dets)):
            cls = int(dets.class_id[i])
            if cls >= len(categories):
                raise ValueError(f"class_id {cls}: no category for it among {list(categories)}")
            x1, y1, x2, y2 = (float(v) for v in dets.xyxy[i])
            ann: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": int(image.id),
                "category_id": cls + 1,
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "area": round((x2 - x1) * (y2 - y1), 3),
                "iscrowd": 0,
            }
            if dets.score is not None:
                ann["score"] = float(dets.score[i])
            if image.extra is not None:
                ann.update(image.extra[i])
            annotations.append(ann)
    return {
        "images": out_images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
    }


def from_coco(coco: Mapping[str, Any]) -> dict[int, CocoImage]:
    """Parse a COCO detection dict into images keyed by image id (every image, boxes or not).

    Category ids must be ``class_id + 1`` (1 or more, as :func:`to_coco` writes them); a caller reading a file
    with other ids (0, negative, gaps) maps them to that first.
    Extra annotation fields (anything but the standard ones) come back in ``CocoImage.extra``.

    Raises:
        ValueError: a missing list, an annotation of an unknown image or with a category id below 1.
    """
    for key in ("images", "annotations"):
        if key not in coco:
            raise ValueError(f"coco: expected a {key!r} list")
    standard = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "score", "segmentation"}
    per_image: dict[int, list[Mapping[str, Any]]] = {int(im["id"]): [] for im in coco["images"]}
    for ann in coco["annotations"]:
        image_id = int(ann["image_id"])
        if image_id not in per_image:
            raise ValueError(f"annotation {ann.get('id')}: image_id {image_id} is not among the images")
        if int(ann["category_id"]) < 1:  # class_id + 1: what to_coco writes
            raise ValueError(
                f"annotation {ann.get('id')}: category_id {ann['category_id']}: expected 1 or more "
                "(category id = class_id + 1; COCO reserves 0)"
            )
        per_image[image_id].append(ann)
    out: dict[int, CocoImage] = {}
    for im in coco["images"]:
        anns = per_image[int(im["id"])]
        if anns:
            bbox = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
            xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
            has_score = all("score" in a for a in anns)
            dets = Detections(
                xyxy=xyxy.astype(np.float32),
                class_id=np.array([int(a["category_id"]) - 1 for a in anns], np.int64),
                score=np.array([a["score"] for a in anns], np.float32) if has_score else None,
            )
            extra = tuple({k: v for k, v in a.items() if k not in standard} for a in anns)
        else:
            dets, extra = Detections.empty(), ()
        out[int(im["id"])] = CocoImage(
            id=int(im["id"]),
            file_name=str(im["file_name"]),
            width=int(im["width"]),
            height=int(im["height"]),
            detections=dets,
            extra=extra if any(extra) else None,
        )
    return out


# ------------------------------------------------------------------------------- reading a lab's COCO file
# The checks of a COCO detection file written by someone else (a lab's export), shared by the importer
# (``backend.ingest.sources.read_coco``) and the benchmark's ``--data`` loader (``bench.userdata``), so that
# both accept and refuse the same files with the same messages. A caller reads the JSON, then calls, in this
# order: :func:`check_coco_lists`, :func:`read_categories`, :func:`image_entries` (finding each image file
# its own way, then :func:`check_image_size`), :func:`read_boxes`. Every error is a :class:`CocoError` whose
# message starts with the file and the entry: ``crowd.json: annotations[4] (id 17): ...``.

_FLOAT32_MAX = float(np.finfo(np.float32).max)  # Detections hold float32 pixels


class CocoError(ValueError):
    """A malformed or inconsistent COCO entry; the message starts with the file and the entry."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ids_text(ids: Sequence[int]) -> str:
    """``1..80`` for consecutive ids, else the list (``[3, 9]``)."""
    ordered = sorted(ids)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}..{ordered[-1]}"
    return str(ordered)


def check_coco_lists(coco: Any, source: str | PurePath) -> Mapping[str, Any]:
    """``coco`` (parsed JSON) as a COCO object: ``images``, ``annotations`` and ``categories`` lists.

    Args:
        coco: the parsed JSON of the file.
        source: the file, named in errors.

    Raises:
        CocoError: not an object, or one of the three is missing or not a list.
    """
    if not isinstance(coco, Mapping):
        raise CocoError(f"{source}: expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise CocoError(f"{source}: {key}: expected a list, got {type(coco.get(key)).__name__}")
    return coco


@dataclass(frozen=True)
class CocoCategories:
    """A file's categories: label names in listed order, and the class id (position) of each category id.

    Category ids may be any integers (real COCO skips some, some files start at 0, 0 and negative included).

    Attributes:
        names: label names, index = class id.
        class_of: category id -> class id.
    """

    names: tuple[str, ...]
    class_of: Mapping[int, int]

    def matched_to(self, names: Sequence[str], *, source: str | PurePath, reference: str) -> CocoCategories:
        """The same categories with class ids indexing ``names`` (another file's labels), matched by name,
        case-insensitively.

        Args:
            names: the label names to index, e.g. those of the expert's file.
            source: this file, named in errors.
            reference: the file ``names`` come from, named in errors.

        Raises:
            CocoError: the two files do not name the same labels.
        """
        position = {name.lower(): k for k, name in enumerate(names)}
        if sorted(position) != sorted(name.lower() for name in self.names):
            raise CocoError(
                f"{source}: expected the categories of {reference} {list(names)}, got {list(self.names)}"
            )
        return CocoCategories(
            tuple(names), {cid: position[self.names[k].lower()] for cid, k in self.class_of.items()}
        )


def read_categories(coco: Mapping[str, Any], source: str | PurePath) -> CocoCategories:
    """The label names of a COCO file (its ``categories`` in listed order).

    Args:
        coco: a checked COCO object (:func:`check_coco_lists`).
        source: the file, named in errors.

    Raises:
        CocoError: an entry that is not ``{'id': int, 'name': str}``, an empty name, an id listed twice, no
            category, or a name listed twice (case-insensitively).

    Example:
        >>> coco = {"categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "dog"}]}
        >>> cats = read_categories(coco, "a.json")
        >>> cats.names, dict(cats.class_of)
        (('cat', 'dog'), {3: 0, 9: 1})
    """
    class_of: dict[int, int] = {}
    names: list[str] = []
    seen: dict[str, str] = {}
    for i, cat in enumerate(coco["categories"]):
        if not isinstance(cat, Mapping) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise CocoError(f"{source}: categories[{i}]: expected {{'id': int, 'name': str}}, got {cat!r}")
        where = f"{source}: categories[{i}] (id {cat['id']})"
        if cat["id"] in class_of:
            raise CocoError(f"{where}: category id {cat['id']} is listed twice")
        name = cat["name"]
        if not name.strip():
            raise CocoError(f"{where}: empty name")
        if name.lower() in seen:
            raise CocoError(
                f"{source}: categories: label {name!r} is listed twice (as {seen[name.lower()]!r})"
            )
        seen[name.lower()] = name
        class_of[cat["id"]] = len(names)
        names.append(name)
    if not names:
        raise CocoError(f"{source}: categories: empty; the label names come from it")
    return CocoCategories(tuple(names), class_of)


@dataclass(frozen=True)
class CocoImageEntry:
    """One checked ``images[]`` entry (its file not yet found: each caller finds it its own way).

    Attributes:
        id: the image id.
        file_name: the ``file_name`` as written.
        entry: ``images[3] (id 4)``.
        where: ``<file>: images[3] (id 4)``, to start an error about this entry.
        fields: the entry as given (``width``, ``height``, ``split``, ... when present).
    """

    id: int
    file_name: str
    entry: str
    where: str
    fields: Mapping[str, Any]


def image_entries(coco: Mapping[str, Any], source: str | PurePath) -> Iterator[CocoImageEntry]:
    """The ``images`` entries of a COCO file, each checked when reached: an integer id not listed before and
    a ``file_name`` string.

    Args:
        coco: a checked COCO object (:func:`check_coco_lists`).
        source: the file, named in errors.

    Raises:
        CocoError: naming the entry.
    """
    seen: set[int] = set()
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, Mapping) or not _is_int(im.get("id")):
            raise CocoError(f"{source}: images[{i}]: expected an object with an integer 'id', got {im!r}")
        entry = f"images[{i}] (id {im['id']})"
        where = f"{source}: {entry}"
        if im["id"] in seen:
            raise CocoError(f"{where}: image id {im['id']} is listed twice")
        file_name = im.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise CocoError(f"{where}: expected a 'file_name' string, got {file_name!r}")
        seen.add(im["id"])
        yield CocoImageEntry(id=im["id"], file_name=file_name, entry=entry, where=where, fields=im)


def check_image_size(entry: CocoImageEntry, width: int, height: int, *, image: str) -> None:
    """An entry's ``width`` and ``height``, when given, must be those of its file as shown.

    Args:
        entry: the image entry.
        width, height: the file's size in pixels as shown (after its EXIF orientation).
        image: how the error names the file.

    Raises:
        CocoError: a size that differs (saying so when it is the size turned by the EXIF orientation).
    """
    fields = entry.fields
    for key, actual in (("width", width), ("height", height)):
        if key in fields and fields[key] != actual:
            turned = (fields.get("width"), fields.get("height")) == (height, width)
            raise CocoError(
                f"{entry.where}: {key} {fields[key]!r} but the image {image} has {key} {actual}"
                + (" (as shown, turned by its EXIF orientation)" if turned else "")
            )


@dataclass(frozen=True)
class ImageFrame:
    """The image a COCO image id stands for, as found by the caller.

    Attributes:
        width, height: its size in pixels as shown.
        name: how errors name it (a path).
    """

    width: int
    height: int
    name: str


@dataclass(frozen=True)
class CocoBoxes:
    """The checked boxes of a COCO file.

    Attributes:
        boxes: per image id (every image given, boxes or not): float32 pixel xyxy clipped to the image,
            class ids from :class:`CocoCategories`, unscored (``score`` fields are not read), in file order.
        annotators: per image id, each box's ``annotator`` when every box of the image names one, else None.
        n_clipped: boxes that reached past their image and were clipped to it.
    """

    boxes: dict[int, Detections]
    annotators: dict[int, tuple[str, ...] | None]
    n_clipped: int


def _box_corners(ann: Mapping[str, Any], where: str) -> list[float]:
    """An annotation's ``bbox`` ``[x, y, w, h]`` as checked pixel corners ``[x1, y1, x2, y2]``."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise CocoError(f"{where}: bbox: expected [x, y, width, height] numbers, got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox):
        raise CocoError(f"{where}: bbox: expected finite numbers, got {bbox!r}")
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise CocoError(f"{where}: empty box ({bbox[2]} x {bbox[3]} px); width and height must be > 0")
    corners = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
    if not all(abs(v) < _FLOAT32_MAX for v in corners):  # boxes are float32: these would be inf
        raise CocoError(f"{where}: bbox: coordinates {bbox!r} are beyond any image")
    return [float(v) for v in corners]


def read_boxes(
    coco: Mapping[str, Any],
    source: str | PurePath,
    *,
    images: Mapping[int, ImageFrame],
    categories: CocoCategories,
) -> CocoBoxes:
    """The boxes of a COCO file, each annotation checked, then checked against its image and clipped to it.

    Args:
        coco: a checked COCO object (:func:`check_coco_lists`).
        source: the file, named in errors.
        images: every image of the file by image id (:func:`image_entries`), as found by the caller.
        categories: the file's categories (:func:`read_categories`), or another file's labels
            (:meth:`CocoCategories.matched_to`).

    Raises:
        CocoError: starting with ``<file>: annotations[j] (id N)``: not an object, an ``image_id`` or
            ``category_id`` that is not an integer id of the file, an ``iscrowd`` region (one box around a
            group of objects: training and scoring take one box per object, without ignore regions), a
            ``bbox`` that is not four finite numbers, an empty box, coordinates no float32 holds, or a box
            wholly outside its image.

    Example:
        >>> coco = {
        ...     "images": [{"id": 1, "file_name": "a.png"}],
        ...     "categories": [{"id": 3, "name": "cat"}],
        ...     "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [70, 30, 20, 20]}],
        ... }
        >>> found = read_boxes(coco, "crowd.json", images={1: ImageFrame(80, 40, "a.png")},
        ...                    categories=read_categories(coco, "crowd.json"))
        >>> found.boxes[1].xyxy.tolist(), found.boxes[1].class_id.tolist(), found.n_clipped
        ([[70.0, 30.0, 80.0, 40.0]], [0], 1)
    """
    file_name = PurePath(source).name
    corners: dict[int, list[list[float]]] = {image_id: [] for image_id in images}
    classes: dict[int, list[int]] = {image_id: [] for image_id in images}
    wheres: dict[int, list[str]] = {image_id: [] for image_id in images}
    who: dict[int, list[Any]] = {image_id: [] for image_id in images}
    for j, ann in enumerate(coco["annotations"]):
        ann_id = ann.get("id") if isinstance(ann, Mapping) else None
        where = f"{source}: annotations[{j}]" + (f" (id {ann_id})" if ann_id is not None else "")
        if not isinstance(ann, Mapping):
            raise CocoError(f"{where}: expected an object, got {type(ann).__name__}")
        image_id: Any = ann.get("image_id")
        if not _is_int(image_id) or image_id not in images:
            raise CocoError(f"{where}: image_id {image_id!r} is not among the images of {file_name}")
        category_id: Any = ann.get("category_id")
        if not _is_int(category_id) or category_id not in categories.class_of:
            raise CocoError(
                f"{where}: category_id {category_id!r} is not among the categories "
                f"(ids {_ids_text(list(categories.class_of))})"
            )
        if ann.get("iscrowd") not in (None, 0, False):
            raise CocoError(
                f"{where}: iscrowd {ann['iscrowd']!r}: a COCO crowd region (one box around a group of "
                "objects) cannot be used: training and scoring take one box per object, without ignore "
                "regions; box the objects one by one, or remove it"
            )
        corners[image_id].append(_box_corners(ann, where))
        classes[image_id].append(categories.class_of[category_id])
        wheres[image_id].append(where)
        who[image_id].append(ann.get("annotator"))
    boxes: dict[int, Detections] = {}
    annotators: dict[int, tuple[str, ...] | None] = {}
    n_clipped = 0
    for image_id, frame in images.items():
        # As float32 first, as Detections hold them: a box too thin for a float32 is an empty box.
        xyxy = np.array(corners[image_id], np.float32).reshape(-1, 4)
        try:
            boxes[image_id], clipped = clip_to_image(
                xyxy,
                np.array(classes[image_id], np.int64),
                width=frame.width,
                height=frame.height,
                where=wheres[image_id],
                image=frame.name,
            )
        except ValueError as exc:
            raise CocoError(str(exc)) from None
        n_clipped += clipped
        named = who[image_id]
        every = bool(named) and all(w is not None for w in named)
        annotators[image_id] = tuple(str(w) for w in named) if every else None
    return CocoBoxes(boxes=boxes, annotators=annotators, n_clipped=n_clipped)
