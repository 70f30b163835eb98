"""``LoopConfig.calibrate_on="random"``: the calibration handed on to the correction is fitted on a random
sample: for the LSM, the seed set, each half scored by a cleaning model that did not see its expert boxes; the
random strategy's own picks are one already."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from bench_fakes import FakeWorkbench

import synth
from bench.loop import LoopConfig, run_loop
from bench.workbench import TRAIN_SPECS
from selection import LSMConfig, Strategy

LSM = LSMConfig()


@pytest.fixture(scope="module")
def records():
    config = dataclasses.replace(synth.get_preset("tiny"), n_train=40, n_val=4, n_test=4)
    return synth.generate(config, 11, render=False).images


def _run(records, tmp_path, strategy: Strategy, calibrate_on: str):
    bench = FakeWorkbench(records, tmp_path, TRAIN_SPECS["tiny"], seed=4)
    cfg = LoopConfig(strategy=strategy, budget=0.5, seed_fraction=0.2, rounds=2, calibrate_on=calibrate_on)
    return bench, run_loop(bench, cfg, np.random.default_rng(4), lsm=LSM, name="loop")


def test_the_lsm_correction_is_calibrated_on_the_seed_set_cross_fitted(records, tmp_path):
    bench, bought = _run(records, tmp_path / "a", Strategy.DISCREPANCY, "bought")
    xbench, loop = _run(records, tmp_path / "b", Strategy.DISCREPANCY, "random")
    # The loop itself is the same: the same trainings and picks, then two cross-fit models.
    assert loop.expert_ids == bought.expert_ids
    assert [c["name"] for c in xbench.calls] == [c["name"] for c in bench.calls] + [
        "loop-crossfit0",
        "loop-crossfit1",
    ]
    seed_set = loop.expert_ids[:8]  # 20 % of 40
    halves = [set(seed_set[0::2]), set(seed_set[1::2])]
    for call, half in zip(xbench.calls[-2:], halves, strict=True):
        trained = set(call["labels"])
        assert not trained & half  # never saw the half it scores
        assert trained == set(loop.expert_ids) - half
    assert sum(r.n_examples for r in loop.calibration.rules.values()) > 0
    assert loop.calibration.to_dict() != bought.calibration.to_dict()
    assert len(loop.examples) == len(bought.examples)  # the picks' findings are still reported


def test_a_random_strategy_keeps_its_own_calibration(records, tmp_path):
    bench, bought = _run(records, tmp_path / "a", Strategy.RANDOM, "bought")
    xbench, loop = _run(records, tmp_path / "b", Strategy.RANDOM, "random")
    assert [c["name"] for c in xbench.calls] == [c["name"] for c in bench.calls]
    assert loop.calibration.to_dict() == bought.calibration.to_dict()


def test_loop_config_rejects_an_unknown_calibration_sample():
    with pytest.raises(ValueError, match="calibrate_on"):
        LoopConfig(strategy=Strategy.DISCREPANCY, calibrate_on="everything")
