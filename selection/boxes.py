"""Vectorised box geometry: IoU, intersection over area."""

from __future__ import annotations

import numpy as np


def _as_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4), got {arr.shape}")
    return arr


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas.

    Args:
        a: (N, 4) xyxy boxes in pixels.
        b: (M, 4) xyxy boxes in pixels.

    Returns:
        float64 (N, M) intersection areas.
    """
    a = _as_boxes("a", a)
    b = _as_boxes("b", b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def box_area(boxes: np.ndarray) -> np.ndarray:
    """float64 (N,) areas of (N, 4) xyxy boxes."""
    boxes = _as_boxes("boxes", boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union, (N, 4) x (M, 4) -> float64 (N, M) in [0, 1].

    Two degenerate (zero-area) boxes have IoU 0.
    """
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over the area of ``b``: how much of each ``b`` lies inside each ``a``.

    Args:
        a: (N, 4) xyxy boxes (the containers).
        b: (M, 4) xyxy boxes (the contained).

    Returns:
        float64 (N, M) in [0, 1]; 0 where a ``b`` box has zero area.
    """
    inter = box_intersection(a, b)
    area_b = box_area(b)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area_b > 0, inter / area_b, 0.0)
