"""Reviews within a decision budget: most likely errors first, never over the budget, nothing lost."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from bench_fakes import FakeWorkbench
from conftest import make_detections

import synth
from bench.loop import LoopConfig, _reviews_within, corrected_labels, run_loop
from bench.simulate import BenchSettings
from bench.workbench import TRAIN_SPECS
from selection import LSMConfig, Strategy
from selection.correction import Correction

LSM = LSMConfig()


def _correction(labels, flagged, scores) -> Correction:
    return Correction(
        labels=make_detections(labels),
        flagged=make_detections(flagged, scores=scores),
        counts={},
        flagged_rows=np.arange(len(flagged)),
    )


def test_most_likely_errors_are_answered_first_and_a_split_costs_its_extra_box():
    # Three reviewed crowd boxes on nothing (one decision each), and one box around two deposits (two).
    expert = make_detections([[200, 0, 210, 10], [212, 0, 222, 10]])
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [198, -2, 224, 12]]
    fixes = {"a": _correction(boxes, boxes, [0.5] * 4)}
    records = {"a": SimpleNamespace(expert=expert)}
    priority = {"a": np.array([0.2, 0.9, 0.5, 0.8])}

    assert _reviews_within(fixes, priority, records, 2)["a"].tolist() == [False, True, False, False]
    assert _reviews_within(fixes, priority, records, 3)["a"].tolist() == [False, True, False, True]
    assert _reviews_within(fixes, priority, records, 4)["a"].tolist() == [False, True, True, True]
    assert _reviews_within(fixes, priority, records, 0)["a"].tolist() == [False] * 4
    assert _reviews_within(fixes, priority, records, None)["a"].tolist() == [True] * 4


def test_priorities_are_compared_across_images():
    fixes = {
        "a": _correction([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.5]),
        "b": _correction([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.5]),
    }
    records = {i: SimpleNamespace(expert=make_detections([])) for i in fixes}
    chosen = _reviews_within(fixes, {"a": np.array([0.3]), "b": np.array([0.7])}, records, 1)
    assert chosen["a"].tolist() == [False] and chosen["b"].tolist() == [True]


@pytest.fixture(scope="module")
def loop_and_bench(tmp_path_factory):
    config = dataclasses.replace(synth.get_preset("tiny"), n_train=48, n_val=4, n_test=4)
    records = synth.generate(config, 5, render=False).images
    bench = FakeWorkbench(records, tmp_path_factory.mktemp("wb"), TRAIN_SPECS["tiny"], seed=3)
    cfg = LoopConfig(strategy=Strategy.DISCREPANCY, budget=0.5, seed_fraction=0.1, rounds=3)
    loop = run_loop(bench, cfg, np.random.default_rng(3), lsm=LSM, name="loop")
    return bench, loop


def test_budget_caps_the_charged_decisions_and_unanswered_reviews_keep_their_boxes(loop_and_bench):
    bench, loop = loop_and_bench
    _, all_counts = corrected_labels(bench, loop, lsm=LSM, reviews=True)
    untouched, _ = corrected_labels(bench, loop, lsm=LSM, reviews=False)
    flagged = all_counts["flagged"]
    assert all_counts["reviewed"] == flagged > 4
    assert all_counts.get("review_skipped", 0) == 0

    none, counts = corrected_labels(bench, loop, lsm=LSM, reviews=True, review_budget=0)
    assert counts.get("reviewed", 0) == 0 and counts.get("review_decisions", 0) == 0
    assert counts["review_skipped"] == flagged
    assert all(np.array_equal(none[i].xyxy, untouched[i].xyxy) for i in untouched)

    previous = 0
    for budget in (1, flagged // 3, flagged // 2, all_counts["review_decisions"]):
        _, counts = corrected_labels(bench, loop, lsm=LSM, reviews=True, review_budget=budget)
        assert counts["review_decisions"] <= budget
        assert counts["reviewed"] + counts["review_skipped"] == flagged
        assert counts["reviewed"] >= previous
        previous = counts["reviewed"]
    assert previous == flagged  # the unlimited run's own cost is enough for every review

    with pytest.raises(ValueError, match="review_budget"):
        corrected_labels(bench, loop, lsm=LSM, review_budget=-1)


def test_cost_limit_setting_is_validated():
    assert BenchSettings().cost_limit == 0.27
    assert BenchSettings().cleaning_steps == "matched"
    with pytest.raises(ValueError, match="cost_limit"):
        BenchSettings(cost_limit=0.0)
    with pytest.raises(ValueError, match="cost_limit"):
        BenchSettings(cost_limit=1.5)


def test_calibrated_priorities_stay_within_the_budget(loop_and_bench):
    bench, loop = loop_and_bench
    _, full = corrected_labels(bench, loop, lsm=LSM, calibration=loop.calibration, reviews=True)
    budget = max(1, full.get("review_decisions", 0) // 2)
    _, counts = corrected_labels(
        bench, loop, lsm=LSM, calibration=loop.calibration, reviews=True, review_budget=budget
    )
    assert counts.get("review_decisions", 0) <= budget
    assert counts.get("reviewed", 0) + counts.get("review_skipped", 0) == full["flagged"]


def _rates(review_rate: float):
    """A calibration that gives every finding the LSM sent to review the probability ``review_rate``."""
    from selection.calibration import CALIBRATED_TYPES, Calibration, TypeRule

    rules = {
        t: TypeRule(
            t,
            True,
            "rate (test)",
            10,
            5,
            fix_threshold=0.8,
            review_threshold=0.4,
            rates={"review": review_rate},
        )
        for t in CALIBRATED_TYPES
    }
    return Calibration(rules=rules)


def test_unanswered_reviews_take_the_likelier_label(loop_and_bench):
    bench, loop = loop_and_bench
    kw = {"lsm": LSM, "reviews": True, "review_budget": 0}
    kept, keep_counts = corrected_labels(bench, loop, calibration=_rates(0.6), **kw)
    likely, counts = corrected_labels(bench, loop, calibration=_rates(0.6), unanswered="likelier", **kw)
    flagged = keep_counts["flagged"]
    assert flagged > 4 and keep_counts["review_skipped"] == flagged and keep_counts["likelier_fixed"] == 0
    assert counts["likelier_fixed"] == flagged and counts["review_skipped"] == 0 and counts["reviewed"] == 0
    # Fixing every p = 0.6 finding is what a calibration that fixes them outright gives.
    fixed, _ = corrected_labels(bench, loop, lsm=LSM, calibration=_rates(0.9), reviews=False)
    assert all(np.array_equal(likely[i].xyxy, fixed[i].xyxy) for i in fixed)
    assert any(not np.array_equal(likely[i].xyxy, kept[i].xyxy) for i in kept)
    # Below 0.5 the crowd's label is the likelier one: nothing changes.
    doubtful, counts = corrected_labels(bench, loop, calibration=_rates(0.45), unanswered="likelier", **kw)
    assert counts["likelier_fixed"] == 0
    assert all(np.array_equal(doubtful[i].xyxy, kept[i].xyxy) for i in kept)
    # With a budget, the answered reviews still fit it and the rest are settled.
    _, full = corrected_labels(bench, loop, lsm=LSM, calibration=_rates(0.6), reviews=True)
    budget = max(1, full["review_decisions"] // 2)
    _, part = corrected_labels(
        bench, loop, lsm=LSM, calibration=_rates(0.6), review_budget=budget, unanswered="likelier"
    )
    assert 0 < part["review_decisions"] <= budget
    assert part["reviewed"] > 0 and part["likelier_fixed"] > 0 and part["review_skipped"] == 0
    assert part["reviewed"] + part["likelier_fixed"] == full["flagged"]
    with pytest.raises(ValueError, match="unanswered"):
        corrected_labels(bench, loop, lsm=LSM, unanswered="guess")
    with pytest.raises(ValueError, match="unanswered"):
        BenchSettings(unanswered="guess")


def test_review_orders_spend_the_same_budget_on_different_instances(loop_and_bench, monkeypatch):
    """``likely`` answers the highest error probabilities first, ``uncertain`` those nearest 0.5, ``random``
    any; each within the budget."""
    import bench.loop
    from bench.loop import REVIEW_ORDERS
    from selection.calibration import CALIBRATED_TYPES, Calibration, TypeRule

    bench_, loop = loop_and_bench
    # Findings the LSM sent to review get 0.9 (background), 0.5 (missed) or 0.1 (the other types).
    rates = {"background": 0.9, "missed": 0.5}
    rules = {
        t: TypeRule(
            t,
            True,
            "rate (test)",
            10,
            5,
            fix_threshold=0.95,
            review_threshold=0.05,
            rates={"review": rates.get(t, 0.1)},
        )
        for t in CALIBRATED_TYPES
    }
    cal = Calibration(rules=rules)
    _, full = corrected_labels(bench_, loop, lsm=LSM, calibration=cal, reviews=True)
    budget = max(1, full["review_decisions"] // 3)
    seen: dict[str, dict] = {}
    answered: dict[str, dict] = {}
    within = bench.loop._reviews_within
    for order in REVIEW_ORDERS:

        def spy(fixes, priority, records, limit, order=order):
            seen[order] = {i: p.copy() for i, p in priority.items()}
            # corrected_labels may ask again with a smaller limit: the last answer is the one it keeps
            answered[order] = within(fixes, priority, records, limit)
            return answered[order]

        monkeypatch.setattr(bench.loop, "_reviews_within", spy)
        _, counts = corrected_labels(
            bench_, loop, lsm=LSM, calibration=cal, review_budget=budget, review_order=order
        )
        assert 0 < counts["review_decisions"] <= budget
    likely = np.concatenate(list(seen["likely"].values()))
    uncertain = np.concatenate(list(seen["uncertain"].values()))
    assert set(np.round(likely, 6)) <= {0.9, 0.5, 0.1} and 0.9 in np.round(likely, 6)
    # Nearest 0.5 first: the missed findings (0.5) rank above the background ones (0.9).
    np.testing.assert_allclose(uncertain, -np.abs(likely - 0.5))
    randomly = np.concatenate(list(seen["random"].values()))
    assert randomly.shape == likely.shape and not np.allclose(randomly, likely)
    # Which instances each order answers (the same images and findings, in the same order, for every order).
    masks = {order: np.concatenate([answered[order][i] for i in seen["likely"]]) for order in REVIEW_ORDERS}
    assert all(m.shape == likely.shape and 0 < m.sum() < m.size for m in masks.values())
    assert not np.array_equal(masks["likely"], masks["uncertain"])
    assert not np.array_equal(masks["likely"], masks["random"])
    # ``likely`` answers the most likely errors: none left unanswered is likelier than one answered.
    assert likely[masks["likely"]].min() >= likely[~masks["likely"]].max()
    # ``uncertain`` answers those nearest 0.5 first.
    assert np.abs(likely[masks["uncertain"]] - 0.5).max() <= np.abs(likely[~masks["uncertain"]] - 0.5).min()
    with pytest.raises(ValueError, match="review_order"):
        corrected_labels(bench_, loop, lsm=LSM, review_order="loudest")
    with pytest.raises(ValueError, match="review_order"):
        BenchSettings(review_order="loudest")
