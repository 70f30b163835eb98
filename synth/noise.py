"""Crowd-noise model: turns an image's true deposit boxes into one simulated annotator's noisy boxes.

Decisions, per image (annotator skill ``s`` scales the missed, localization and background rates; mean ``s``
over images is 1):

1. each cluster of 2+ adjacent deposits is boxed as a whole (``box_in_box``) with ``bib_rate`` (a labelling
   habit rather than a skill error, so unscaled: scaling it would bias the other measured rates); its
   inner boxes are sometimes kept too (``bib_inner``, otherwise clean);
2. every other deposit is missed with ``min(missed_rate * s * (1 + skew (1 - 2 visibility)), 0.98)`` (small
   and faint deposits are missed more often), else boxed badly (``localization``) with ``min(p, 1)``, where
   ``p = localization_rate * s * (1 - missed_rate) / max(1 - min(missed_rate * s, 0.98), 0.02)`` (weighted by
   the share of deposits the annotator boxes, so that the dataset rate is the configured one), else boxed
   well (``clean``);
3. with ``b = min(background_rate * s, 0.95)``, Poisson-many ``background`` boxes are added,
   ``b / (1 - b) * n`` on average over the images, ``n`` being the boxes drawn so far (0.5 when there are
   none and the image has distractors), which makes them a share ``b`` of the annotator's boxes. A share
   ``background_on_distractor`` of them (over the dataset) sit on distractors, the rest on plain texture
   (images with distractors draw more, images without draw texture boxes only). Over the dataset the
   share overshoots ``background_rate``, more the higher it is, because ``b / (1 - b)`` grows faster than
   linearly with the skill: error-prone annotators add more boxes than careful ones leave out (measured on
   the ``quick`` preset, seeds 0-2, all splits: 0.18 gives 0.178, within noise; 0.5 gives 0.544; 0.8 gives
   0.894).

The caps in 1-2 keep high missed and localization rates from being reached (:func:`capped_rates` says when;
:class:`synth.config.NoiseConfig` gives measured figures). Rates measured by :func:`measure_rates` use
exactly these denominators.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from selection.boxes import box_iou
from synth.config import LOCALIZATION_IOU_TOLERANCE, NoiseConfig

MISSED_CAP = 0.98
"""The most a deposit's miss probability can be."""
LOCALIZATION_CAP = 1.0
"""The most a boxed deposit's localization probability can be."""


class CrowdNoise(StrEnum):
    """The true noise type of one crowd box."""

    CLEAN = "clean"
    BACKGROUND = "background"
    LOCALIZATION = "localization"
    BOX_IN_BOX = "box_in_box"
    BIB_INNER = "bib_inner"


NOISE_NAMES: tuple[str, ...] = tuple(t.value for t in CrowdNoise)


@dataclass(frozen=True)
class CrowdBoxes:
    """One annotator's boxes for one image, with their true story.

    Attributes:
        xyxy: float32 (M, 4) boxes, pixels.
        noise: str (M,) one of :data:`NOISE_NAMES` per box.
        match: int64 (M,) index of the true box each was made from; -1 for background; first member for Bib.
        missed: int64 (K,) indices of the true boxes that got no box.
        annotator: the annotator's id.
    """

    xyxy: np.ndarray
    noise: np.ndarray
    match: np.ndarray
    missed: np.ndarray
    annotator: int


@dataclass(frozen=True)
class NoiseRates:
    """Measured noise, with the same definitions as :class:`synth.config.NoiseConfig`.

    Attributes:
        missed: missed deposits / deposits outside box-in-box clusters.
        localization: localization boxes / boxed deposits outside box-in-box clusters.
        background: background boxes / all crowd boxes.
        box_in_box: clusters boxed as one / clusters of 2+ deposits.
        n_deposits, n_crowd, n_clusters: the counts behind them.
    """

    missed: float
    localization: float
    background: float
    box_in_box: float
    n_deposits: int
    n_crowd: int
    n_clusters: int


def annotator_skills(cfg: NoiseConfig, rng: np.random.Generator) -> np.ndarray:
    """float64 (n_annotators,) error multipliers with mean exactly 1."""
    skill = rng.uniform(1 - cfg.skill_spread, 1 + cfg.skill_spread, cfg.n_annotators)
    return skill / skill.mean()


def _missed_probability(cfg: NoiseConfig, skill: float, visibility: float) -> float:
    """A deposit's miss probability before the :data:`MISSED_CAP` cap."""
    return cfg.missed_rate * skill * (1 + cfg.missed_visibility_skew * (1 - 2 * visibility))


def _localization_probability(cfg: NoiseConfig, skill: float) -> float:
    """A boxed deposit's localization probability before the :data:`LOCALIZATION_CAP` cap."""
    # Error-prone annotators box fewer deposits; weighting by the boxed ones keeps the dataset rate exact.
    miss = min(cfg.missed_rate * skill, MISSED_CAP)
    return cfg.localization_rate * skill * (1 - cfg.missed_rate) / max(1 - miss, 0.02)


def capped_rates(cfg: NoiseConfig) -> list[str]:
    """The missed and localization rates of ``cfg`` that their per-deposit caps can keep out of reach.

    A rate is reported when its per-deposit probability exceeds its cap for the most error-prone annotator
    (skill ``1 + skill_spread``, or 1 with a single annotator) on the least visible deposit. From there on
    the cap takes probability away, little at first, more the higher the rate (``missed_rate`` 0.9 gives
    0.775, ``localization_rate`` 0.7 gives 0.678, see :class:`synth.config.NoiseConfig`). It is where the
    cap starts to bind, not a prediction of the shortfall: other approximations can outweigh it (with
    ``missed_rate=0.9`` the localization cap binds too, yet the measured localization share is 0.205 for a
    configured 0.2). Skills are rescaled to mean 1 after they are drawn, so a drawn skill can exceed
    ``1 + skill_spread`` a little; rates just below the bound are not reported.

    Args:
        cfg: the noise settings.

    Returns:
        Messages naming the field and its bound; empty when no cap binds (as for the defaults).
    """
    top = 1 + cfg.skill_spread if cfg.n_annotators > 1 else 1.0
    messages = []
    # Both probabilities are proportional to their rate, so the bound is the rate at which the worst case
    # reaches the cap.
    worst = _missed_probability(cfg, top, 0.0)
    if worst > MISSED_CAP:
        messages.append(
            f"missed_rate={cfg.missed_rate}: above {MISSED_CAP * cfg.missed_rate / worst:.3f} the miss "
            f"probability of the faintest deposits exceeds its cap {MISSED_CAP} for the most error-prone "
            f"annotators (skill up to {top:g}), so the dataset's missed share can fall short of it"
        )
    worst = _localization_probability(cfg, top)
    if worst > LOCALIZATION_CAP:
        messages.append(
            f"localization_rate={cfg.localization_rate}: above "
            f"{LOCALIZATION_CAP * cfg.localization_rate / worst:.3f} the localization probability exceeds "
            f"its cap {LOCALIZATION_CAP:g} for the most error-prone annotators (skill up to {top:g}), so the "
            "dataset's localization share can fall short of it"
        )
    return messages


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(a[None], b[None])[0, 0])


def _clip(box: np.ndarray, size: float) -> np.ndarray:
    out = np.clip(box, 0, size)
    return np.round(out, 2)


def _jitter(
    box: np.ndarray, sigma: float, min_iou: float, size: float, rng: np.random.Generator
) -> np.ndarray:
    """A box near ``box``: corners moved by ``sigma`` x side, keeping IoU >= ``min_iou``."""
    wh = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    for attempt in range(20):
        cand = _clip(box + rng.normal(0, sigma / (1 + attempt), 4) * wh, size)
        if cand[2] - cand[0] >= 1 and cand[3] - cand[1] >= 1 and _iou(cand, box) >= min_iou:
            return cand
    return _clip(box, size)


def _centred(cx: float, cy: float, w: float, h: float) -> np.ndarray:
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _localization(box: np.ndarray, cfg: NoiseConfig, size: float, rng: np.random.Generator) -> np.ndarray:
    """A badly placed box on ``box``: loose, tight or shifted, IoU in ``cfg.localization_iou``.

    A candidate is accepted when it is at least 1 px wide and high and its IoU lies within
    ``LOCALIZATION_IOU_TOLERANCE`` (0.03) of the range; after 30 rejected candidates the last one is returned
    unchecked (rare: none of 2,082 localization boxes lay outside the widened range on the ``quick`` preset,
    seeds 0-2, ``localization_rate=0.7``).
    """
    lo, hi = cfg.localization_iou
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    weights = np.asarray(cfg.localization_modes, np.float64)
    cand = box
    for _ in range(30):
        target = rng.uniform(lo, hi)
        mode = rng.choice(3, p=weights / weights.sum())
        split = rng.uniform(0.25, 0.75)
        if mode == 0:  # loose: area 1 / target times the true one, true box inside
            fx, fy = (1 / target) ** split, (1 / target) ** (1 - split)
            sx = rng.uniform(-0.5, 0.5) * (fx - 1) * w
            sy = rng.uniform(-0.5, 0.5) * (fy - 1) * h
            cand = _centred(cx + sx, cy + sy, fx * w, fy * h)
        elif mode == 1:  # tight: a part of the true box
            fx, fy = target**split, target ** (1 - split)
            sx = rng.uniform(-0.5, 0.5) * (1 - fx) * w
            sy = rng.uniform(-0.5, 0.5) * (1 - fy) * h
            cand = _centred(cx + sx, cy + sy, fx * w, fy * h)
        else:  # shifted: about the right size, moved until the IoU is the target
            theta = rng.uniform(0, 2 * np.pi)
            scale = rng.uniform(0.9, 1.25)
            direction = np.array([np.cos(theta) * w, np.sin(theta) * h])
            half = np.array([scale * w / 2, scale * h / 2])
            low, high = 0.0, 2.0
            for _step in range(30):  # IoU falls monotonically with the shift: bisect
                mid = (low + high) / 2
                c = np.array([cx, cy]) + mid * direction
                test = np.concatenate([c - half, c + half])
                low, high = (mid, high) if _iou(test, box) > target else (low, mid)
            c = np.array([cx, cy]) + low * direction
            cand = np.concatenate([c - half, c + half])
        cand = _clip(cand, size)
        slack = LOCALIZATION_IOU_TOLERANCE
        if cand[2] - cand[0] >= 1 and cand[3] - cand[1] >= 1 and lo - slack <= _iou(cand, box) <= hi + slack:
            return cand
    return cand  # unchecked: see the docstring


def _background(
    expert: np.ndarray, distractors: np.ndarray, size: float, rng: np.random.Generator
) -> np.ndarray:
    """A box on no deposit: on one of ``distractors`` if any are given, else on plain texture."""
    if len(distractors):
        target = distractors[int(rng.integers(len(distractors)))]
        return _jitter(target, 0.08, 0.6, size, rng)
    cand = np.zeros(4)
    for _ in range(50):
        side = rng.uniform(0.04, 0.11, 2) * size
        x, y = rng.uniform(0, size - side[0]), rng.uniform(0, size - side[1])
        cand = _clip(np.array([x, y, x + side[0], y + side[1]]), size)
        overlap = box_iou(cand[None], expert)[0] if len(expert) else np.zeros(1)
        centre = np.array([(cand[0] + cand[2]) / 2, (cand[1] + cand[3]) / 2])
        on_distractor = np.any(
            (distractors[:, 0] <= centre[0])
            & (centre[0] <= distractors[:, 2])
            & (distractors[:, 1] <= centre[1])
            & (centre[1] <= distractors[:, 3])
        )
        if overlap.max(initial=0.0) < 0.05 and not on_distractor:
            return cand
    return cand


def corrupt(
    expert: np.ndarray,
    cluster: np.ndarray,
    visibility: np.ndarray,
    distractors: np.ndarray,
    *,
    size: float,
    annotator: int,
    skill: float,
    cfg: NoiseConfig,
    rng: np.random.Generator,
    distractor_share: float = 1.0,
) -> CrowdBoxes:
    """One annotator's noisy boxes for one image.

    Args:
        expert: float32 (N, 4) true deposit boxes, pixels.
        cluster: int64 (N,) cluster id per deposit, -1 for lone deposits.
        visibility: float64 (N,) in [0, 1], how easy each deposit is to see.
        distractors: float32 (D, 4) boxes of deposit-like shapes that are not deposits, pixels.
        size: image side in pixels.
        annotator: the annotator's id, recorded on every box.
        skill: the annotator's error multiplier (mean 1 over annotators).
        cfg: noise rates.
        rng: the image's noise generator (consumed).
        distractor_share: share of the dataset's images that have distractors (to calibrate where
            background boxes go).

    Returns:
        The boxes with their noise types, matches and the missed deposits.
    """
    expert = np.asarray(expert, np.float64).reshape(-1, 4)
    distractors = np.asarray(distractors, np.float64).reshape(-1, 4)
    n = len(expert)
    if cluster.shape != (n,) or visibility.shape != (n,):
        raise ValueError(
            f"cluster, visibility: expected shape ({n},), got {cluster.shape}, {visibility.shape}"
        )
    boxes: list[np.ndarray] = []
    noise: list[str] = []
    match: list[int] = []
    missed: list[int] = []
    in_bib = np.zeros(n, bool)

    for cid in np.unique(cluster[cluster >= 0]):
        members = np.flatnonzero(cluster == cid)
        if len(members) < 2 or rng.uniform() >= cfg.bib_rate:
            continue
        in_bib[members] = True
        union = np.concatenate([expert[members, :2].min(0), expert[members, 2:].max(0)])
        side = np.array([union[2] - union[0], union[3] - union[1]] * 2)
        margin = rng.uniform(*cfg.bib_margin, 4) * side * np.array([-1, -1, 1, 1])
        boxes.append(_clip(union + margin, size))
        noise.append(CrowdNoise.BOX_IN_BOX.value)
        match.append(int(members[0]))
        if rng.uniform() < cfg.bib_keep_inner:
            for m in members:
                boxes.append(_jitter(expert[m], cfg.clean_jitter, cfg.clean_min_iou, size, rng))
                noise.append(CrowdNoise.BIB_INNER.value)
                match.append(int(m))

    p_localization = _localization_probability(cfg, skill)
    for i in range(n):
        if in_bib[i]:
            continue
        if rng.uniform() < min(_missed_probability(cfg, skill, visibility[i]), MISSED_CAP):
            missed.append(i)
            continue
        if rng.uniform() < min(p_localization, LOCALIZATION_CAP):
            boxes.append(_localization(expert[i], cfg, size, rng))
            noise.append(CrowdNoise.LOCALIZATION.value)
        else:
            boxes.append(_jitter(expert[i], cfg.clean_jitter, cfg.clean_min_iou, size, rng))
            noise.append(CrowdNoise.CLEAN.value)
        match.append(i)

    b = min(cfg.background_rate * skill, 0.95)
    expected = b / (1 - b) * max(len(boxes), 0.5 if len(distractors) else 0)
    # Images without distractors get only texture boxes; images with them make up for it, so that the
    # dataset-level share on distractors is the configured one.
    p_on = cfg.background_on_distractor
    on_share = 1 / max(distractor_share, 1e-6) if len(distractors) else 0.0
    n_on = int(rng.poisson(expected * p_on * on_share))
    n_texture = int(rng.poisson(expected * (1 - p_on)))
    for k in range(n_on + n_texture):
        boxes.append(_background(expert, distractors if k < n_on else distractors[:0], size, rng))
        noise.append(CrowdNoise.BACKGROUND.value)
        match.append(-1)

    return CrowdBoxes(
        xyxy=np.array(boxes, np.float32).reshape(-1, 4),
        noise=np.array(noise, dtype="<U12"),
        match=np.array(match, np.int64),
        missed=np.array(missed, np.int64),
        annotator=annotator,
    )


def measure_rates(
    images: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> NoiseRates:
    """Measured noise rates over images.

    Args:
        images: per image ``(cluster, crowd_noise, crowd_match, missed)``: int64 (N,) cluster ids of the
            true boxes, str (M,) noise types, int64 (M,) matches, int64 (K,) missed indices.

    Returns:
        The rates (0 where a denominator is 0) and their counts.
    """
    n_dep = n_crowd = n_clusters = 0
    n_missed = n_loc = n_boxed = n_bg = n_bib = 0
    for cluster, crowd_noise, crowd_match, missed in images:
        cluster = np.asarray(cluster)
        crowd_noise = np.asarray(crowd_noise)
        crowd_match = np.asarray(crowd_match)
        n_dep += len(cluster)
        n_crowd += len(crowd_noise)
        _, counts = np.unique(cluster[cluster >= 0], return_counts=True)
        n_clusters += int(np.sum(counts >= 2))
        bib_first = crowd_match[crowd_noise == CrowdNoise.BOX_IN_BOX.value]
        n_bib += len(bib_first)
        n_missed += len(missed)
        n_bg += int(np.sum(crowd_noise == CrowdNoise.BACKGROUND.value))
        loc = int(np.sum(crowd_noise == CrowdNoise.LOCALIZATION.value))
        n_loc += loc
        n_boxed += loc + int(np.sum(crowd_noise == CrowdNoise.CLEAN.value))
    n_outside = n_missed + n_boxed

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return NoiseRates(
        missed=ratio(n_missed, n_outside),
        localization=ratio(n_loc, n_boxed),
        background=ratio(n_bg, n_crowd),
        box_in_box=ratio(n_bib, n_clusters),
        n_deposits=n_dep,
        n_crowd=n_crowd,
        n_clusters=n_clusters,
    )
