"""Pixel boxes read from a label file (COCO, YOLO, Label Studio), checked against their image, clipped to it.

The one rule for every reader of labels (``backend.ingest``, ``bench.userdata``): coordinates must be finite,
a box must have a positive width and height, a box wholly outside its image is an error, and a box reaching
past the image is clipped to it (and counted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selection.detections import Detections


def clip_to_image(
    xyxy: np.ndarray, class_id: np.ndarray, *, width: int, height: int, where: Sequence[str], image: str
) -> tuple[Detections, int]:
    """Check the pixel boxes of one image and clip them to it.

    Args:
        xyxy: float (N, 4) pixel boxes ``x1, y1, x2, y2`` as read, unclipped.
        class_id: int (N,) class ids (checked by the caller).
        width, height: the image size in pixels.
        where: per box, the place to name in an error (``labels/a.txt:3``, ``crowd.json: annotations[4]``).
        image: how errors name the image (its path).

    Returns:
        The boxes clipped to the image (float32 pixels, unscored), and how many of them were clipped.

    Raises:
        ValueError: starting with the box's ``where``: a coordinate that is not finite, an empty box, or a
            box wholly outside the image.

    Example:
        >>> boxes, n_clipped = clip_to_image(
        ...     np.array([[4.0, 2.0, 24.0, 12.0], [70.0, 30.0, 90.0, 50.0]]),
        ...     np.array([0, 1]), width=80, height=40, where=["a.txt:1", "a.txt:2"], image="a.png")
        >>> boxes.xyxy.tolist(), n_clipped
        ([[4.0, 2.0, 24.0, 12.0], [70.0, 30.0, 80.0, 40.0]], 1)
        >>> clip_to_image(np.array([[90.0, 2.0, 95.0, 12.0]]), np.array([0]), width=80, height=40,
        ...               where=["a.txt:1"], image="a.png")
        Traceback (most recent call last):
        ValueError: a.txt:1: box [90.0, 2.0, 95.0, 12.0] (xyxy px) lies outside the 80 x 40 image a.png
    """
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(xyxy.tolist()):
        if not all(np.isfinite(v) for v in (x1, y1, x2, y2)):
            raise ValueError(f"{where[i]}: box coordinates must be finite numbers, got {[x1, y1, x2, y2]}")
        if x2 <= x1 or y2 <= y1:
            raise ValueError(
                f"{where[i]}: empty box ({x2 - x1:.4g} x {y2 - y1:.4g} px); width and height must be > 0"
            )
        if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
            raise ValueError(
                f"{where[i]}: box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}] (xyxy px) lies outside the "
                f"{width} x {height} image {image}"
            )
    clipped = np.clip(xyxy, 0, np.array([width, height, width, height], np.float64))
    n_clipped = int(np.sum(np.any(clipped != xyxy, axis=1)))
    boxes = Detections(xyxy=clipped.astype(np.float32), class_id=np.asarray(class_id, np.int64).reshape(-1))
    return boxes, n_clipped
