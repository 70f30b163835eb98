"""The LSM loop ranks by the type-weighted discrepancy once the bought images have calibrated the types (or,
with ``purchase="missed"``, by it plus the expected missed objects, with ``"residual"`` by the errors the
calibrated correction would leave, or with ``"density"`` by those errors per expected decision; the
``"oracle"`` diagnostic by the true label errors)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from bench_fakes import FakeWorkbench

import synth
from bench.loop import LoopConfig, _pick, run_loop, true_errors
from bench.workbench import TRAIN_SPECS
from selection import LSMConfig, Strategy
from selection.calibration import Calibration, TypeRule, expected_decisions, residual_errors
from selection.detections import Detections
from selection.lsm import score_image

LSM = LSMConfig()


@pytest.fixture(scope="module")
def records():
    config = dataclasses.replace(synth.get_preset("tiny"), n_train=24, n_val=4, n_test=4)
    return synth.generate(config, 7, render=False).images


def _scenario(records, tmp_path):
    """Two candidates. M: two confident predictions in corners no crowd box covers (missed). B: one crowd box
    with no prediction near it (background). Every other crowd box is predicted exactly."""
    bench = FakeWorkbench(records, tmp_path, TRAIN_SPECS["tiny"], seed=3)
    m_id, b_id = [i for i in bench.train_ids if len(bench.records[i].crowd) >= 1][:2]
    m = bench.records[m_id]
    lo, hi = m.crowd.xyxy[:, :2].min(axis=1), m.crowd.xyxy[:, 2:].max(axis=1)
    clear = np.flatnonzero((lo >= 14) & (hi <= min(m.width, m.height) - 14))
    bench.records[m_id] = dataclasses.replace(m, crowd=m.crowd.subset(clear))
    corners = np.array([[0, 0, 12, 12], [m.width - 12, m.height - 12, m.width, m.height]], np.float32)
    xyxy = np.concatenate([m.crowd.xyxy[clear], corners])
    preds = {
        m_id: Detections(xyxy, np.zeros(len(xyxy), np.int64), np.r_[np.full(len(clear), 0.95), 0.8, 0.75])
    }
    xyxy = bench.records[b_id].crowd.xyxy[1:]
    preds[b_id] = Detections(xyxy, np.zeros(len(xyxy), np.int64), np.full(len(xyxy), 0.95))
    return bench, m_id, b_id, preds


def test_pick_follows_the_weighted_discrepancy(records, tmp_path):
    bench, m_id, b_id, preds = _scenario(records, tmp_path)
    ids = [m_id, b_id]
    raw, raw_scores = _pick(bench, Strategy.DISCREPANCY, ids, preds, 1, np.random.default_rng(0), LSM)
    assert raw == [m_id]  # two missed objects outweigh one box on background
    assert [str(t) for t in raw_scores[0].instances.noise_type].count("missed") == 2
    # The experts confirmed 1 of 40 missed findings and 38 of 40 boxes on background.
    cal = Calibration(
        rules={
            "missed": TypeRule("missed", False, "thin", n_examples=40, n_errors=1),
            "background": TypeRule("background", False, "thin", n_examples=40, n_errors=38),
        }
    )
    weighted, wscores = _pick(bench, Strategy.DISCREPANCY, ids, preds, 1, np.random.default_rng(0), LSM, cal)
    assert weighted == [b_id]
    # The findings handed on to the calibration examples are the LSM's own (unweighted discrepancy).
    own = _pick(bench, Strategy.DISCREPANCY, [b_id], preds, 1, np.random.default_rng(0), LSM)[1][0]
    assert wscores[0].discrepancy == pytest.approx(own.discrepancy)
    # Bought by what the correction would leave: the background box is fixed and nearly always an error,
    # the two missed findings' fixes nearly always wrong, so M is worth an expert's time and B is not.
    residual, rscores = _pick(
        bench, Strategy.DISCREPANCY, ids, preds, 1, np.random.default_rng(0), LSM, cal, purchase="residual"
    )
    assert residual == [m_id]
    assert rscores[0].discrepancy == pytest.approx(raw_scores[0].discrepancy)


def test_missed_buys_the_image_whose_missed_objects_only_a_reannotation_fixes(records, tmp_path):
    """The experts confirmed 8 of 40 missed findings and half of the boxes on background. Weighted, B's one
    likely error outranks M's two unlikelier ones; counting M's expected missed deposits again (the
    correction cannot draw them) buys M."""
    bench, m_id, b_id, preds = _scenario(records, tmp_path)
    cal = Calibration(
        rules={
            "missed": TypeRule("missed", False, "thin", n_examples=40, n_errors=8),
            "background": TypeRule("background", False, "thin", n_examples=40, n_errors=20),
        }
    )

    def pick(purchase):
        rng = np.random.default_rng(0)
        return _pick(bench, Strategy.DISCREPANCY, [m_id, b_id], preds, 1, rng, LSM, cal, purchase=purchase)

    assert pick("discrepancy")[0] == [b_id]
    picked, scores = pick("missed")
    assert picked == [m_id]
    m = bench.records[m_id]
    assert scores[0].discrepancy == pytest.approx(score_image(m.crowd, preds[m_id], config=LSM).discrepancy)


def test_density_buys_the_errors_a_decision_fixes_most_of(records, tmp_path):
    bench, m_id, b_id, preds = _scenario(records, tmp_path)
    # C: no crowd box and one confident prediction: a missed deposit that costs one decision to draw.
    c_id = next(i for i in bench.train_ids if i not in (m_id, b_id))
    c = bench.records[c_id]
    bench.records[c_id] = dataclasses.replace(c, crowd=c.crowd.subset(np.zeros(0, np.int64)))
    preds[c_id] = Detections(np.array([[2, 2, 14, 14]], np.float32), np.zeros(1, np.int64), np.array([0.8]))
    cal = Calibration(rules={"missed": TypeRule("missed", False, "thin", n_examples=40, n_errors=1)})
    ids = [m_id, b_id, c_id]
    m = bench.records[m_id]
    score = score_image(m.crowd, preds[m_id], config=LSM)
    # M leaves two wrong fixes (each 39 / 42: 1 + 2 pseudo-errors in 40 + 2), at the price of its crowd
    # boxes and the two deposits it would draw.
    assert residual_errors(m.crowd, preds[m_id], score, cal) == pytest.approx(2 * 39 / 42)
    assert expected_decisions(m.crowd, preds[m_id], score, cal) == pytest.approx(len(m.crowd) + 2 * 3 / 42)
    assert len(m.crowd) >= 2

    def pick(purchase):
        return _pick(
            bench, Strategy.DISCREPANCY, ids, preds, 1, np.random.default_rng(0), LSM, cal, purchase=purchase
        )[0]

    assert pick("residual") == [m_id]  # the most errors left
    assert pick("density") == [c_id]  # the most left per decision: 0.93 / 2.07 against 1.86 / (1 + M's)


def test_the_oracle_buys_the_most_true_errors_calibrated_or_not(records, tmp_path):
    bench, m_id, b_id, preds = _scenario(records, tmp_path)
    # The truth: B's crowd holds three wrong boxes, M's none (its two "missed" findings stay findings only).
    b = bench.records[b_id]
    noise = np.array(["background"] * 3 + ["clean"] * (len(b.crowd) - 3))[: len(b.crowd)]
    bench.records[b_id] = dataclasses.replace(b, crowd_noise=noise)
    m = bench.records[m_id]
    bench.records[m_id] = dataclasses.replace(
        m, crowd_noise=np.array(["clean"] * len(m.crowd)), missed=np.zeros(0, np.int64)
    )
    assert true_errors(bench.records[m_id]) == 0 and true_errors(bench.records[b_id]) == min(3, len(b.crowd))
    ids = [m_id, b_id]
    assert _pick(bench, Strategy.DISCREPANCY, ids, preds, 1, np.random.default_rng(0), LSM)[0] == [m_id]
    picked, scores = _pick(
        bench, Strategy.DISCREPANCY, ids, preds, 1, np.random.default_rng(0), LSM, None, purchase="oracle"
    )
    assert picked == [b_id]
    # The findings handed on to the calibration are still the LSM's own.
    assert scores[0].discrepancy == pytest.approx(score_image(b.crowd, preds[b_id], config=LSM).discrepancy)


def test_the_first_round_is_unweighted_and_the_switch_turns_weighting_off(records, tmp_path):
    def run(weigh: bool):
        bench = FakeWorkbench(records, tmp_path / str(weigh), TRAIN_SPECS["tiny"], seed=3)
        cfg = LoopConfig(
            strategy=Strategy.DISCREPANCY,
            budget=0.75,
            seed_fraction=0.1,
            rounds=3,
            weigh=weigh,
            purchase="discrepancy",  # the switch is the discrepancy purchase's (another rule always weighs)
        )
        loop = run_loop(bench, cfg, np.random.default_rng(3), lsm=LSM, name="loop")
        return bench, loop

    on_bench, on = run(True)
    off_bench, off = run(False)
    # Seed set and the first round's picks (no calibration yet) are the same; trainings r0 and r1 match.
    assert [c["labels"].keys() for c in on_bench.calls[:2]] == [
        c["labels"].keys() for c in off_bench.calls[:2]
    ]
    assert on.expert_ids != off.expert_ids  # later rounds rank differently


def test_loop_config_rejects_an_unknown_purchase():
    with pytest.raises(ValueError, match="purchase"):
        LoopConfig(strategy=Strategy.DISCREPANCY, purchase="cheapest")
