"""COCO detection JSON <-> Detections.

Category ids in the JSON are ``class_id + 1`` (COCO reserves 0); boxes are ``[x, y, w, h]`` in pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
