"""Leakage: the expert boxes of an image must not matter until that image is bought.

The loop runs twice on the same data with a fingerprint detector (``tests/bench_fakes.py``: every training
input changes every later prediction); the second time the expert boxes of images not yet bought are poisoned
(moved far away, plus a phantom box). Selection, grading, calibration, correction and every training's inputs
must be the same until those images are bought, and must change once they are (so the test can fail).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from bench_fakes import FakeWorkbench

import synth
from bench.loop import LoopConfig, LoopResult, corrected_labels, run_loop
from bench.simulate import crossfit_consensus
from bench.workbench import TRAIN_SPECS
from selection import LSMConfig, Strategy
from selection.detections import Detections

LSM = LSMConfig()


@pytest.fixture(scope="module")
def records():
    config = dataclasses.replace(synth.get_preset("tiny"), n_train=48, n_val=4, n_test=4)
    return synth.generate(config, 5, render=False).images


def _poison(records, ids: set[str]) -> list:
    out = []
    for r in records:
        if r.id in ids:
            moved = np.clip(r.expert.xyxy[:, [1, 0, 3, 2]] * 0.5 + 40.0, 0, min(r.width, r.height))
            phantom = np.array([[3, 3, 30, 30]], np.float32)
            xyxy = np.concatenate([moved, phantom]).astype(np.float32)
            r = dataclasses.replace(r, expert=Detections(xyxy, np.zeros(len(xyxy), np.int64)))
        out.append(r)
    return out


def _run(
    records, tmp_path, strategy: Strategy, purchase: str = "discrepancy", calibrate_on: str = "bought"
) -> tuple[FakeWorkbench, LoopResult]:
    bench = FakeWorkbench(records, tmp_path, TRAIN_SPECS["tiny"], seed=3)
    cfg = LoopConfig(
        strategy=strategy,
        budget=0.5,
        seed_fraction=0.1,
        rounds=3,
        purchase=purchase,
        calibrate_on=calibrate_on,
    )
    loop = run_loop(bench, cfg, np.random.default_rng(3), lsm=LSM, name="loop")
    return bench, loop


def _same_call(a: dict, b: dict) -> bool:
    if a["name"] != b["name"] or str(a["init"]) != str(b["init"]) or a["repeats"] != b["repeats"]:
        return False
    if sorted(a["labels"]) != sorted(b["labels"]):
        return False
    return all(np.array_equal(a["labels"][i].xyxy, b["labels"][i].xyxy) for i in a["labels"])


def _same_findings(a: LoopResult, b: LoopResult) -> None:
    assert a.remaining_ids == b.remaining_ids
    for i in a.remaining_ids:
        np.testing.assert_array_equal(a.preds[i].xyxy, b.preds[i].xyxy)
        fa, fb = a.scores[i].instances, b.scores[i].instances
        for field in ("noise_type", "severity", "grade", "action", "proposed_xyxy"):
            np.testing.assert_array_equal(getattr(fa, field), getattr(fb, field))


@pytest.mark.parametrize(
    ("strategy", "purchase", "calibrate_on"),
    [
        (Strategy.DISCREPANCY, "discrepancy", "bought"),
        (Strategy.DISCREPANCY, "missed", "bought"),
        (Strategy.DISCREPANCY, "residual", "bought"),
        (Strategy.DISCREPANCY, "density", "bought"),
        (Strategy.DISCREPANCY, "discrepancy", "random"),
        (Strategy.RANDOM, "discrepancy", "bought"),
    ],
)
def test_never_bought_expert_boxes_change_nothing_but_the_reviews(
    records, tmp_path, strategy, purchase, calibrate_on
):
    clean_bench, clean = _run(records, tmp_path / "a", strategy, purchase, calibrate_on)
    rest = set(clean.remaining_ids)
    assert rest
    bench, poisoned = _run(_poison(records, rest), tmp_path / "b", strategy, purchase, calibrate_on)

    assert poisoned.expert_ids == clean.expert_ids  # selection
    assert len(bench.calls) == len(clean_bench.calls)
    assert all(
        _same_call(a, b) for a, b in zip(clean_bench.calls, bench.calls, strict=True)
    )  # cleaning models
    _same_findings(clean, poisoned)  # grading
    assert poisoned.calibration.to_dict() == clean.calibration.to_dict()  # calibration
    np.testing.assert_array_equal(poisoned.examples.target, clean.examples.target)

    # Correction (automatic part) and the cross-fitted consensus models' inputs.
    for cal in (None, clean.calibration):
        a, counts_a = corrected_labels(clean_bench, clean, lsm=LSM, calibration=cal, reviews=False)
        b, counts_b = corrected_labels(bench, poisoned, lsm=LSM, calibration=cal, reviews=False)
        assert counts_a == counts_b
        assert all(np.array_equal(a[i].xyxy, b[i].xyxy) for i in a)
    n_calls = len(bench.calls)
    crossfit_consensus(clean_bench, clean, a)
    crossfit_consensus(bench, poisoned, b)
    assert all(
        _same_call(x, y) for x, y in zip(clean_bench.calls[n_calls:], bench.calls[n_calls:], strict=True)
    )

    # Reviews read the expert boxes, and only of the instances sent to review (they are charged).
    a, counts_a = corrected_labels(clean_bench, clean, lsm=LSM, reviews=True)
    b, counts_b = corrected_labels(bench, poisoned, lsm=LSM, reviews=True)
    assert counts_a["reviewed"] == counts_b["reviewed"] > 0
    unreviewed = [i for i in clean.remaining_ids if not (clean.scores[i].instances.action == "review").any()]
    assert unreviewed
    assert all(np.array_equal(a[i].xyxy, b[i].xyxy) for i in unreviewed)
    assert any(not np.array_equal(a[i].xyxy, b[i].xyxy) for i in rest)  # the reviews did read them


def test_images_bought_in_the_last_round_matter_from_that_round_on(records, tmp_path):
    clean_bench, clean = _run(records, tmp_path / "a", Strategy.DISCREPANCY)
    before_last = clean.rounds[-2].expert_images
    last_round = set(clean.expert_ids[before_last:])
    assert last_round
    bench, poisoned = _run(
        _poison(records, last_round | set(clean.remaining_ids)), tmp_path / "b", Strategy.DISCREPANCY
    )

    # Picked by models that had not seen them: the same images are bought.
    assert poisoned.expert_ids == clean.expert_ids
    # Every training before the last round is unchanged; the last one sees the poisoned boxes.
    names = [c["name"] for c in clean_bench.calls]
    last = names.index(f"loop-r{len(clean.rounds) - 1}")
    assert all(_same_call(a, b) for a, b in zip(clean_bench.calls[:last], bench.calls[:last], strict=True))
    assert not _same_call(clean_bench.calls[last], bench.calls[last])
    # The calibration examples of earlier rounds are unchanged; the last round's now carry the poison.
    n_before = clean.rounds[-2].labelled_findings
    np.testing.assert_array_equal(poisoned.examples.target[:n_before], clean.examples.target[:n_before])
    np.testing.assert_array_equal(poisoned.examples.features, clean.examples.features)
    assert not np.array_equal(poisoned.examples.target, clean.examples.target)


def test_matched_cleaning_steps_repeat_the_bought_images_to_the_training_split(records, tmp_path):
    """``LoopConfig.cleaning_epoch_images``: every cleaning model sees its bought images k times per epoch."""
    from model.dataset import epoch_repeats

    bench = FakeWorkbench(records, tmp_path, TRAIN_SPECS["tiny"], seed=3)
    n_train = len(bench.train_ids)
    cfg = LoopConfig(
        Strategy.DISCREPANCY, budget=0.5, seed_fraction=0.1, rounds=3, cleaning_epoch_images=n_train
    )
    loop = run_loop(bench, cfg, np.random.default_rng(3), lsm=LSM, name="loop")
    cleaning = [c for c in bench.calls if c["name"].startswith("loop-r")]
    assert len(cleaning) == 4
    sizes = [len(c["labels"]) for c in cleaning]
    assert sizes == sorted(sizes) and sizes[-1] == len(loop.expert_ids)
    for call, size in zip(cleaning, sizes, strict=True):
        k = epoch_repeats(size, n_train)
        assert k > 1
        assert call["repeats"] == {i: k for i in call["labels"]}
    # the default is one pass over the bought images
    plain = FakeWorkbench(records, tmp_path / "plain", TRAIN_SPECS["tiny"], seed=3)
    run_loop(
        plain,
        dataclasses.replace(cfg, cleaning_epoch_images=0),
        np.random.default_rng(3),
        lsm=LSM,
        name="loop",
    )
    assert all(c["repeats"] is None for c in plain.calls if c["name"].startswith("loop-r"))
