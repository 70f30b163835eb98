"""How well a score finds noisy images, and how well the LSM's instance grades name each error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from selection import ImageScore, NoiseType
from selection.boxes import box_iou
from selection.detections import Detections

TYPES = ("background", "localization", "box_in_box", "missed")


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (higher = more likely positive), ties counted half.

    Args:
        score: float (N,) scores.
        positive: bool (N,) labels.

    Returns:
        AUROC in [0, 1]; NaN when one class is absent.
    """
    score = np.asarray(score, np.float64)
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated average precision of ranking by ``score`` descending; NaN with no positives."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@dataclass(frozen=True)
class TypeQuality:
    """Precision and recall of the LSM naming one noise type."""

    noise_type: str
    precision: float
    recall: float
    support: int


def instance_quality(
    scores: Sequence[ImageScore],
    crowd_noise: Sequence[np.ndarray],
    missed_boxes: Sequence[Detections],
    preds: Sequence[Detections],
) -> list[TypeQuality]:
    """Per-type precision/recall of the LSM's instance findings against the simulator's truth.

    Args:
        scores: the LSM's findings, one per image.
        crowd_noise: per image, the true noise type of each crowd box (strings, "bib_inner" is clean).
        missed_boxes: per image, the expert boxes the crowd missed.
        preds: per image, the predictions the LSM saw (its "missed" instances index them).
    """
    tp = dict.fromkeys(TYPES, 0)
    flagged = dict.fromkeys(TYPES, 0)
    support = dict.fromkeys(TYPES, 0)
    for score, truth, missed, pred in zip(scores, crowd_noise, missed_boxes, preds, strict=True):
        inst = score.instances
        is_crowd = inst.source == 0
        found = np.full(len(truth), NoiseType.CLEAN.value, dtype=object)
        found[inst.index[is_crowd]] = inst.noise_type[is_crowd].astype(str)
        for t in TYPES[:3]:
            actual = np.asarray(truth) == t
            named = found == t
            tp[t] += int(np.sum(actual & named))
            flagged[t] += int(np.sum(named))
            support[t] += int(np.sum(actual))
        is_missed = (~is_crowd) & (inst.noise_type.astype(str) == NoiseType.MISSED.value)
        proposals = pred.xyxy[inst.index[is_missed]] if is_missed.any() else np.zeros((0, 4))
        support["missed"] += len(missed)
        flagged["missed"] += len(proposals)
        if len(missed) and len(proposals):
            iou = box_iou(proposals, missed.xyxy)
            # Each missed deposit counts once, each proposal once.
            hit_missed = (iou >= 0.5).any(axis=0)
            tp["missed"] += int(min(hit_missed.sum(), (iou >= 0.5).any(axis=1).sum()))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return [TypeQuality(t, ratio(tp[t], flagged[t]), ratio(tp[t], support[t]), support[t]) for t in TYPES]


def cleanlab_scores(crowds: Sequence[Detections], preds: Sequence[Detections]) -> np.ndarray:
    """cleanlab ObjectLab's per-image label *issue* score (1 - label quality), from the same predictions.

    Single-class data: ObjectLab's "swap" subscore compares classes and carries no signal here, so its
    aggregation weight is set to 0 and the "overlooked" and "badloc" weights split the rest.
    """
    from cleanlab.object_detection.rank import get_label_quality_scores

    labels = [{"bboxes": c.xyxy.astype(np.float32), "labels": c.class_id.astype(int)} for c in crowds]
    predictions = []
    for p in preds:
        score = p.score if p.score is not None else np.ones(len(p), np.float32)
        predictions.append([np.concatenate([p.xyxy, score[:, None]], axis=1).astype(np.float32)])
    quality = get_label_quality_scores(
        labels,
        predictions,
        aggregation_weights={"overlooked": 0.5, "badloc": 0.5, "swap": 0.0},
        verbose=False,
    )
    return 1.0 - np.asarray(quality, np.float64)
