"""Label Studio regions and crowd-label records <-> Detections (pure functions, no HTTP).

Label Studio rectangles are in percent of the image (0-100), top-left origin; Detections are pixel xyxy.

Crowd labels travel inside each task as ``task["data"]["crowd_labels"]``: a list of records
``{"x", "y", "width", "height", "label", "annotator"?, ...}`` in the same percent units as Label Studio
rectangles, so a user can export any Label Studio annotation's ``value`` and import it as crowd labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from selection.detections import Detections

CROWD_FIELD = "crowd_labels"


def _check_size(width: float, height: float) -> None:
    if not (np.isfinite(width) and np.isfinite(height)) or width <= 0 or height <= 0:
        raise ValueError(f"image size: expected positive width and height, got {width} x {height}")


def percent_to_xyxy(values: np.ndarray, width: float, height: float) -> np.ndarray:
    """(N, 4) ``[x, y, w, h]`` in percent -> float32 (N, 4) xyxy pixels."""
    _check_size(width, height)
    v = np.asarray(values, dtype=np.float64).reshape(-1, 4)
    x1 = v[:, 0] / 100.0 * width
    y1 = v[:, 1] / 100.0 * height
    x2 = x1 + v[:, 2] / 100.0 * width
    y2 = y1 + v[:, 3] / 100.0 * height
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def xyxy_to_percent(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """float (N, 4) xyxy pixels -> float64 (N, 4) ``[x, y, w, h]`` in percent."""
    _check_size(width, height)
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.stack(
        [
            b[:, 0] / width * 100.0,
            b[:, 1] / height * 100.0,
            (b[:, 2] - b[:, 0]) / width * 100.0,
            (b[:, 3] - b[:, 1]) / height * 100.0,
        ],
        axis=1,
    )


def _label_index(label: str, label_to_id: Mapping[str, int]) -> int:
    if label not in label_to_id:
        raise ValueError(f"label {label!r}: not in the labelling config's labels {sorted(label_to_id)}")
    return int(label_to_id[label])


def regions_to_detections(
    regions: Sequence[Mapping[str, Any]],
    *,
    label_to_id: Mapping[str, int],
    width: float | None = None,
    height: float | None = None,
    from_name: str | None = None,
) -> Detections:
    """Rectangle regions of one task -> pixel Detections (scores kept when every region has one).

    Args:
        regions: Label Studio result items; non-rectangle items (and, if ``from_name`` is given, items of
            other controls) are skipped.
        label_to_id: label name -> class index.
        width, height: image size in pixels; defaults to each region's ``original_width/height``.
        from_name: only read regions of this control.
    """
    boxes: list[list[float]] = []
    classes: list[int] = []
    scores: list[float | None] = []
    for i, region in enumerate(regions):
        if region.get("type") not in ("rectanglelabels", "rectangle"):
            continue
        if from_name is not None and region.get("from_name") != from_name:
            continue
        value = region.get("value") or {}
        labels = value.get("rectanglelabels") or value.get("labels") or []
        if not labels:
            raise ValueError(f"region {i}: a rectangle without a label")
        w = width if width is not None else region.get("original_width")
        h = height if height is not None else region.get("original_height")
        if w is None or h is None:
            raise ValueError(f"region {i}: image size unknown (no original_width/original_height)")
        try:
            pct = [float(value[k]) for k in ("x", "y", "width", "height")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"region {i}: value needs numeric x, y, width, height ({exc})") from exc
        if float(value.get("rotation", 0) or 0) != 0:
            raise ValueError(f"region {i}: rotated rectangles are not supported")
        boxes.append(percent_to_xyxy(np.array(pct), float(w), float(h))[0].tolist())
        classes.append(_label_index(str(labels[0]), label_to_id))
        s = region.get("score")
        scores.append(None if s is None else float(s))
    if not boxes:
        return Detections.empty()
    xyxy = np.array(boxes, np.float32)
    if width is not None and height is not None:
        xyxy = np.clip(xyxy, 0, np.array([width, height, width, height], np.float32))
    has_scores = all(s is not None for s in scores)
    return Detections(
        xyxy=xyxy,
        class_id=np.array(classes, np.int64),
        score=np.clip(np.array(scores, np.float32), 0, 1) if has_scores else None,
    )


def rectangle_regions(
    xyxy: np.ndarray,
    labels: Sequence[str],
    *,
    width: float,
    height: float,
    from_name: str,
    to_name: str,
    ids: Sequence[str],
    scores: Sequence[float] | np.ndarray | None = None,
    meta_texts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The one builder of Label Studio ``rectanglelabels`` regions (annotations and predictions alike).

    Boxes are clipped to the image; positions are percent of the image and, like scores (clipped to [0, 1]),
    rounded to 4 decimals: 1e-4 % is far below a pixel, and the JSON stays short.

    Args:
        xyxy: float (N, 4) boxes in pixels.
        labels: N label names, one per box.
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        from_name: the RectangleLabels control's name.
        to_name: the Image object's name.
        ids: N region ids, unique within the task.
        scores: N confidences, or None for regions without a ``score`` (e.g. annotations).
        meta_texts: N texts shown in the region's meta (``meta: {"text": [...]}``), or None for no meta.

    Returns:
        N region dicts, in order.

    Raises:
        ValueError: if the lengths disagree or the image size is not positive.

    Example:
        >>> rectangle_regions(np.array([[10, 20, 30, 60]]), ["deposit"], width=100, height=200,
        ...                   from_name="label", to_name="image", ids=["r0"], scores=[0.87654])[0]["value"]
        {'x': 10.0, 'y': 10.0, 'width': 20.0, 'height': 20.0, 'rotation': 0, 'rectanglelabels': ['deposit']}
    """
    _check_size(width, height)
    inside = np.clip(np.asarray(xyxy, np.float64).reshape(-1, 4), 0.0, [width, height, width, height])
    pct = xyxy_to_percent(inside, width, height)
    n = pct.shape[0]
    for name, values in (("labels", labels), ("ids", ids), ("scores", scores), ("meta_texts", meta_texts)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name}: expected {n} values (one per box), got {len(values)}")
    out: list[dict[str, Any]] = []
    for i in range(n):
        x, y, w, h = (round(float(v), 4) for v in pct[i])
        region: dict[str, Any] = {
            "id": ids[i],
            "from_name": from_name,
            "to_name": to_name,
            "type": "rectanglelabels",
            "original_width": round(width),
            "original_height": round(height),
            "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [labels[i]]},
        }
        if scores is not None:
            region["score"] = round(float(np.clip(scores[i], 0.0, 1.0)), 4)
        if meta_texts is not None:
            region["meta"] = {"text": [meta_texts[i]]}
        out.append(region)
    return out


def detections_to_regions(
    detections: Detections,
    *,
    width: float,
    height: float,
    labels: Sequence[str],
    from_name: str,
    to_name: str,
    id_prefix: str = "r",
) -> list[dict[str, Any]]:
    """Pixel Detections -> Label Studio rectangle regions (see ``rectangle_regions``).

    Args:
        detections: the boxes; class ids index ``labels``; scores, when present, become region scores.
        width: image width in pixels.
        height: image height in pixels.
        labels: label names by class id.
        from_name: the RectangleLabels control's name.
        to_name: the Image object's name.
        id_prefix: region ids are ``<id_prefix><i>``.

    Raises:
        ValueError: if a class id has no label.
    """
    names = []
    for cls in detections.class_id.tolist():
        if cls >= len(labels):
            raise ValueError(f"class_id {cls}: no label for it among {list(labels)}")
        names.append(labels[cls])
    return rectangle_regions(
        detections.xyxy,
        names,
        width=width,
        height=height,
        from_name=from_name,
        to_name=to_name,
        ids=[f"{id_prefix}{i}" for i in range(len(detections))],
        scores=detections.score,
    )


def _crowd_box(rec: Mapping[str, Any], where: str) -> list[float]:
    """One crowd record's ``[x, y, width, height]`` in percent, checked (``crowd_labels_to_detections``)."""
    try:
        x, y, w, h = (float(rec[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: needs numeric x, y, width, height ({exc})") from exc
    rotation = rec.get("rotation", 0) or 0
    try:
        rotated = float(rotation) != 0
    except (TypeError, ValueError):
        rotated = True
    if rotated:
        raise ValueError(f"{where}: rotated rectangles (rotation {rotation!r}) are not supported")
    if not all(np.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"{where}: x, y, width, height must be finite numbers, got {[x, y, w, h]}")
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: empty box (width {w:g}, height {h:g} percent); both must be > 0")
    if x >= 100 or y >= 100 or x + w <= 0 or y + h <= 0:
        raise ValueError(
            f"{where}: box x={x:g}, y={y:g}, width={w:g}, height={h:g} (percent of the image) lies outside "
            "the image (0-100)"
        )
    return [x, y, w, h]


def crowd_labels_to_detections(
    records: Sequence[Mapping[str, Any]],
    *,
    width: float,
    height: float,
    label_to_id: Mapping[str, int],
) -> Detections:
    """``task.data.crowd_labels`` records (percent units) -> pixel Detections of one image.

    Like Label Studio rectangles (``regions_to_detections``), boxes are clipped to the image; a record that
    cannot be one of its boxes is an error naming the record: a rotation other than 0, a coordinate that is
    not a finite number, a width or height <= 0, or a box wholly outside the image (``x`` >= 100, ``x +
    width`` <= 0, the same for ``y``), which clipping would turn into an empty box at the image's edge.

    Raises:
        ValueError: ``crowd_labels[i]: <the problem>`` for the first malformed record ``i``.
    """
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise ValueError(f"{CROWD_FIELD}: expected a list of boxes, got {type(records).__name__}")
    if not records:
        return Detections.empty()
    pct = []
    classes = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"{CROWD_FIELD}[{i}]: expected an object, got {type(rec).__name__}")
        pct.append(_crowd_box(rec, f"{CROWD_FIELD}[{i}]"))
        label = rec.get("label")
        if label is None:
            if len(label_to_id) != 1:
                raise ValueError(f"{CROWD_FIELD}[{i}]: no label, and the config has several")
            label = next(iter(label_to_id))
        classes.append(_label_index(str(label), label_to_id))
    xyxy = percent_to_xyxy(np.array(pct), width, height)
    xyxy = np.clip(xyxy, 0, np.array([width, height, width, height], np.float32))
    return Detections(xyxy=xyxy, class_id=np.array(classes, np.int64))


def detections_to_crowd_labels(
    detections: Detections,
    *,
    width: float,
    height: float,
    labels: Sequence[str],
    extra: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Pixel Detections -> ``crowd_labels`` records; ``extra[i]`` fields are merged into record ``i``."""
    pct = xyxy_to_percent(detections.xyxy, width, height)
    out = []
    for i in range(len(detections)):
        rec: dict[str, Any] = {
            "x": round(float(pct[i, 0]), 4),
            "y": round(float(pct[i, 1]), 4),
            "width": round(float(pct[i, 2]), 4),
            "height": round(float(pct[i, 3]), 4),
            "label": labels[int(detections.class_id[i])],
        }
        if extra is not None:
            rec.update(extra[i])
        out.append(rec)
    return out
