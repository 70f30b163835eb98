"""Noise-graded correction: clean images untouched, each noise type fixed, consensus vetoes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from selection import Detections, LSMConfig, correct_labels, plan_corrections, score_image

BOX = [100, 100, 120, 120]
PARTS = [[5, 5, 40, 45], [55, 5, 95, 45]]


def fix(crowd, pred, consensus=None, config=None):
    score = score_image(crowd, pred, config=config)
    return correct_labels(crowd, pred, score, consensus=consensus, config=config)


def test_clean_image_is_left_byte_equal():
    crowd = make_detections([[30 * i, 0, 30 * i + 20.5, 20] for i in range(6)], classes=[0, 1] * 3)
    pred = make_detections(crowd.xyxy + 0.5, classes=crowd.class_id, scores=np.full(6, 0.9))
    out = fix(crowd, pred)
    assert out.labels.xyxy.tobytes() == crowd.xyxy.tobytes()
    assert out.labels.class_id.tobytes() == crowd.class_id.tobytes()
    assert out.labels.score is None and len(out.flagged) == 0
    nothing = {"moved": 0, "dropped": 0, "split": 0, "added": 0, "flagged": 0, "vetoed": 0}
    assert out.counts == {"kept": 6, **nothing}


def test_empty_everything():
    out = fix(Detections.empty(), Detections.empty(with_score=True))
    assert len(out.labels) == 0 and len(out.flagged) == 0 and out.labels.xyxy.shape == (0, 4)


def test_fixes_localization():
    crowd = make_detections([BOX], classes=[2])
    pred = make_detections([[105, 100, 125, 120]], classes=[2], scores=[0.9])
    out = fix(crowd, pred)
    np.testing.assert_array_equal(out.labels.xyxy, [[105, 100, 125, 120]])
    assert out.labels.class_id.tolist() == [2] and out.counts["moved"] == 1


def test_drops_background():
    crowd = make_detections([BOX, [0, 0, 10, 10]])
    pred = make_detections([BOX], scores=[0.9])
    out = fix(crowd, pred)
    np.testing.assert_array_equal(out.labels.xyxy, [BOX])
    assert out.counts["dropped"] == 1 and out.counts["kept"] == 1


def test_adds_missed():
    crowd = make_detections([BOX])
    pred = make_detections([BOX, [10, 10, 30, 30]], classes=[0, 3], scores=[0.9, 0.8])
    out = fix(crowd, pred)
    np.testing.assert_array_equal(out.labels.xyxy, [BOX, [10, 10, 30, 30]])
    assert out.labels.class_id.tolist() == [0, 3] and out.counts["added"] == 1


def test_splits_box_in_box():
    crowd = make_detections([[0, 0, 100, 50], BOX])
    pred = make_detections([*PARTS, BOX], scores=[0.9, 0.7, 0.9])
    out = fix(crowd, pred)
    np.testing.assert_array_equal(out.labels.xyxy, [BOX, *PARTS])
    assert out.counts["split"] == 1 and out.counts["added"] == 2


def test_box_in_box_with_drawn_parts_only_drops_the_outer_box():
    crowd = make_detections([[0, 0, 100, 50], *PARTS])
    out = fix(crowd, make_detections(PARTS, scores=[0.9, 0.8]))
    np.testing.assert_array_equal(out.labels.xyxy, PARTS)
    assert out.counts["split"] == 1 and out.counts["added"] == 0


def test_uncertain_instances_are_kept_and_flagged():
    crowd = make_detections([BOX])
    pred = make_detections([[105, 100, 125, 120], [10, 10, 30, 30]], scores=[0.45, 0.35])
    out = fix(crowd, pred)
    np.testing.assert_array_equal(out.labels.xyxy, [BOX])  # unchanged, nothing added
    np.testing.assert_array_equal(out.flagged.xyxy, [BOX, [10, 10, 30, 30]])
    np.testing.assert_allclose(out.flagged.score, [0.3, 0.35], atol=1e-6)
    assert out.counts["flagged"] == 2


@pytest.mark.parametrize(
    ("crowd", "pred", "agree", "disagree", "changed"),
    [
        # localization: consensus sides with the prediction / with the crowd box
        ([BOX], [[[105, 100, 125, 120]], [0.9]], [[104, 100, 124, 120]], [[100, 100, 120, 121]], "moved"),
        # background: consensus sees nothing / sees a confident box there
        ([BOX], [[], []], [[300, 300, 310, 310]], [[101, 100, 121, 120]], "dropped"),
        # missed: consensus has a box on it / has nothing there
        ([], [[[10, 10, 30, 30]], [0.9]], [[11, 10, 31, 30]], [[60, 60, 80, 80]], "added"),
        # box-in-box: consensus sees two parts / sees one big box
        ([[0, 0, 100, 50]], [PARTS, [0.9, 0.8]], PARTS, [[1, 0, 100, 50]], "split"),
    ],
)
def test_consensus_confirms_or_vetoes(crowd, pred, agree, disagree, changed):
    crowd_d = make_detections(crowd)
    pred_d = make_detections(pred[0], scores=pred[1])
    plain = fix(crowd_d, pred_d)
    assert plain.counts[changed] >= 1
    yes = fix(crowd_d, pred_d, consensus=make_detections(agree, scores=np.full(len(agree), 0.8)))
    assert yes.counts == plain.counts
    np.testing.assert_array_equal(yes.labels.xyxy, plain.labels.xyxy)
    no = fix(crowd_d, pred_d, consensus=make_detections(disagree, scores=np.full(len(disagree), 0.8)))
    assert no.counts[changed] == 0 and no.counts["vetoed"] == 1 and no.counts["flagged"] == 1
    assert no.labels.xyxy.tobytes() == crowd_d.xyxy.tobytes()


def test_empty_consensus_only_allows_drops():
    crowd = make_detections([BOX, [0, 0, 10, 10]])
    pred = make_detections([[105, 100, 125, 120], [50, 50, 70, 70]], scores=[0.9, 0.9])
    out = fix(crowd, pred, consensus=Detections.empty(with_score=True))
    assert out.counts["dropped"] == 1 and out.counts["moved"] == 0 and out.counts["added"] == 0
    assert out.counts["vetoed"] == 2


def test_score_from_other_image_is_rejected():
    crowd = make_detections([BOX])
    pred = make_detections([BOX], scores=[0.9])
    score = score_image(crowd, pred)
    with pytest.raises(ValueError, match="score"):
        correct_labels(make_detections([BOX, BOX]), pred, score)
    with pytest.raises(ValueError, match="score"):
        correct_labels(crowd, Detections.empty(with_score=True), score)


def _ordered(xyxy: np.ndarray) -> np.ndarray:
    """Jittered boxes with their corners put back in order (x1 <= x2, y1 <= y2)."""
    return np.sort(np.reshape(xyxy, (-1, 2, 2)), axis=1).reshape(-1, 4)


def _random_image(rng: np.random.Generator) -> tuple[Detections, Detections, Detections]:
    """Crowd boxes, predictions and a consensus model's boxes on one random image: each crowd box has a
    prediction on it, a little or far off it, two parts inside it, or none; plus a few stray predictions.
    The consensus sees each prediction, a little off, or misses it."""
    crowd = random_boxes(int(rng.integers(0, 7)), rng, size=400)
    preds = []
    for box in crowd:
        x1, y1, x2, y2 = box
        layout = rng.choice(["same", "shifted", "far", "parts", "none"])
        if layout == "same":
            preds.append(box + rng.normal(0, 0.5, 4))
        elif layout == "shifted":
            preds.append(box + rng.uniform(0.1, 0.3) * (x2 - x1) * rng.choice([-1, 1], 4))
        elif layout == "far":
            preds.append(box + rng.uniform(0.4, 0.7) * (x2 - x1) * rng.choice([-1, 1]))
        elif layout == "parts":  # a crowd box drawn around two objects: the model sees both
            mid = (x1 + x2) / 2
            w = x2 - x1
            preds += [[x1 + 0.03 * w, y1, mid - 0.03 * w, y2], [mid + 0.03 * w, y1, x2 - 0.03 * w, y2]]
    xyxy = _ordered(
        np.concatenate([np.reshape(preds, (-1, 4)), random_boxes(int(rng.integers(0, 3)), rng, size=400)])
    )
    n = len(xyxy)
    pred = make_detections(xyxy, scores=rng.uniform(0.2, 1.0, n))
    seen = rng.uniform(size=n) < 0.7
    consensus = _ordered(xyxy[seen] + rng.normal(0, 1.0, (int(seen.sum()), 4)))
    return make_detections(crowd), pred, make_detections(consensus, scores=np.ones(len(consensus)))


def test_random_images_give_valid_labels(rng):
    cfg = LSMConfig()
    totals = dict.fromkeys(("kept", "moved", "dropped", "split", "added", "flagged", "vetoed"), 0)
    for k in range(200):
        crowd, pred, consensus = _random_image(rng)
        score = score_image(crowd, pred, config=cfg)
        out = correct_labels(crowd, pred, score, consensus=consensus if k % 2 else None, config=cfg)
        c = out.counts
        assert len(out.labels) == c["kept"] + c["moved"] + c["added"]
        assert len(crowd) == c["kept"] + c["moved"] + c["dropped"] + c["split"]
        assert len(out.flagged) == c["flagged"] and out.labels.score is None
        assert c["vetoed"] <= c["flagged"]  # a vetoed fix is left for review
        for key in totals:
            totals[key] += c[key]
    # Every kind of edit happened, so the conservation checks above ran on each of them.
    assert all(totals[key] >= 10 for key in totals), totals


def test_plan_names_one_edit_per_instance():
    # crowd: clean, shifted (moved), far away (dropped), box-in-box (split); preds: two parts, a missed one.
    crowd = make_detections(
        [[200, 200, 220, 220], BOX, [300, 0, 310, 10], [0, 0, 100, 50]], classes=[0, 1, 0, 2]
    )
    pred = make_detections(
        [[200, 200, 220, 220], [105, 100, 125, 120], *PARTS, [150, 150, 170, 170]],
        classes=[0, 1, 2, 2, 3],
        scores=[0.9, 0.9, 0.9, 0.8, 0.9],
    )
    score = score_image(crowd, pred)
    plan = plan_corrections(crowd, pred, score)
    assert len(plan) == len(score.instances) and plan.findings is score.instances
    assert plan.edit.tolist() == ["keep", "move", "drop", "split", "add", "add", "add"]
    np.testing.assert_array_equal(
        plan.xyxy[:4], [[200, 200, 220, 220], [105, 100, 125, 120], *crowd.xyxy[2:]]
    )
    assert plan.class_id.tolist() == [0, 1, 0, 2, 2, 2, 3] and not plan.vetoed.any()
    out = correct_labels(crowd, pred, score)
    np.testing.assert_array_equal(out.labels.xyxy, plan.xyxy[plan.labels_mask()])
    np.testing.assert_array_equal(out.labels.class_id, plan.class_id[plan.labels_mask()])


def test_plan_under_review_and_vetoed():
    crowd = make_detections([BOX, [0, 0, 100, 50]])
    pred = make_detections(
        [[105, 100, 125, 120], *PARTS, [150, 150, 170, 170]], scores=[0.45, 0.9, 0.8, 0.35]
    )
    score = score_image(crowd, pred)
    plan = plan_corrections(crowd, pred, score)
    # An uncertain localization and missed box are reviewed (the prediction keeps its own box).
    assert plan.edit.tolist() == ["review", "split", "add", "add", "review"]
    np.testing.assert_array_equal(plan.xyxy[[0, 4]], [BOX, [150, 150, 170, 170]])
    # A consensus with one big box vetoes the split: the box is reviewed and its parts are left out.
    vetoed = plan_corrections(crowd, pred, score, consensus=make_detections([[1, 0, 100, 50]], scores=[0.8]))
    assert vetoed.edit.tolist() == ["review", "review", "none", "none", "review"]
    assert vetoed.vetoed.tolist() == [False, True, False, False, False]
    assert np.isnan(vetoed.xyxy[2:4]).all()
