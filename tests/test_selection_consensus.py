"""selection.consensus.merge_annotators: hand-checkable clusters, duplicates, empty input, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from selection.consensus import merge_annotators
from selection.detections import Detections


def test_three_annotators_one_object_fuse_to_the_mean_box_with_three_votes() -> None:
    a = make_detections([[0, 0, 10, 10]])
    b = make_detections([[2, 0, 12, 10]])  # IoU with a: 80/120 = 2/3
    c = make_detections([[1, 2, 11, 12]])
    merged, votes = merge_annotators([a, b, c])
    np.testing.assert_allclose(merged.xyxy, [[1, 2 / 3, 11, 10 + 2 / 3]], rtol=1e-6)
    assert votes.tolist() == [3]
    assert merged.score is None


def test_boxes_below_the_iou_stay_apart() -> None:
    a = make_detections([[0, 0, 10, 10]])
    b = make_detections([[5, 0, 15, 10]])  # IoU 50/150 = 1/3
    merged, votes = merge_annotators([a, b], iou=0.5)
    assert len(merged) == 2 and votes.tolist() == [1, 1]
    merged, votes = merge_annotators([a, b], iou=0.3)
    assert len(merged) == 1 and votes.tolist() == [2]
    np.testing.assert_allclose(merged.xyxy, [[2.5, 0, 12.5, 10]])


def test_classes_are_not_merged_and_min_votes_drops_lone_boxes() -> None:
    a = make_detections([[0, 0, 10, 10], [40, 40, 50, 50]], classes=[0, 0])
    b = make_detections([[0, 0, 10, 10]], classes=[1])
    c = make_detections([[0, 0, 10, 10]], classes=[0])
    merged, votes = merge_annotators([a, b, c])
    assert merged.class_id.tolist() == [0, 0, 1] and votes.tolist() == [2, 1, 1]
    merged, votes = merge_annotators([a, b, c], min_votes=2)
    assert merged.xyxy.tolist() == [[0, 0, 10, 10]] and votes.tolist() == [2]


def test_a_duplicate_of_one_annotator_is_kept_as_its_own_box() -> None:
    a = make_detections([[0, 0, 10, 10], [0, 0, 10, 10.5]])  # the annotator drew the object twice
    b = make_detections([[0, 0, 10, 10]])
    merged, votes = merge_annotators([a, b])
    assert votes.tolist() == [2, 1]
    np.testing.assert_allclose(merged.xyxy, [[0, 0, 10, 10], [0, 0, 10, 10.5]])


def test_a_single_annotator_is_returned_unchanged_with_one_vote_each() -> None:
    rng = np.random.default_rng(3)
    boxes = random_boxes(12, rng)
    one = make_detections(boxes, classes=rng.integers(0, 3, 12))
    merged, votes = merge_annotators([one])
    np.testing.assert_array_equal(merged.xyxy, one.xyxy)
    np.testing.assert_array_equal(merged.class_id, one.class_id)
    assert votes.tolist() == [1] * 12
    # Scored boxes too come back in their own order (fusing goes best first, but there is nothing to fuse).
    scored = make_detections(boxes, classes=one.class_id, scores=rng.random(12))
    merged, _ = merge_annotators([scored])
    np.testing.assert_array_equal(merged.xyxy, scored.xyxy)
    np.testing.assert_array_equal(merged.score, scored.score)
    assert len(merge_annotators([one], min_votes=2)[0]) == 0


def test_scored_boxes_are_weighted_by_score_and_taken_best_first() -> None:
    a = make_detections([[0, 0, 10, 10]], scores=[0.75])
    b = make_detections([[0, 0, 10, 10], [4, 0, 14, 10]], scores=[0.1, 0.25])
    merged, votes = merge_annotators([a, b])
    # b's best box (0.25) has IoU 60/140 = 0.43 with a's: it opens its own cluster; b's 0.1 box joins a's.
    assert votes.tolist() == [2, 1]
    np.testing.assert_allclose(merged.xyxy[0], [0, 0, 10, 10])
    np.testing.assert_allclose(merged.score, [(0.75 + 0.1) / 2, 0.25], rtol=1e-6)
    c = make_detections([[2, 0, 12, 10]], scores=[0.25])
    merged, _ = merge_annotators([a, c])
    np.testing.assert_allclose(merged.xyxy, [[0.5, 0, 10.5, 10]], rtol=1e-6)  # (0.75*0 + 0.25*2) / 1


def test_empty_inputs_give_empty_outputs() -> None:
    merged, votes = merge_annotators([])
    assert len(merged) == 0 and merged.xyxy.shape == (0, 4) and votes.shape == (0,)
    merged, votes = merge_annotators([Detections.empty(), Detections.empty()])
    assert len(merged) == 0 and votes.dtype == np.int64
    a = make_detections([[0, 0, 10, 10]])
    merged, votes = merge_annotators([Detections.empty(), a])
    assert merged.xyxy.tolist() == [[0, 0, 10, 10]] and votes.tolist() == [1]


def test_merging_is_independent_of_box_order_within_an_annotator_for_separate_objects() -> None:
    a = make_detections([[0, 0, 10, 10], [50, 50, 60, 60]])
    b = make_detections([[50, 50, 60, 61], [0, 0, 10, 11]])
    merged, votes = merge_annotators([a, b])
    assert votes.tolist() == [2, 2]
    np.testing.assert_allclose(merged.xyxy, [[0, 0, 10, 10.5], [50, 50, 60, 60.5]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"iou": 0.0}, ValueError, "iou"),
        ({"iou": 1.5}, ValueError, "iou"),
        ({"min_votes": 0}, ValueError, "min_votes"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        merge_annotators([make_detections([[0, 0, 1, 1]])], **kwargs)


def test_a_non_detections_input_is_named() -> None:
    with pytest.raises(TypeError, match=r"dets_per_annotator\[1\]"):
        merge_annotators([make_detections([[0, 0, 1, 1]]), [[0, 0, 1, 1]]])  # type: ignore[list-item]
