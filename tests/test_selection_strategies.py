"""Selection strategies: budget, no repeats, exclusion, ordering, diversity; uncertainty and features."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_detections

from selection import Detections, Strategy, image_features, model_uncertainty, select
from selection.strategies import N_FEATURES


def _inputs(n, rng):
    return {
        "discrepancy": rng.uniform(0, 1, n),
        "uncertainty": rng.uniform(0, 1, n),
        "features": rng.normal(size=(n, 5)),
    }


@pytest.mark.parametrize("strategy", list(Strategy))
def test_budget_no_repeat_exclusion_properties(strategy, rng):
    for _ in range(40):
        n = int(rng.integers(0, 60))
        exclude = rng.choice(n, size=int(rng.integers(0, n + 1)), replace=False) if n else np.zeros(0, int)
        budget = int(rng.integers(0, 70))
        picked = select(strategy, budget=budget, exclude=exclude, rng=rng, **_inputs(n, rng))
        available = n - exclude.size
        assert picked.dtype == np.int64 and picked.shape == (min(budget, available),)
        assert len(set(picked.tolist())) == picked.size
        assert not set(picked.tolist()) & set(exclude.tolist())
        assert np.all((picked >= 0) & (picked < max(n, 1)))


@pytest.mark.parametrize("strategy", list(Strategy))
def test_candidates_restrict_the_pool(strategy, rng):
    inputs = _inputs(30, rng)
    candidates = np.arange(0, 30, 3)
    picked = select(strategy, budget=8, candidates=candidates, exclude=np.array([0, 3]), rng=rng, **inputs)
    assert picked.size == 8 and set(picked.tolist()) <= set(candidates.tolist()) - {0, 3}


def test_discrepancy_and_uncertainty_pick_the_top(rng):
    d = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    u = np.array([0.8, 0.0, 0.1, 0.2, 0.9])
    assert select("discrepancy", budget=3, discrepancy=d, rng=rng).tolist() == [1, 3, 2]
    assert select(Strategy.UNCERTAINTY, budget=2, discrepancy=d, uncertainty=u, rng=rng).tolist() == [4, 0]
    picked = select(Strategy.DISCREPANCY, budget=2, discrepancy=d, exclude=np.array([1]), rng=rng)
    assert picked.tolist() == [3, 2]


def test_ties_are_broken_by_rng():
    d = np.zeros(50)
    a = select(Strategy.DISCREPANCY, budget=5, discrepancy=d, rng=np.random.default_rng(1))
    b = select(Strategy.DISCREPANCY, budget=5, discrepancy=d, rng=np.random.default_rng(2))
    c = select(Strategy.DISCREPANCY, budget=5, discrepancy=d, rng=np.random.default_rng(1))
    assert a.tolist() != b.tolist() and a.tolist() == c.tolist()


def test_random_is_reproducible_and_roughly_uniform():
    # The discrepancy is ignored: the top-scored images are no likelier than the rest.
    disc = np.linspace(1.0, 0.1, 10)

    def pick(seed: int) -> list[int]:
        return select("random", budget=5, discrepancy=disc, rng=np.random.default_rng(seed)).tolist()

    # The same seed gives the same picks, in the same order; other seeds give other picks.
    runs = [pick(s) for s in range(400)]
    assert [pick(s) for s in range(20)] == runs[:20]
    assert len({tuple(r) for r in runs[:20]}) >= 15
    assert len({frozenset(r) for r in runs[:20]}) >= 15  # other images, not only another order
    counts = np.bincount(np.concatenate(runs), minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # 200 expected per image


def test_hybrid_diversity_avoids_near_duplicates(rng):
    # Images 0 and 1 are near-identical and both top-scored; 2 is different and slightly lower.
    d = np.array([0.9, 0.89, 0.8, 0.1])
    feats = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, -1.0]])
    no_div = select(Strategy.HYBRID, budget=2, discrepancy=d, features=feats, diversity_weight=0.0, rng=rng)
    div = select(Strategy.HYBRID, budget=2, discrepancy=d, features=feats, diversity_weight=0.5, rng=rng)
    assert no_div.tolist() == [0, 1]
    assert div.tolist() == [0, 2]


def test_hybrid_weight_mixes_in_uncertainty(rng):
    d = np.array([0.9, 0.5, 0.1])
    u = np.array([0.0, 1.0, 0.2])
    for weight, best in ((0.0, 0), (0.8, 1)):
        picked = select("hybrid", budget=1, discrepancy=d, uncertainty=u, hybrid_weight=weight, rng=rng)
        assert picked.tolist() == [best]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strategy": "best"}, "strategy"),
        ({"budget": -1}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"discrepancy": np.zeros((3, 2))}, "discrepancy"),
        ({"discrepancy": np.array([0.1, np.nan, 0.2])}, "discrepancy"),
        ({"uncertainty": np.zeros(2)}, "uncertainty"),
        ({"strategy": "uncertainty", "uncertainty": None}, "uncertainty"),
        ({"features": np.zeros((2, 3))}, "features"),
        ({"exclude": np.array([3])}, "exclude"),
        ({"candidates": np.array([-1])}, "candidates"),
        ({"hybrid_weight": 1.5}, "hybrid_weight"),
    ],
)
def test_select_rejects_bad_arguments(kwargs, field, rng):
    args = {"strategy": "hybrid", "budget": 2, "discrepancy": np.zeros(3), "uncertainty": np.zeros(3)}
    args.update(kwargs)
    strategy = args.pop("strategy")
    with pytest.raises(ValueError, match=field):
        select(strategy, rng=rng, **args)


def test_model_uncertainty_hand_values():
    assert model_uncertainty(Detections.empty(with_score=True)) == 0.0
    three = make_detections([[0, 0, 1, 1]] * 3, scores=[0.5, 1.0, 0.05])
    assert model_uncertainty(three) == pytest.approx(0.5)
    assert model_uncertainty(make_detections([[0, 0, 1, 1]] * 2, scores=[0.25, 0.75])) == pytest.approx(0.5)


def test_image_features_hand_values():
    crowd = make_detections([[0, 0, 10, 10], [0, 0, 20, 20]])
    pred = make_detections([[0, 0, 10, 10], [5, 5, 10, 10], [0, 0, 1, 1]], scores=[0.95, 0.2, 0.05])
    f = image_features(crowd, pred, 100, 100)
    assert f.shape == (N_FEATURES,) and f.dtype == np.float32
    np.testing.assert_allclose(
        f, [np.log1p(2), np.log1p(1), 0.15, 0.1, 0.5, 0, 0, 0, 0.5, np.log1p(2)], rtol=1e-6, atol=1e-7
    )
    empty = image_features(Detections.empty(), Detections.empty(with_score=True), 64, 64)
    np.testing.assert_array_equal(empty, np.zeros(N_FEATURES))
    with pytest.raises(ValueError, match="width"):
        image_features(crowd, pred, 0, 100)
