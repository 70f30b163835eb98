"""The LSM scorer: each noise type on a constructed image, grades, monotonicity, aggregation, empty inputs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_detections, random_boxes

from selection import (
    Action,
    Aggregation,
    Detections,
    Grade,
    LSMConfig,
    NoiseType,
    aggregate,
    score_image,
    score_images,
)

NOISY_OR = LSMConfig(aggregation="noisy_or")  # discrepancy = severity for one-instance images
BOX = [100, 100, 120, 120]  # a 20 x 20 deposit


def crowd_types(score):
    f = score.instances
    return [NoiseType(t) for t in f.noise_type[f.source == 0]]


def test_clean_match():
    s = score_image(make_detections([BOX]), make_detections([[101, 100, 121, 120]], scores=[0.9]))
    f = s.instances
    # IoU 19/21 >= 0.8: clean, severity 0, kept.
    assert len(f) == 1
    assert f.noise_type.tolist() == ["clean"] and f.grade.tolist() == ["clean"]
    assert f.action.tolist() == ["keep"]
    assert f.severity[0] == 0.0 and s.discrepancy == 0.0 and s.grade is Grade.CLEAN
    np.testing.assert_array_equal(f.proposed_xyxy[0], BOX)


def test_localization_hand_value():
    # Shift by 5 px: IoU = 15*20 / (2*400 - 300) = 0.6; severity = 0.9 * (0.8 - 0.6) / (0.8 - 0.5) = 0.6.
    pred = make_detections([[105, 100, 125, 120]], scores=[0.9])
    s = score_image(make_detections([BOX]), pred, config=NOISY_OR)
    f = s.instances
    assert f.noise_type.tolist() == ["localization"]
    assert f.severity[0] == pytest.approx(0.6)
    assert f.grade.tolist() == ["minor"] and f.action.tolist() == ["auto_fix"]
    np.testing.assert_array_equal(f.proposed_xyxy[0], [105, 100, 125, 120])
    assert s.discrepancy == pytest.approx(0.6)


def test_localization_with_weak_prediction_is_uncertain():
    pred = make_detections([[105, 100, 125, 120]], scores=[0.45])
    f = score_image(make_detections([BOX]), pred).instances
    # severity 0.45 * 2/3 = 0.3 >= clean_severity, but the prediction is not confident.
    assert f.noise_type.tolist() == ["localization"] and f.grade.tolist() == ["uncertain"]
    assert f.action.tolist() == ["review"]


def test_badly_placed_box_gets_second_chance_match():
    # IoU 1/3 < 0.5 but >= loc_min_iou 0.3 with a confident prediction: localization, saturated severity.
    pred = make_detections([[110, 100, 130, 120]], scores=[0.8])
    s = score_image(make_detections([BOX]), pred)
    f = s.instances
    assert f.noise_type.tolist() == ["localization"] and f.source.tolist() == [0]
    assert f.severity[0] == pytest.approx(0.8)


def test_box_displaced_to_iou_quarter_is_localization_not_background_plus_missed():
    # IoU 0.25 with a confident prediction nothing else explains: one badly placed box (moved), not a box on
    # background plus a missed object (deleted and added); at the old loc_min_iou 0.3 it was the latter.
    crowd = make_detections([[100, 100, 120, 120]])
    pred = make_detections([[112, 100, 132, 120]], scores=[0.8])  # overlap 8x20 = 160, union 640
    f = score_image(crowd, pred).instances
    assert f.noise_type.tolist() == ["localization"] and f.source.tolist() == [0]
    np.testing.assert_allclose(f.proposed_xyxy[0], [112, 100, 132, 120])
    old = score_image(crowd, pred, config=LSMConfig(loc_min_iou=0.3)).instances
    assert sorted(old.noise_type.tolist()) == ["background", "missed"]
    # Below the threshold, still two findings.
    far = score_image(crowd, make_detections([[115, 100, 135, 120]], scores=[0.8])).instances  # IoU 1/7
    assert sorted(far.noise_type.tolist()) == ["background", "missed"]


def test_background_box_with_nothing_there():
    s = score_image(make_detections([BOX]), Detections.empty(with_score=True), config=NOISY_OR)
    f = s.instances
    assert f.noise_type.tolist() == ["background"]
    assert f.severity[0] == 1.0 and f.grade.tolist() == ["major"] and f.action.tolist() == ["auto_fix"]
    assert np.isnan(f.proposed_xyxy[0]).all()
    assert s.discrepancy == 1.0 and s.grade is Grade.MAJOR


def test_background_with_weak_partial_overlap_is_uncertain():
    # IoU 1/3 with a 0.2 prediction (not confident: no second-chance match) -> support 0.2, severity 0.8.
    pred = make_detections([[110, 100, 130, 120]], scores=[0.2])
    f = score_image(make_detections([BOX]), pred).instances
    crowd = f.source == 0
    assert f.noise_type[crowd].tolist() == ["background"]
    assert f.severity[crowd][0] == pytest.approx(0.8)
    assert f.grade[crowd].tolist() == ["uncertain"]
    # The weak prediction itself is reported as a (clean-graded) missed candidate.
    assert f.noise_type[~crowd].tolist() == ["missed"] and f.grade[~crowd].tolist() == ["clean"]


def test_duplicate_crowd_box_is_background():
    pred = make_detections([BOX], scores=[0.9])
    f = score_image(make_detections([BOX, [101, 101, 121, 121]]), pred).instances
    assert f.noise_type.tolist() == ["clean", "background"]
    assert f.grade.tolist() == ["clean", "major"]


def test_missed_object():
    pred = make_detections([[10, 10, 30, 30]], scores=[0.85])
    s = score_image(Detections.empty(), pred)
    f = s.instances
    assert f.source.tolist() == [1] and f.index.tolist() == [0]
    assert f.noise_type.tolist() == ["missed"] and f.severity[0] == pytest.approx(0.85)
    assert f.grade.tolist() == ["major"] and f.action.tolist() == ["auto_fix"]
    np.testing.assert_array_equal(f.proposed_xyxy[0], [10, 10, 30, 30])


@pytest.mark.parametrize(
    ("score", "grade"), [(0.05, None), (0.2, "clean"), (0.35, "uncertain"), (0.5, "major"), (0.95, "major")]
)
def test_missed_grade_by_score(score, grade):
    f = score_image(Detections.empty(), make_detections([[10, 10, 30, 30]], scores=[score])).instances
    if grade is None:  # below the score floor: ignored
        assert len(f) == 0
    else:
        assert f.grade.tolist() == [grade]


def test_box_in_box():
    crowd = make_detections([[0, 0, 100, 50]])
    parts = [[5, 5, 40, 45], [55, 5, 95, 45]]
    s = score_image(crowd, make_detections(parts, scores=[0.9, 0.6]), config=NOISY_OR)
    f = s.instances
    assert f.source.tolist() == [0, 1, 1]
    assert f.noise_type.tolist() == ["box_in_box"] * 3
    assert f.parent.tolist() == [-1, 0, 0]
    assert f.severity[0] == pytest.approx(1 - 0.1 * 0.4)  # noisy-or of the part scores
    assert f.confidence[0] == pytest.approx(0.6)  # the second-best part
    assert f.grade.tolist() == ["major"] * 3
    assert np.isnan(f.proposed_xyxy[0]).all()
    np.testing.assert_array_equal(f.proposed_xyxy[1:], parts)
    # Parts are consequences: not counted and not in the discrepancy.
    assert s.instances.counts()[NoiseType.BOX_IN_BOX] == 1
    assert s.instances.counts()[NoiseType.MISSED] == 0
    assert s.discrepancy == pytest.approx(f.severity[0])


def test_box_in_box_with_inner_boxes_also_drawn():
    parts = [[5, 5, 40, 45], [55, 5, 95, 45]]
    crowd = make_detections([[0, 0, 100, 50], *parts])
    f = score_image(crowd, make_detections(parts, scores=[0.9, 0.8])).instances
    # The inner boxes are clean matches; the enclosing box is box-in-box with nothing left to add.
    assert f.noise_type.tolist() == ["box_in_box", "clean", "clean"]
    assert f.source.tolist() == [0, 0, 0]


def test_one_confident_part_is_not_box_in_box():
    crowd = make_detections([[0, 0, 100, 50]])
    f = score_image(crowd, make_detections([[5, 5, 40, 45], [55, 5, 95, 45]], scores=[0.9, 0.3])).instances
    assert NoiseType.BOX_IN_BOX.value not in f.noise_type.tolist()


def test_class_aware_option():
    crowd = make_detections([BOX], classes=[1])
    pred = make_detections([BOX], classes=[0], scores=[0.9])
    assert crowd_types(score_image(crowd, pred)) == [NoiseType.CLEAN]
    s = score_image(crowd, pred, config=LSMConfig(class_aware=True))
    assert crowd_types(s) == [NoiseType.BACKGROUND]
    assert s.instances.counts()[NoiseType.MISSED] == 1


def test_one_object_predicted_for_two_classes_is_one_object():
    # A multi-class detector's per-class NMS keeps one object as a box per class; class-agnostic, the less
    # confident repeat is no second (missed) object.
    crowd = make_detections([BOX], classes=[0])
    near = [BOX[0] + 1, BOX[1], BOX[2] + 1, BOX[3]]  # IoU 0.9 with BOX
    pred = make_detections([BOX, near, [10, 10, 30, 30]], classes=[1, 0, 0], scores=[0.6, 0.9, 0.8])
    s = score_image(crowd, pred)
    assert crowd_types(s) == [NoiseType.CLEAN]
    model = s.instances.source == 1
    assert s.instances.noise_type[model].tolist() == ["missed"] and s.instances.index[model].tolist() == [2]
    # Class-aware, the repeat is another class's object: the crowd box matches its own class only.
    aware = score_image(crowd, pred, config=LSMConfig(class_aware=True))
    assert aware.instances.index[aware.instances.source == 1].tolist() == [0, 2]
    # Below duplicate_iou the two stay two objects: the crowd box takes the exact one, and the other, a second
    # box on that object, is not reported either.
    loose = score_image(crowd, pred, config=LSMConfig(duplicate_iou=0.95))
    assert loose.instances.index[loose.instances.source == 1].tolist() == [2]
    # Where the crowd drew nothing, the repeat is no second missed object either; below duplicate_iou the two
    # stay two objects, both missed.
    nothing = make_detections([])
    assert score_image(nothing, pred).instances.index.tolist() == [1, 2]
    loose = score_image(nothing, pred, config=LSMConfig(duplicate_iou=0.95))
    assert loose.instances.index.tolist() == [0, 1, 2]


def _usable_dense(xyxy, score, class_id, cfg):
    """The K x K greedy rule ``usable_predictions`` replaced by a sweep over left edges (the reference)."""
    from selection.boxes import pair_geometry

    usable = np.ones(len(xyxy), bool) if score is None else score >= cfg.score_floor
    usable &= (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    idx = np.flatnonzero(usable)
    if cfg.class_aware or idx.size < 2:
        return usable
    order = idx if score is None else idx[np.argsort(-score[idx], kind="stable")]
    iou, _ = pair_geometry(xyxy[order], xyxy[order])
    duplicate = (iou >= cfg.duplicate_iou) & (class_id[order][:, None] != class_id[order][None, :])
    dropped = np.zeros(order.size, bool)
    for i in range(order.size):
        if not dropped[i]:
            dropped[i + 1 :] |= duplicate[i, i + 1 :]
    usable[order[dropped]] = False
    return usable


def test_usable_predictions_is_the_dense_greedy_rule(rng):
    from selection.rules import usable_predictions

    for _ in range(1500):
        k = int(rng.integers(0, 40))
        on_grid = bool(rng.integers(0, 2))  # integer boxes: exact ties of edges, IoUs and scores
        if on_grid:
            xy, wh = rng.integers(0, 30, (k, 2)), rng.integers(0, 12, (k, 2))
            score = rng.choice([0.05, 0.3, 0.5, 0.9, 0.9], k).astype(np.float32)
        else:
            xy, wh = rng.uniform(0, 50, (k, 2)), rng.uniform(0, 15, (k, 2))
            score = rng.random(k).astype(np.float32)
        xyxy = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        if k > 3:
            xyxy[1], xyxy[3] = xyxy[0], xyxy[2]  # exact repeats
        score = None if rng.random() < 0.2 else score
        class_id = rng.integers(0, int(rng.integers(1, 4)), k)
        cfg = LSMConfig(duplicate_iou=float(rng.choice([0.25, 0.5, 0.7, 1.0])))
        np.testing.assert_array_equal(
            usable_predictions(xyxy, score, class_id, cfg), _usable_dense(xyxy, score, class_id, cfg)
        )


def test_a_second_box_on_a_labelled_object_is_not_missed():
    # Two boxes of one class on the crowd's one box (IoU 0.9, or 0.6: a detector's NMS at 0.7 keeps both):
    # the second is the detector's duplicate, not an object the crowd missed; a correction adding it would
    # label the object twice. Far enough off the crowd box (IoU < 0.5) it is missed again.
    crowd = make_detections([BOX])
    w = BOX[2] - BOX[0]
    for shift, reported in ((1, []), (round(w / 4), []), (round(w / 2), [1])):
        near = [BOX[0] + shift, BOX[1], BOX[2] + shift, BOX[3]]
        s = score_image(crowd, make_detections([BOX, near], scores=[0.9, 0.6]))
        assert crowd_types(s) == [NoiseType.CLEAN]
        assert s.instances.index[s.instances.source == 1].tolist() == reported, shift
        batch = score_images([crowd], [make_detections([BOX, near], scores=[0.9, 0.6])])[0]
        assert batch.instances.index[batch.instances.source == 1].tolist() == reported, shift


def test_zero_area_prediction_is_ignored():
    crowd = make_detections([BOX])
    flat = [50, 50, 50, 70]  # zero width: nothing a correction could draw
    pred = make_detections([flat, [50, 50, 50, 50], BOX, [10, 10, 30, 30]], scores=[0.95, 0.9, 0.9, 0.8])
    s = score_image(crowd, pred)
    assert crowd_types(s) == [NoiseType.CLEAN] and s.n_pred == 4
    assert s.instances.index[s.instances.source == 1].tolist() == [3]  # indices into the given predictions
    assert score_image(make_detections([]), make_detections([flat], scores=[0.9])).discrepancy == 0.0


@pytest.mark.parametrize(("n_crowd", "n_pred"), [(0, 0), (0, 4), (3, 0), (3, 4)])
def test_shapes_including_empty(rng, n_crowd, n_pred):
    crowd = make_detections(random_boxes(n_crowd, rng))
    pred = make_detections(random_boxes(n_pred, rng), scores=rng.uniform(0.2, 1, n_pred))
    s = score_image(crowd, pred)
    f = s.instances
    n = len(f)
    assert n >= n_crowd
    for arr in (f.source, f.index, f.noise_type, f.severity, f.confidence, f.grade, f.action, f.parent):
        assert arr.shape == (n,)
    assert f.proposed_xyxy.shape == (n, 4) and f.proposed_xyxy.dtype == np.float32
    assert f.source[:n_crowd].tolist() == [0] * n_crowd and f.index[:n_crowd].tolist() == list(range(n_crowd))
    assert np.all((f.severity >= 0) & (f.severity <= 1)) and 0.0 <= s.discrepancy <= 1.0
    assert sum(f.counts().values()) == int((f.parent < 0).sum())
    assert set(f.counts()) == set(NoiseType) and set(f.grade_counts()) == set(Grade)
    if n_crowd == n_pred == 0:
        assert n == 0 and s.discrepancy == 0.0 and s.grade is Grade.CLEAN


def test_actions_follow_grades(rng):
    expected = {"clean": "keep", "minor": "auto_fix", "major": "auto_fix", "uncertain": "review"}
    for _ in range(20):
        pred_boxes = random_boxes(8, rng)
        f = score_image(
            make_detections(random_boxes(8, rng)), make_detections(pred_boxes, scores=rng.uniform(0, 1, 8))
        ).instances
        assert [expected[g] for g in f.grade] == f.action.tolist()
        assert set(f.action.tolist()) <= {a.value for a in Action}


@pytest.mark.parametrize("config", [LSMConfig(), NOISY_OR], ids=["sum", "noisy_or"])
@pytest.mark.parametrize("score", [0.6, 0.9, 1.0])
def test_monotone_in_shift(score, config):
    pred = make_detections([BOX], scores=[score])
    previous = -1.0
    for dx in np.linspace(0, 30, 61):
        crowd = make_detections([[100 + dx, 100, 120 + dx, 120]])
        d = score_image(crowd, pred, config=config).discrepancy
        assert d >= previous - 1e-12, f"shift {dx}: {d} < {previous}"
        previous = d
    # Shifted off entirely: a background box (severity 1) and a missed deposit (severity = its score).
    end = aggregate(np.array([1.0, score]), config.aggregation, sum_scale=config.sum_scale)
    assert previous == pytest.approx(end)
    assert score_image(make_detections([BOX]), pred, config=config).discrepancy == 0.0


@pytest.mark.parametrize(("config", "least"), [(LSMConfig(), 0.4), (NOISY_OR, 0.8)], ids=["sum", "noisy_or"])
@pytest.mark.parametrize("grow", [True, False])
def test_monotone_in_scale(grow, config, least):
    pred = make_detections([BOX], scores=[0.9])
    previous = -1.0
    for factor in np.linspace(1, 4, 40):
        half = 10 * (factor if grow else 1 / factor)
        crowd = make_detections([[110 - half, 110 - half, 110 + half, 110 + half]])
        d = score_image(crowd, pred, config=config).discrepancy
        assert d >= previous - 1e-12, f"factor {factor}: {d} < {previous}"
        previous = d
    assert previous > least


def test_aggregations_hand_values():
    s = np.array([0.5, 0.5])
    assert aggregate(s, "noisy_or") == pytest.approx(0.75)
    assert aggregate(s, Aggregation.MEAN) == pytest.approx(0.5)
    assert aggregate(s, Aggregation.MAX) == pytest.approx(0.5)
    assert aggregate(s, Aggregation.SUM, sum_scale=1.0) == pytest.approx(1 - np.exp(-1.0))
    # The defaults are the scorer's: re-aggregating its severities gives its discrepancy (was sum_scale 1.0).
    assert aggregate(s, Aggregation.SUM) == pytest.approx(1 - np.exp(-1.0 / LSMConfig().sum_scale))
    assert aggregate(np.array([0.2, 0.8]), Aggregation.SOFTMAX, temperature=0.1) == pytest.approx(
        (0.2 * np.exp(-6) + 0.8) / (np.exp(-6) + 1)
    )
    for agg in Aggregation:
        assert aggregate(np.zeros(0), agg) == 0.0


def test_config_aggregation_changes_discrepancy():
    crowd = make_detections([BOX, [0, 0, 10, 10]])
    pred = make_detections([[105, 100, 125, 120]], scores=[0.9])
    noisy_or = score_image(crowd, pred, config=LSMConfig(aggregation="noisy_or")).discrepancy
    mean = score_image(crowd, pred, config=LSMConfig(aggregation="mean")).discrepancy
    summed = score_image(crowd, pred).discrepancy  # the default: SUM with sum_scale 3
    assert noisy_or == pytest.approx(1 - 0.4 * 0.0) and mean == pytest.approx((0.6 + 1.0) / 2)
    assert summed == pytest.approx(1 - np.exp(-(0.6 + 1.0) / 3))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"match_iou": 1.5}, "match_iou"),
        ({"high_iou": 0.4}, "loc_min_iou, match_iou, high_iou"),
        ({"loc_min_iou": 0.6}, "loc_min_iou, match_iou, high_iou"),
        ({"score_floor": 0.7}, "score_floor"),
        ({"temperature": 0.0}, "temperature"),
        ({"duplicate_iou": 0.0}, "duplicate_iou"),
        ({"aggregation": "median"}, "aggregation"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LSMConfig(**kwargs)


def test_score_images_matches_score_image(rng):
    crowds, preds = [], []
    for _ in range(25):
        crowds.append(make_detections(random_boxes(int(rng.integers(0, 6)), rng)))
        n = int(rng.integers(0, 6))
        preds.append(make_detections(random_boxes(n, rng), scores=rng.uniform(0, 1, n)))
    batch = score_images(crowds, preds)
    for c, p, b in zip(crowds, preds, batch, strict=True):
        one = score_image(c, p)
        assert one.discrepancy == b.discrepancy and one.grade == b.grade
        np.testing.assert_array_equal(one.instances.noise_type, b.instances.noise_type)


def test_score_images_rejects_bad_input():
    with pytest.raises(ValueError, match="preds"):
        score_images([Detections.empty()], [])
    with pytest.raises(TypeError, match=r"crowds\[0\]"):
        score_images([np.zeros((1, 4))], [Detections.empty()])  # type: ignore[list-item]


def test_a_second_box_on_a_drawn_part_is_no_part_to_add():
    # A crowd box around a part the crowd also drew, and the detector's two boxes on that part (IoU 0.6):
    # whatever the enclosing box is graded, the second box is not proposed as a part to add.
    crowd = make_detections([[0, 0, 100, 100], [10, 10, 30, 30]])
    pred = make_detections([[10, 10, 30, 30], [15, 10, 35, 30]], scores=[0.9, 0.8])
    s = score_image(crowd, pred)
    assert s.instances.index[s.instances.source == 1].tolist() == []
    assert score_images([crowd], [pred])[0].instances.index.tolist() == s.instances.index.tolist()
