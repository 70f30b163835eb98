"""Batched LSM scoring: score_batch / score_images give exactly score_image's results, image by image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_detections, random_boxes

import selection.batch
from selection import (
    Aggregation,
    BatchScores,
    Detections,
    Grade,
    ImageScore,
    LSMConfig,
    score_batch,
    score_image,
    score_images,
)

FIELDS = [f.name for f in dataclasses.fields(selection.InstanceFindings)]


def assert_same(expected: ImageScore, got: ImageScore, where: str) -> None:
    """Bit-for-bit equality of two image scores, dtypes and shapes included."""
    assert got.discrepancy == expected.discrepancy, where
    assert type(got.discrepancy) is float, where
    assert got.grade is expected.grade, where
    assert (got.n_crowd, got.n_pred) == (expected.n_crowd, expected.n_pred), where
    for name in FIELDS:
        a, b = getattr(expected.instances, name), getattr(got.instances, name)
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{where}: {name} {a.dtype}{a.shape} {b.dtype}{b.shape}"
        )
        np.testing.assert_array_equal(b, a, err_msg=f"{where}: {name}")


def jitter(boxes: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    out = boxes + rng.normal(0, sigma, boxes.shape)
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2])
    return out.astype(np.float32)


def random_image(rng: np.random.Generator, kind: str, n_classes: int) -> tuple[Detections, Detections]:
    """One crowd/prediction pair of the given kind; scores spread over the floor and confidence thresholds."""
    m = int(rng.integers(0, 12))
    crowd = random_boxes(m, rng)
    if kind == "empty":
        crowd, pred = crowd[:0], crowd[:0]
    elif kind == "crowd_only":
        pred = crowd[:0]
    elif kind == "pred_only":
        crowd, pred = crowd[:0], random_boxes(int(rng.integers(1, 10)), rng)
    elif kind == "cluster":  # near-copies of a few boxes: many candidates per box, Hungarian needed
        centres = random_boxes(int(rng.integers(1, 3)), rng)
        crowd = jitter(np.repeat(centres, int(rng.integers(2, 5)), axis=0), rng, 2.0)
        pred = jitter(np.repeat(centres, int(rng.integers(1, 5)), axis=0), rng, 2.0)
    elif kind == "bib":  # one big crowd box around two or three confident parts, some also drawn
        xy = rng.uniform(0, 100, 2)
        big = np.array([[*xy, *(xy + 60)]], np.float32)
        parts = np.array([[xy[0] + 5 + 20 * i, xy[1] + 5, xy[0] + 20 + 20 * i, xy[1] + 55] for i in range(3)])
        parts = parts[: int(rng.integers(2, 4))].astype(np.float32)
        drawn = parts[rng.random(len(parts)) < 0.4]
        crowd = np.concatenate([big, drawn, crowd[:3]])
        pred = np.concatenate([jitter(parts, rng, 0.5), random_boxes(int(rng.integers(0, 3)), rng)])
    elif kind == "duplicates":  # each object predicted twice (another class, when there are several), empties
        pred = jitter(crowd, rng, 1.0)
        twice = pred[rng.random(m) < 0.6]
        flat = random_boxes(int(rng.integers(0, 3)), rng)
        flat[:, 2] = flat[:, 0]  # zero width: no object
        pred = np.concatenate([pred, jitter(twice, rng, 0.5), flat])
    else:  # "mixed": jittered, shifted, dropped and extra predictions
        pred = jitter(crowd, rng, float(rng.choice([0.5, 3.0, 8.0])))
        shift = rng.random(m) < 0.3
        pred[shift] += rng.uniform(-15, 15, (int(shift.sum()), 1)).astype(np.float32)
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2])
        pred = np.concatenate([pred[rng.random(m) >= 0.2], random_boxes(int(rng.integers(0, 4)), rng)])
    k = len(pred)
    scores = rng.choice([0.05, 0.1, 0.3, 0.5, 0.9, 1.0], k) if rng.random() < 0.3 else rng.uniform(0, 1, k)
    scored = kind == "bib" or rng.random() < 0.9  # some prediction sets are unscored (count as 1.0)
    return (
        make_detections(crowd, classes=rng.integers(0, n_classes, len(crowd))),
        make_detections(pred, classes=rng.integers(0, n_classes, k), scores=scores if scored else None),
    )


KINDS = ["empty", "crowd_only", "pred_only", "cluster", "bib", "duplicates", "mixed", "mixed", "mixed"]


def random_images(rng: np.random.Generator, n: int, n_classes: int = 1) -> tuple[list, list]:
    pairs = [random_image(rng, KINDS[int(rng.integers(len(KINDS)))], n_classes) for _ in range(n)]
    return [c for c, _ in pairs], [p for _, p in pairs]


CONFIGS = [
    LSMConfig(),
    LSMConfig(class_aware=True),
    LSMConfig(aggregation=Aggregation.MAX),
    LSMConfig(aggregation=Aggregation.SOFTMAX, temperature=0.3),
    LSMConfig(aggregation=Aggregation.SUM, class_aware=True),
    LSMConfig(aggregation=Aggregation.MEAN),
    LSMConfig(match_iou=0.3, loc_min_iou=0.1, high_iou=0.9, score_floor=0.0, bib_ioa=0.0, clean_severity=0.0),
    LSMConfig(score_floor=0.5, confident_score=0.5, background_confidence=0.5, clean_severity=1.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.aggregation}-{c.class_aware}-{c.match_iou}")
@pytest.mark.parametrize("n_classes", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_equals_per_image(config, seed, n_classes):
    rng = np.random.default_rng(seed)
    crowds, preds = random_images(rng, 300, n_classes=n_classes)
    batch = score_batch(crowds, preds, config=config)
    listed = score_images(crowds, preds, config=config)
    assert len(batch) == len(listed) == 300
    for i, (c, p) in enumerate(zip(crowds, preds, strict=True)):
        expected = score_image(c, p, config=config)
        assert_same(expected, listed[i], f"score_images[{i}]")
        assert_same(expected, batch.image(i), f"image({i})")
        assert batch.discrepancy[i] == expected.discrepancy and batch.grade[i] == expected.grade.value
    # Both paths were taken: trivial matchings vectorised, conflicts and box-in-box per image.
    assert 0 < batch.fallback.sum() < len(batch)
    np.testing.assert_array_equal(np.diff(batch.offsets), [len(s.instances) for s in listed])


def test_many_small_blocks(monkeypatch):
    # Blocks of a few images each: sorting, block cutting and reassembly in input order.
    rng = np.random.default_rng(7)
    crowds, preds = random_images(rng, 120)
    monkeypatch.setattr(selection.batch, "_BLOCK_PAIRS", 40)
    batch = score_batch(crowds, preds)
    for i, (c, p) in enumerate(zip(crowds, preds, strict=True)):
        assert_same(score_image(c, p), batch.image(i), f"image({i})")


def test_conflict_and_bib_images_fall_back():
    box = [100, 100, 120, 120]
    trivial = (make_detections([box]), make_detections([[101, 100, 121, 120]], scores=[0.9]))
    # Two predictions both at IoU >= 0.5 with one crowd box: the assignment needs a choice.
    conflict = (
        make_detections([box]),
        make_detections([[101, 100, 121, 120], [100, 101, 120, 121]], scores=[0.9, 0.8]),
    )
    bib = (
        make_detections([[0, 0, 60, 30]]),
        make_detections([[2, 2, 28, 28], [32, 2, 58, 28]], scores=[0.9, 0.8]),
    )
    crowds, preds = zip(trivial, conflict, bib, strict=True)
    batch = score_batch(list(crowds), list(preds))
    assert batch.fallback.tolist() == [False, True, True]
    assert batch.instances.noise_type[batch.offsets[2] : batch.offsets[3]].tolist() == ["box_in_box"] * 3
    for i in range(3):
        assert_same(score_image(crowds[i], preds[i]), batch.image(i), f"image({i})")


def test_hand_values_through_the_batch():
    # Shift by 5 px: localization 0.6 (see test_selection_lsm); a far crowd box is background (severity 1).
    crowd = make_detections([[100, 100, 120, 120], [300, 300, 320, 320]])
    pred = make_detections([[105, 100, 125, 120], [10, 10, 30, 30]], scores=[0.9, 0.7])
    batch = score_batch(
        [crowd, Detections.empty()],
        [pred, Detections.empty(with_score=True)],
        config=LSMConfig(aggregation="noisy_or"),
    )
    f = batch.instances
    assert batch.offsets.tolist() == [0, 3, 3]
    assert f.noise_type.tolist() == ["localization", "background", "missed"]
    np.testing.assert_allclose(f.severity, [0.6, 1.0, 0.7])
    assert f.index.tolist() == [0, 1, 1] and f.source.tolist() == [0, 0, 1]
    assert batch.discrepancy.tolist() == [1.0, 0.0]
    assert batch.grade.tolist() == ["major", "clean"]
    assert batch.image(-1).grade is Grade.CLEAN and len(batch.image(1).instances) == 0


def test_a_score_at_a_threshold_float32_rounds_down_is_below_the_floor_as_it_is_below_confident():
    """Scores are float32; thresholds are compared in float64 everywhere. float32(0.7) is 0.69999999, so a
    prediction scored "0.7" with the floor and ``confident_score`` both at 0.7 is below both: not used at
    all. (The floor used to be compared in float32, so it passed the floor, yet was not confident: an
    uncertain missed finding the thresholds said could not exist.) One just above is used and confident,
    in the per-image and the batched drivers alike."""
    cfg = LSMConfig(score_floor=0.7, confident_score=0.7, background_confidence=0.7)
    at = np.float32(0.7)
    assert float(at) < 0.7  # the case: float32 rounds this threshold down
    above = np.nextafter(at, np.float32(1.0))
    crowd = Detections.empty()
    for s, named in ((at, []), (above, ["missed"])):
        pred = make_detections([[10, 10, 30, 30]], scores=[s])
        one = score_image(crowd, pred, config=cfg)
        assert one.instances.noise_type.tolist() == named
        assert one.instances.grade.tolist() == (["major"] if named else [])
        batch = score_batch([crowd, crowd], [pred, pred], config=cfg)
        for i in range(2):
            assert_same(one, batch.image(i), f"score {float(s)!r}, image {i}")


def test_empty_batch():
    batch = score_batch([], [])
    assert isinstance(batch, BatchScores) and len(batch) == 0 and batch.images() == []
    assert batch.offsets.tolist() == [0] and score_images([], []) == []


@pytest.mark.parametrize(
    ("crowds", "preds", "error", "match"),
    [
        ([Detections.empty()], [], ValueError, "preds"),
        ([np.zeros((1, 4))], [Detections.empty()], TypeError, r"crowds\[0\]"),
        ([Detections.empty()], [None], TypeError, r"preds\[0\]"),
    ],
)
def test_bad_input(crowds, preds, error, match):
    with pytest.raises(error, match=match):
        score_batch(crowds, preds)


def test_image_index_out_of_range():
    batch = score_batch([Detections.empty()], [Detections.empty()])
    with pytest.raises(IndexError, match="i: expected"):
        batch.image(1)
