"""The one box-geometry kernel: areas, intersections, IoU and IoA of xyxy boxes.

Every box comparison in the project goes through ``pair_geometry`` (or the validating wrappers below, which
call the same kernel), so the per-image scorer, the batched scorer, matching, metrics and the simulator all
compute exactly the same floats. The kernel broadcasts over leading batch dimensions: ``(..., N, 4)`` boxes
against ``(..., M, 4)`` boxes give ``(..., N, M)`` arrays.
"""

from __future__ import annotations

import numpy as np


def _as_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4), got {arr.shape}")
    return arr


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    wx = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    wy = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.clip(wx, 0.0, None) * np.clip(wy, 0.0, None)


def _iou(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _ioa(inter: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    area = area_b[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(area > 0, inter / area, 0.0)


def pair_geometry(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the area of ``b`` from one intersection computation (no validation).

    This is the inner loop of the LSM scorers; inputs are trusted (e.g. ``Detections.xyxy``).

    Args:
        a: float (..., N, 4) xyxy boxes in pixels.
        b: float (..., M, 4) xyxy boxes in pixels; leading dimensions broadcast against ``a``'s.

    Returns:
        ``(iou, ioa)``, both float64 (..., N, M) in [0, 1]; ``ioa[..., i, j]`` is the share of ``b[..., j]``
        inside ``a[..., i]``. Degenerate (zero-area) boxes give 0.

    Example:
        >>> iou, ioa = pair_geometry(np.array([[0.0, 0, 10, 10]]), np.array([[5.0, 0, 10, 10]]))
        >>> float(iou[0, 0]), float(ioa[0, 0])
        (0.5, 1.0)
    """
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    inter = _intersection(a, b)
    area_b = _area(b)
    return _iou(inter, _area(a), area_b), _ioa(inter, area_b)


def box_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas.

    Args:
        a: (N, 4) xyxy boxes in pixels.
        b: (M, 4) xyxy boxes in pixels.

    Returns:
        float64 (N, M) intersection areas.

    Raises:
        ValueError: if an input is not of shape (N, 4).
    """
    return _intersection(_as_boxes("a", a), _as_boxes("b", b))


def box_area(boxes: np.ndarray) -> np.ndarray:
    """float64 (N,) areas of (N, 4) xyxy boxes; ValueError on another shape."""
    return _area(_as_boxes("boxes", boxes))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union, (N, 4) x (M, 4) -> float64 (N, M) in [0, 1].

    Two degenerate (zero-area) boxes have IoU 0. Raises ValueError if an input is not of shape (N, 4).
    """
    a = _as_boxes("a", a)
    b = _as_boxes("b", b)
    return _iou(_intersection(a, b), _area(a), _area(b))


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over the area of ``b``: how much of each ``b`` lies inside each ``a``.

    Args:
        a: (N, 4) xyxy boxes (the containers).
        b: (M, 4) xyxy boxes (the contained).

    Returns:
        float64 (N, M) in [0, 1]; 0 where a ``b`` box has zero area.

    Raises:
        ValueError: if an input is not of shape (N, 4).
    """
    a = _as_boxes("a", a)
    b = _as_boxes("b", b)
    return _ioa(_intersection(a, b), _area(b))
