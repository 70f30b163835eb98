"""selection.consensus.merge_annotators: hand-checkable clusters, duplicates, empty input, bad arguments, and
bit-for-bit equality with the quadratic reference implementation on random crowds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from bench.merge import merge_quadratic
from selection.consensus import _cell_size, _cell_spans, merge_annotators
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


# The oracle: the first, quadratic implementation of the rule, box by box against every open cluster, kept
# verbatim in bench.merge (which times the two side by side), so that the grid-and-turns implementation can be
# held to it bit for bit.
_merge_reference = merge_quadratic


def _assert_same_merge(got: tuple[Detections, np.ndarray], want: tuple[Detections, np.ndarray]) -> None:
    """Bit-identical boxes, classes, scores and votes, in the same order."""
    (merged, votes), (merged_ref, votes_ref) = got, want
    assert merged.xyxy.dtype == merged_ref.xyxy.dtype and merged.xyxy.tobytes() == merged_ref.xyxy.tobytes()
    np.testing.assert_array_equal(merged.class_id, merged_ref.class_id)
    assert (merged.score is None) == (merged_ref.score is None)
    if merged.score is not None and merged_ref.score is not None:
        assert merged.score.tobytes() == merged_ref.score.tobytes()
    assert votes.dtype == votes_ref.dtype == np.int64
    np.testing.assert_array_equal(votes, votes_ref)


def _random_crowd(rng: np.random.Generator) -> list[Detections]:
    """One image's annotators, mixing what makes fusion hard.

    Objects redrawn by every annotator with jitter (sometimes none: identical boxes, exact IoU ties), misses,
    lone extras, an annotator's duplicates, zero-size boxes, boxes large against the grid's cells, several
    classes, integer coordinates (more exact ties), scored or unscored annotators.
    """
    n_annotators = int(rng.integers(1, 5))
    size = float(rng.choice([60.0, 400.0, 5000.0]))
    n_objects = int(rng.integers(0, 40))
    xy = rng.uniform(0, size, (n_objects, 2))
    wh = rng.uniform(1, 40, (n_objects, 2)) * rng.choice([1.0, 1.0, 1.0, 30.0], (n_objects, 1))
    objects = np.concatenate([xy, xy + wh], axis=1)
    object_class = rng.integers(0, int(rng.integers(1, 4)), n_objects)
    jitter = float(rng.choice([0.0, 0.5, 3.0, 10.0]))
    rounded = bool(rng.random() < 0.5)
    crowd = []
    for _ in range(n_annotators):
        drawn = rng.random(n_objects) >= 0.2
        boxes = objects[drawn] + rng.normal(0, jitter, (int(drawn.sum()), 4))
        classes = object_class[drawn]
        n_extra = int(rng.integers(0, 6))
        exy = rng.uniform(0, size, (n_extra, 2))
        extra = np.concatenate([exy, exy + rng.uniform(0, 40, (n_extra, 2))], axis=1)
        boxes = np.concatenate([boxes, extra])
        classes = np.concatenate([classes, rng.integers(0, 3, n_extra)])
        if len(boxes) and rng.random() < 0.5:  # duplicates of the annotator's own boxes
            twice = rng.integers(0, len(boxes), int(rng.integers(1, 4)))
            boxes, classes = np.concatenate([boxes, boxes[twice]]), np.concatenate([classes, classes[twice]])
        if len(boxes) and rng.random() < 0.3:  # zero-size boxes
            flat = rng.random(len(boxes)) < 0.3
            boxes[flat, 2] = boxes[flat, 0]
        if rounded:
            boxes = np.round(boxes)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        order = rng.permutation(len(boxes))
        boxes, classes = boxes[order], classes[order]
        scores = None
        if rng.random() < 0.5:  # scored; coarse scores tie often, and 0 is the smallest weight
            scores = rng.choice([0.0, 0.25, 0.5, 1.0], len(boxes)) if rounded else rng.random(len(boxes))
        crowd.append(make_detections(boxes, classes=classes, scores=scores))
    if rng.random() < 0.3:  # every annotator scored
        crowd = [
            d
            if d.score is not None
            else Detections(d.xyxy, d.class_id, rng.random(len(d)).astype(np.float32))
            for d in crowd
        ]
    return crowd


@pytest.mark.parametrize("seed", range(40))
def test_merging_equals_the_quadratic_reference_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(10):
        crowd = _random_crowd(rng)
        for iou in (0.05, 0.3, 0.5, 1.0):
            min_votes = int(rng.integers(1, 4))
            got = merge_annotators(crowd, iou=iou, min_votes=min_votes)
            _assert_same_merge(got, _merge_reference(crowd, iou=iou, min_votes=min_votes))


def test_ties_go_to_the_first_cluster_as_in_the_reference() -> None:
    # Annotator a drew one object twice: two clusters with the same box. b's copy ties between them, and
    # c's box lies halfway between a cluster on its left and one on its right (IoU 80/120 with each).
    a = make_detections([[0, 0, 10, 10], [0, 0, 10, 10], [100, 0, 110, 10], [104, 0, 114, 10]])
    b = make_detections([[0, 0, 10, 10]])
    c = make_detections([[102, 0, 112, 10], [0, 0, 10, 10]])
    for crowd in ([a, b], [a, c], [a, b, c], [a, c, b]):
        got = merge_annotators(crowd, iou=0.5)
        _assert_same_merge(got, _merge_reference(crowd, iou=0.5))
    merged, votes = merge_annotators([a, b, c], iou=0.5)
    assert votes.tolist() == [3, 1, 2, 1]
    np.testing.assert_allclose(merged.xyxy[2], [101, 0, 111, 10])


def test_many_spread_boxes_equal_the_reference() -> None:
    # Enough boxes that the grid has many cells; boxes of every size, a few spanning most of the image.
    rng = np.random.default_rng(7)
    objects = random_boxes(300, rng, size=3000.0).astype(np.float64)
    objects[:5, 2:] = objects[:5, :2] + 2000
    crowd = []
    for k in range(3):
        boxes = objects + rng.normal(0, 2, objects.shape)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        keep = rng.random(len(boxes)) >= 0.1
        crowd.append(make_detections(boxes[keep], scores=rng.random(int(keep.sum())) if k else None))
    for iou in (0.05, 0.5, 1.0):
        _assert_same_merge(merge_annotators(crowd, iou=iou), _merge_reference(crowd, iou=iou))
    scored = [Detections(d.xyxy, d.class_id, rng.random(len(d)).astype(np.float32)) for d in crowd]
    _assert_same_merge(merge_annotators(scored, min_votes=2), _merge_reference(scored, min_votes=2))


def test_boxes_that_intersect_share_a_grid_cell_and_ordinary_boxes_are_not_large() -> None:
    # The grid's one promise: a positive intersection (needed for any IoU >= iou > 0) means a common cell,
    # unless one box is "large" (then it is compared with everything). Ordinary boxes must not be large, or
    # the merge silently falls back to comparing every cluster.
    rng = np.random.default_rng(11)
    a = random_boxes(400, rng, size=1000.0).astype(np.float64)
    b = a + rng.normal(0, 20, a.shape)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
    b[::7, 2] = b[::7, 0]  # some zero-width boxes
    size = _cell_size(np.concatenate([a, b]))
    spans_a, spans_b = _cell_spans(a, size), _cell_spans(b, size)
    assert sum(s is None for s in spans_a) < 10
    assert _cell_spans(np.array([[0.0, 0.0, 10 * size, 10 * size]]), size) == [None]
    assert _cell_spans(np.array([[0.0, 0.0, 0.5 * size, 0.5 * size]]), size) == [(0, 0, 0, 0)]
    assert _cell_spans(np.array([[-0.5 * size, 0.0, 1.5 * size, 0.5 * size]]), size) == [(-1, 1, 0, 0)]
    for box_a, box_b, span_a, span_b in zip(a, b, spans_a, spans_b, strict=True):
        wx = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
        wy = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
        if wx > 0 and wy > 0 and span_a is not None and span_b is not None:
            assert max(span_a[0], span_b[0]) <= min(span_a[1], span_b[1])
            assert max(span_a[2], span_b[2]) <= min(span_a[3], span_b[3])


def test_clusters_whose_box_moves_across_grid_cells_equal_the_reference() -> None:
    # Annotator k redraws each 10 px object 4k px to the right: every box joins (IoU >= 0.11 with the mean so
    # far), and the mean walks about a cell (the median box, 10 px) away from where the cluster opened.
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 2000, (60, 2))
    objects = np.concatenate([xy, xy + 10], axis=1)
    crowd = [make_detections(objects + np.array([4 * k, 0, 4 * k, 0])) for k in range(4)]
    merged, votes = merge_annotators(crowd, iou=0.05)
    assert votes.tolist() == [4] * 60
    _assert_same_merge((merged, votes), _merge_reference(crowd, iou=0.05))
