"""Matching crowd boxes to predictions: hand cases, Hungarian vs greedy, empty inputs, class awareness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from selection import Detections, match_boxes
from selection.boxes import box_ioa, box_iou
from selection.matching import pair_geometry


def test_pair_geometry_agrees_with_box_iou_and_ioa(rng):
    a, b = random_boxes(7, rng), random_boxes(5, rng)
    iou, ioa = pair_geometry(a, b)
    np.testing.assert_allclose(iou, box_iou(a, b), atol=1e-12)
    np.testing.assert_allclose(ioa, box_ioa(a, b), atol=1e-12)


def test_unit_boxes_offset_by_half_have_iou_one_third():
    crowd = make_detections([[0, 0, 1, 1]])
    pred = make_detections([[0.5, 0, 1.5, 1]], scores=[0.9])
    iou, _ = pair_geometry(crowd.xyxy, pred.xyxy)
    assert iou[0, 0] == pytest.approx(1 / 3)
    # 1/3 is below 0.5: no match; at a 0.3 threshold it matches.
    assert len(match_boxes(crowd, pred)) == 0
    m = match_boxes(crowd, pred, iou_threshold=0.3)
    assert m.crowd_idx.tolist() == [0] and m.pred_idx.tolist() == [0]
    assert m.iou[0] == pytest.approx(1 / 3)


def _greedy_pairs(iou: np.ndarray, thr: float) -> list[tuple[int, int]]:
    """Reference greedy matching (highest IoU first): the matched (row, column) pairs."""
    used_r, used_c, pairs = set(), set(), []
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] < thr:
            break
        if r not in used_r and c not in used_c:
            used_r.add(r), used_c.add(c)
            pairs.append((int(r), int(c)))
    return pairs


def _greedy(iou: np.ndarray, thr: float) -> int:
    """Reference greedy matching (highest IoU first): number of matches."""
    return len(_greedy_pairs(iou, thr))


def _greedy_total_iou(iou: np.ndarray, thr: float) -> float:
    """Reference greedy matching (highest IoU first): total IoU of the matched pairs."""
    return float(sum(iou[r, c] for r, c in _greedy_pairs(iou, thr)))


def test_hungarian_beats_greedy():
    # 1-D intervals of height 1: IoU(A,P)=0.9, IoU(A,Q)=7.5/10.5, IoU(B,P)=0.7, IoU(B,Q)=6.5/14.357 < 0.5.
    # Greedy takes A-P first and strands B; Hungarian matches A-Q and B-P.
    crowd = make_detections([[1, 0, 11, 1], [2, 0, 2 + 9 / 0.7, 1]])  # A, B
    pred = make_detections([[2, 0, 11, 1], [0.5, 0, 8.5, 1]], scores=[0.9, 0.9])  # P, Q
    iou, _ = pair_geometry(crowd.xyxy, pred.xyxy)
    np.testing.assert_allclose(iou, [[0.9, 7.5 / 10.5], [0.7, 6.5 / (1.5 + 9 / 0.7)]], atol=1e-5)
    assert _greedy(iou, 0.5) == 1
    m = match_boxes(crowd, pred)
    assert m.crowd_idx.tolist() == [0, 1]
    assert m.pred_idx.tolist() == [1, 0]
    assert m.unmatched_crowd.size == 0 and m.unmatched_pred.size == 0


@pytest.mark.parametrize(("n_crowd", "n_pred"), [(0, 0), (0, 3), (4, 0)])
def test_empty_inputs_give_shaped_outputs(rng, n_crowd, n_pred):
    crowd = make_detections(random_boxes(n_crowd, rng))
    pred = make_detections(random_boxes(n_pred, rng), scores=np.full(n_pred, 0.5))
    m = match_boxes(crowd, pred)
    assert m.crowd_idx.shape == m.pred_idx.shape == m.iou.shape == (0,)
    assert m.unmatched_crowd.tolist() == list(range(n_crowd))
    assert m.unmatched_pred.tolist() == list(range(n_pred))
    assert m.crowd_idx.dtype == np.int64 and m.unmatched_pred.dtype == np.int64


def test_class_aware_only_matches_same_class():
    crowd = make_detections([[0, 0, 10, 10]], classes=[1])
    pred = make_detections([[0, 0, 10, 10], [1, 0, 11, 10]], classes=[0, 1], scores=[0.9, 0.9])
    assert match_boxes(crowd, pred).pred_idx.tolist() == [0]
    m = match_boxes(crowd, pred, class_aware=True)
    assert m.pred_idx.tolist() == [1]
    assert m.unmatched_pred.tolist() == [0]


def _best_total_iou(iou: np.ndarray, thr: float) -> float:
    """Brute force over every one-to-one assignment: the largest total IoU of pairs at or above ``thr``."""
    n = max(iou.shape)
    if min(iou.shape) == 0:
        return 0.0
    weight = np.zeros((n, n))
    weight[: iou.shape[0], : iou.shape[1]] = np.where(iou >= thr, iou, 0.0)  # padding and invalid pairs: 0
    perms = np.array(list(itertools.permutations(range(n))), np.int64).reshape(-1, n)
    return float(weight[np.arange(n), perms].sum(axis=1).max())


def _clustered_boxes(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crowd boxes and predictions, 1 to 6 of each, around 1-2 centres, jittered so that several boxes
    compete for the same partners."""
    centres = rng.uniform(40, 140, (int(rng.integers(1, 3)), 2))

    def around(n: int) -> np.ndarray:
        c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 4, (n, 2))
        half = rng.uniform(8, 16, (n, 2))
        return np.concatenate([c - half, c + half], axis=1).astype(np.float32)

    return around(int(rng.integers(1, 7))), around(int(rng.integers(1, 7)))


def test_matching_properties_on_random_sets(rng):
    several = suboptimal_greedy = 0
    for _ in range(200):
        crowd_boxes, pred_boxes = _clustered_boxes(rng)
        crowd = make_detections(crowd_boxes)
        pred = make_detections(pred_boxes, scores=rng.uniform(0, 1, len(pred_boxes)))
        m = match_boxes(crowd, pred, iou_threshold=0.3)
        # One-to-one, above threshold, and the index sets partition each side.
        assert len(set(m.crowd_idx.tolist())) == len(m) == len(set(m.pred_idx.tolist()))
        assert np.all(m.iou >= 0.3)
        assert sorted([*m.crowd_idx.tolist(), *m.unmatched_crowd.tolist()]) == list(range(len(crowd)))
        assert sorted([*m.pred_idx.tolist(), *m.unmatched_pred.tolist()]) == list(range(len(pred)))
        iou = box_iou(crowd.xyxy, pred.xyxy)
        np.testing.assert_allclose(m.iou, iou[m.crowd_idx, m.pred_idx])
        # Exact: the largest total IoU of any one-to-one matching; and never fewer matches than greedy.
        best = _best_total_iou(iou, 0.3)
        assert m.iou.sum() == pytest.approx(best, abs=1e-6)
        assert len(m) >= _greedy(iou, 0.3)
        several += len(m) >= 2
        suboptimal_greedy += _greedy_total_iou(iou, 0.3) < best - 1e-6
    # The clusters make the property bite: most images match several pairs, and on some of them the
    # highest-IoU-first matching is not the best one.
    assert several >= 100 and suboptimal_greedy >= 5


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_bad_threshold_is_rejected(threshold):
    with pytest.raises(ValueError, match="iou_threshold"):
        match_boxes(Detections.empty(), Detections.empty(with_score=True), iou_threshold=threshold)
