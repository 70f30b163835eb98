"""Agreement between two label sets of the same images: one-to-one box matches, precision, recall, F1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from selection.boxes import box_iou
from selection.detections import Detections


@dataclass(frozen=True)
class F1Result:
    """Counts and rates of ``labels`` measured against ``reference``.

    Attributes:
        precision: ``tp / (tp + fp)``; 1 when both sets are empty, 0 when only ``labels`` is empty.
        recall: ``tp / (tp + fn)``; 1 when both sets are empty, 0 when only ``reference`` is empty.
        f1: ``2 tp / (2 tp + fp + fn)``; 1 when both sets are empty.
        tp: matched pairs.
        fp: label boxes without a reference match.
        fn: reference boxes without a label match.
    """

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def count_matches(reference: Detections, labels: Detections, *, iou: float = 0.5) -> int:
    """Largest number of one-to-one same-class pairs with IoU >= ``iou`` (ties broken by higher total IoU).

    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on a weight that first counts pairs and
    then adds their IoU, so a pair is never given up for a better IoU elsewhere.
    """
    if len(reference) == 0 or len(labels) == 0:
        return 0
    overlap = box_iou(reference.xyxy, labels.xyxy)
    valid = (overlap >= iou) & (reference.class_id[:, None] == labels.class_id[None, :])
    if not valid.any():
        return 0
    # Each valid pair is worth more than the IoU of all pairs together: cardinality first, then IoU.
    bonus = float(min(overlap.shape) + 1)
    weight = np.where(valid, bonus + overlap, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return int(valid[rows, cols].sum())


def _check(reference: Sequence[Detections], labels: Sequence[Detections], iou: float) -> None:
    if len(reference) != len(labels):
        raise ValueError(
            f"labels: expected one Detections per reference image ({len(reference)}), got {len(labels)}"
        )
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou: expected a value in (0, 1], got {iou}")


def _rates(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return precision, recall, f1


def label_f1(reference: Sequence[Detections], labels: Sequence[Detections], *, iou: float = 0.5) -> F1Result:
    """Precision, recall and F1 of ``labels`` against ``reference``, pooled over images.

    Args:
        reference: per image, the reference boxes (e.g. expert labels) in pixels.
        labels: per image (same order), the boxes to assess (e.g. crowd or corrected labels) in pixels.
        iou: IoU a same-class pair needs to count as a match, in (0, 1].

    Returns:
        Pooled counts and rates.
    """
    _check(reference, labels, iou)
    tp = fp = fn = 0
    for ref, lab in zip(reference, labels, strict=True):
        matched = count_matches(ref, lab, iou=iou)
        tp += matched
        fp += len(lab) - matched
        fn += len(ref) - matched
    precision, recall, f1 = _rates(tp, fp, fn)
    return F1Result(precision=precision, recall=recall, f1=f1, tp=tp, fp=fp, fn=fn)


def per_image_f1(
    reference: Sequence[Detections], labels: Sequence[Detections], *, iou: float = 0.5
) -> np.ndarray:
    """F1 of each image; an image with no boxes in either set scores 1.

    Returns:
        float64 (n_images,) in [0, 1].
    """
    _check(reference, labels, iou)
    out = np.empty(len(reference), np.float64)
    for i, (ref, lab) in enumerate(zip(reference, labels, strict=True)):
        matched = count_matches(ref, lab, iou=iou)
        out[i] = _rates(matched, len(lab) - matched, len(ref) - matched)[2]
    return out
