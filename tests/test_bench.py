"""The benchmark's own arithmetic: ranking metrics, expert cost, budget split; and a tiny full run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_detections

from bench.loop import LoopConfig, _budget_counts, boxes_touched
from bench.noise_quality import auroc, average_precision
from selection import Strategy


@pytest.mark.parametrize(
    ("score", "positive", "expected"),
    [
        ([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], 1.0),
        ([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),
        ([0.9, 0.1, 0.8, 0.2], [1, 1, 0, 0], 0.5),  # pos {.9,.1} vs neg {.8,.2}: 2 of 4 pairs won
        ([0.3, 0.2], [1, 1], float("nan")),
    ],
)
def test_auroc_hand_cases(score, positive, expected):
    got = auroc(np.array(score), np.array(positive, bool))
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected)


def test_auroc_matches_pairwise_definition(rng):
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pos, neg = score[positive], score[~positive]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auroc(score, positive) == pytest.approx(pairwise)


def test_average_precision_hand_case():
    # Ranked: P, N, P -> precisions at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.5, 0.1]), np.array([1, 0, 1], bool)) == pytest.approx(5 / 6)


def test_boxes_touched_counts_adds_deletes_and_moves():
    expert = make_detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    crowd = make_detections(
        [
            [0, 0, 10, 10],  # exact: untouched
            [21, 21, 31, 31],  # IoU 0.68: moved
            [70, 70, 80, 80],  # background: deleted
        ]
    )
    # deposit 3 missed: added. 1 move + 1 delete + 1 add.
    assert boxes_touched(crowd, expert) == 3
    assert boxes_touched(expert, expert) == 0


@pytest.mark.parametrize(
    ("n", "budget", "seed_fraction", "rounds", "first", "per_round"),
    [
        (100, 0.25, 0.1, 3, 10, [5, 5, 5]),
        (100, 0.25, 0.1, 4, 10, [4, 4, 4, 3]),
        (16, 0.25, 0.1, 3, 2, [1, 1]),  # 4 images: 2 seed + 2 left over 3 rounds
        (10, 0.1, 0.1, 2, 1, []),
    ],
)
def test_budget_split(n, budget, seed_fraction, rounds, first, per_round):
    cfg = LoopConfig(Strategy.RANDOM, budget=budget, seed_fraction=seed_fraction, rounds=rounds)
    got_first, got_rounds = _budget_counts(n, cfg)
    assert (got_first, got_rounds) == (first, per_round)
    assert got_first + sum(got_rounds) == max(1, round(budget * n))


@pytest.mark.slow
def test_simulate_tiny_runs_every_arm(tmp_path: Path):
    out = tmp_path / "sim"
    cmd = [
        sys.executable,
        "-m",
        "bench.simulate",
        "--preset",
        "tiny",
        "--seeds",
        "1",
        "--rounds",
        "1",
        "--strategies",
        "discrepancy,random",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    arms = results["runs"][0]["arms"]
    assert set(arms) == {
        "noisy",
        "full_expert",
        "expert_budget",
        "random_corrected",
        "lsm_uncorrected",
        "lsm_corrected",
        "lsm_consensus",
    }
    for arm in arms.values():
        assert 0.0 <= arm["ap50"] <= 1.0
    assert arms["full_expert"]["expert_fraction"] == 1.0
    assert arms["noisy"]["expert_images"] == 0
    assert arms["lsm_corrected"]["expert_images"] == arms["random_corrected"]["expert_images"] > 0
    assert "LSM + correction (full method)" in (out / "results.md").read_text()
    for png in ("ap50_vs_budget.png", "noisy_found.png"):
        assert (out / png).stat().st_size > 1000
