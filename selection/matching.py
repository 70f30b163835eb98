"""One-to-one matching of crowd boxes to predicted boxes (Hungarian assignment on IoU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from selection.boxes import pair_geometry
from selection.detections import Detections

_EMPTY_INT = np.zeros((0,), np.int64)
_EMPTY_INT.setflags(write=False)

__all__ = ["Match", "assign", "match_boxes", "pair_geometry"]  # pair_geometry: from selection.boxes


def assign(weight: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-weight one-to-one assignment restricted to ``valid`` pairs.

    Args:
        weight: float (N, M) non-negative pair weights (e.g. IoU).
        valid: bool (N, M), True where a pair may be matched.

    Returns:
        ``(rows, cols)``: int64 (P,) matched row and column indices, sorted by row; every
        ``valid[rows[p], cols[p]]`` is True.
    """
    if not valid.any():
        return _EMPTY_INT, _EMPTY_INT
    # Only rows/columns with at least one valid pair take part: smaller problem, same optimum.
    r_any = np.flatnonzero(valid.any(axis=1))
    c_any = np.flatnonzero(valid.any(axis=0))
    sub_valid = valid[r_any][:, c_any]
    sub_weight = weight[r_any][:, c_any]
    if r_any.size == 1 or c_any.size == 1:
        sub = np.where(sub_valid, sub_weight, -1.0)
        if r_any.size == 1:
            j = int(np.argmax(sub[0]))
            return r_any, c_any[j : j + 1]
        i = int(np.argmax(sub[:, 0]))
        return r_any[i : i + 1], c_any
    # Invalid pairs get weight 0, so they never beat a valid one; they are dropped afterwards.
    sub = np.where(sub_valid, sub_weight, 0.0)
    rows, cols = linear_sum_assignment(sub, maximize=True)
    keep = sub_valid[rows, cols]
    return r_any[rows[keep]].astype(np.int64), c_any[cols[keep]].astype(np.int64)


@dataclass(frozen=True)
class Match:
    """The result of matching crowd boxes to predictions.

    Attributes:
        crowd_idx: int64 (P,) crowd indices of the matched pairs, ascending.
        pred_idx: int64 (P,) prediction indices of the matched pairs (parallel to ``crowd_idx``).
        iou: float64 (P,) IoU of each matched pair, each at least the threshold.
        unmatched_crowd: int64 (M - P,) crowd indices without a match, ascending.
        unmatched_pred: int64 (K - P,) prediction indices without a match, ascending.
    """

    crowd_idx: np.ndarray
    pred_idx: np.ndarray
    iou: np.ndarray
    unmatched_crowd: np.ndarray
    unmatched_pred: np.ndarray

    def __len__(self) -> int:
        return int(self.crowd_idx.shape[0])


def match_boxes(
    crowd: Detections,
    pred: Detections,
    *,
    iou_threshold: float = 0.5,
    class_aware: bool = False,
) -> Match:
    """Match crowd boxes to predictions one-to-one, maximising the total IoU (Hungarian).

    Pairs with IoU below ``iou_threshold`` never match, so a box can be left unmatched even when an
    overlapping box exists. Maximising IoU over the thresholded pairs also maximises the number of
    matches in the usual cases where a greedy highest-IoU-first matching would strand a box.

    Args:
        crowd: M crowd (or reference) boxes.
        pred: K predicted boxes (scores are not used).
        iou_threshold: minimum IoU in (0, 1] for a pair to count as matched.
        class_aware: when True only boxes of the same ``class_id`` can match.

    Returns:
        The matched pairs and the unmatched indices on each side.

    Raises:
        ValueError: if ``iou_threshold`` is not in (0, 1].
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold}")
    m, k = len(crowd), len(pred)
    iou, _ = pair_geometry(crowd.xyxy, pred.xyxy)
    valid = iou >= iou_threshold
    if class_aware:
        valid &= crowd.class_id[:, None] == pred.class_id[None, :]
    rows, cols = assign(iou, valid)
    crowd_free = np.ones(m, bool)
    crowd_free[rows] = False
    pred_free = np.ones(k, bool)
    pred_free[cols] = False
    return Match(
        crowd_idx=rows,
        pred_idx=cols,
        iou=iou[rows, cols].astype(np.float64),
        unmatched_crowd=np.flatnonzero(crowd_free).astype(np.int64),
        unmatched_pred=np.flatnonzero(pred_free).astype(np.int64),
    )
