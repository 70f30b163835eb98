"""Which images go to the experts next: selection strategies behind one ``select`` function."""

from __future__ import annotations

import enum

import numpy as np

from selection.detections import Detections


class Strategy(enum.StrEnum):
    """How to choose images for expert re-annotation."""

    DISCREPANCY = "discrepancy"  # highest LSM image discrepancy first
    RANDOM = "random"  # uniform without replacement
    UNCERTAINTY = "uncertainty"  # highest model-only uncertainty first
    HYBRID = "hybrid"  # discrepancy mixed with uncertainty, then greedy diversity


N_FEATURES = 10
"""Length of the ``image_features`` descriptor."""

_SCORE_BINS = np.array([0.1, 0.3, 0.5, 0.7, 0.9, 1.0])


def model_uncertainty(pred: Detections, *, score_floor: float = 0.1) -> float:
    """Model-only uncertainty of one image: mean ``1 - |2 s - 1|`` over predictions with ``s >= score_floor``.

    A prediction at 0.5 contributes 1 (coin toss), one at 0 or 1 contributes 0.

    Args:
        pred: the model's predictions (unscored boxes count as score 1, i.e. certain).
        score_floor: predictions below this score are ignored (detectors emit many near-zero boxes).

    Returns:
        Uncertainty in [0, 1]; 0.0 when no prediction reaches the floor.
    """
    if pred.score is None:
        return 0.0
    s = pred.score[pred.score >= score_floor].astype(np.float64)
    if s.size == 0:
        return 0.0
    return float(np.mean(1.0 - np.abs(2.0 * s - 1.0)))


def image_features(crowd: Detections, pred: Detections, width: float, height: float) -> np.ndarray:
    """A small per-image descriptor for diversity: counts, relative box sizes and the score histogram.

    Args:
        crowd: the image's crowd boxes (pixels).
        pred: the model's predictions (pixels, scored; unscored count as 1).
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).

    Returns:
        float32 (N_FEATURES,): ``log1p`` crowd count, ``log1p`` count of predictions >= 0.5, mean sqrt of
        crowd and of prediction (>= 0.5) box area relative to the image, the share of predictions >= 0.1 in
        the score bins [0.1, 0.3), [0.3, 0.5), [0.5, 0.7), [0.7, 0.9), [0.9, 1], then ``log1p`` of that count.

    Raises:
        ValueError: if ``width`` or ``height`` is not positive.
    """
    if not width > 0 or not height > 0:
        raise ValueError(f"width, height: expected positive image size, got {width} x {height}")
    image_area = float(width) * float(height)
    score = np.ones(len(pred), np.float32) if pred.score is None else pred.score
    confident = score >= 0.5
    kept = score[score >= 0.1]
    hist = np.histogram(kept, bins=_SCORE_BINS)[0].astype(np.float64)
    share = hist / max(1, kept.size)

    def rel_size(boxes: Detections, mask: np.ndarray | None = None) -> float:
        area = boxes.area if mask is None else boxes.area[mask]
        return float(np.mean(np.sqrt(area / image_area))) if area.size else 0.0

    feats = np.concatenate(
        [
            [np.log1p(len(crowd)), np.log1p(int(confident.sum()))],
            [rel_size(crowd), rel_size(pred, confident)],
            share,
            [np.log1p(kept.size)],
        ]
    )
    return feats.astype(np.float32)


def _check_vector(name: str, value: np.ndarray | None, n: int) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return arr


def _top(values: np.ndarray, available: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` available indices with the highest ``values``, ties broken at random."""
    v = values[available]
    order = np.lexsort((rng.random(v.size), -v))
    return available[order[:k]]


def _normalise(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (constant vectors give zeros)."""
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _greedy_diverse(
    base: np.ndarray, features: np.ndarray, k: int, diversity_weight: float, rng: np.random.Generator
) -> np.ndarray:
    """Greedy: repeatedly pick argmax of ``base - diversity_weight * max cosine similarity to the picked``."""
    f = features - features.mean(axis=0)
    f = f / np.where((sd := features.std(axis=0)) > 0, sd, 1.0)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norm > 0, norm, 1.0)
    tie = rng.random(base.size) * 1e-9
    max_sim = np.full(base.size, -1.0)
    free = np.ones(base.size, bool)
    picked = np.empty(k, np.int64)
    for step in range(k):
        gain = np.where(free, base - diversity_weight * np.maximum(max_sim, 0.0) + tie, -np.inf)
        j = int(np.argmax(gain))
        picked[step] = j
        free[j] = False
        max_sim = np.maximum(max_sim, f @ f[j])
    return picked


def select(
    strategy: Strategy | str,
    *,
    budget: int,
    discrepancy: np.ndarray,
    rng: np.random.Generator,
    uncertainty: np.ndarray | None = None,
    features: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    hybrid_weight: float = 0.3,
    diversity_weight: float = 0.5,
) -> np.ndarray:
    """Choose up to ``budget`` images for expert re-annotation.

    Args:
        strategy: a ``Strategy`` (or its value).
        budget: number of images wanted (>= 0); exactly ``min(budget, available)`` are returned.
        discrepancy: float (N,) LSM image discrepancy in [0, 1], one per image of the pool.
        rng: the source of randomness (random strategy, tie breaks).
        uncertainty: float (N,) model-only uncertainty (see ``model_uncertainty``); required by
            ``uncertainty``, optional for ``hybrid``.
        features: float (N, D) per-image descriptors (see ``image_features``); optional for ``hybrid``
            (no diversity term without them).
        exclude: int indices never to pick (e.g. images already labelled by experts).
        candidates: int indices that may be picked (default: all N).
        hybrid_weight: in [0, 1], the share of (min-max normalised) uncertainty in the hybrid score
            ``(1 - w) * discrepancy + w * uncertainty``.
        diversity_weight: >= 0, the penalty on the maximum cosine similarity (of standardised features) to
            images already picked, in the hybrid strategy.

    Returns:
        int64 (min(budget, available),) distinct image indices in pick order (best first).

    Raises:
        ValueError: on a negative budget, mis-shaped arrays, out-of-range indices, an unknown strategy,
            or a missing ``uncertainty`` for the uncertainty strategy.

    Example:
        The two most suspicious images, leaving out image 3 (already reviewed by an expert):

        >>> disc = np.array([0.1, 0.9, 0.4, 0.95, 0.0])
        >>> rng = np.random.default_rng(0)
        >>> select("discrepancy", budget=2, discrepancy=disc, rng=rng, exclude=[3]).tolist()
        [1, 2]
    """
    try:
        strategy = Strategy(strategy)
    except ValueError:
        raise ValueError(
            f"strategy: expected one of {[s.value for s in Strategy]}, got {strategy!r}"
        ) from None
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 0:
        raise ValueError(f"budget: expected a non-negative integer, got {budget!r}")
    disc = np.asarray(discrepancy, dtype=np.float64)
    if disc.ndim != 1:
        raise ValueError(f"discrepancy: expected shape (N,), got {disc.shape}")
    n = disc.shape[0]
    if not np.all(np.isfinite(disc)):
        raise ValueError("discrepancy: expected finite values, got NaN or inf")
    unc = _check_vector("uncertainty", uncertainty, n)
    feats = None
    if features is not None:
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] != n or not np.all(np.isfinite(feats)):
            raise ValueError(f"features: expected finite values of shape ({n}, D), got {feats.shape}")
    if not 0.0 <= hybrid_weight <= 1.0:
        raise ValueError(f"hybrid_weight: expected a value in [0, 1], got {hybrid_weight}")
    if not diversity_weight >= 0.0:
        raise ValueError(f"diversity_weight: expected a non-negative value, got {diversity_weight}")

    allowed = np.zeros(n, bool)
    for name, idx, value in (("candidates", candidates, True), ("exclude", exclude, False)):
        if idx is None:
            if value:
                allowed[:] = True
            continue
        arr = np.asarray(idx).reshape(-1)
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name}: expected integer indices in [0, {n}), got {arr[:5].tolist()}...")
        allowed[arr.astype(np.int64)] = value
    available = np.flatnonzero(allowed)
    k = min(budget, available.size)
    if k == 0:
        return np.zeros(0, np.int64)

    if strategy is Strategy.RANDOM:
        return rng.choice(available, size=k, replace=False).astype(np.int64)
    if strategy is Strategy.DISCREPANCY:
        return _top(disc, available, k, rng).astype(np.int64)
    if strategy is Strategy.UNCERTAINTY:
        if unc is None:
            raise ValueError("uncertainty: required by the uncertainty strategy, got None")
        return _top(unc, available, k, rng).astype(np.int64)
    base = disc[available]
    if unc is not None:
        base = (1.0 - hybrid_weight) * _normalise(base) + hybrid_weight * _normalise(unc[available])
    if feats is None or diversity_weight == 0.0:
        return available[_top(base, np.arange(available.size), k, rng)]
    return available[_greedy_diverse(base, feats[available], k, diversity_weight, rng)]
