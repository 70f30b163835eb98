"""The LSM's rules, written once: one function per noise type, one grading step, one pooling step.

Two drivers feed these functions: ``selection.lsm.score_image`` (one image; arrays ``(M, K)``) and
``selection.batch.score_batch`` (blocks of images padded to ``(B, Mmax, Kmax)``). Every rule works on the
trailing axes and broadcasts over leading batch axes, so both drivers run the same numpy operations in the
same order and their results agree bit for bit. What differs between the drivers is only what cannot be
shared cheaply:

- the one-to-one *assignment*: the per-image driver runs the Hungarian algorithm
  (``selection.matching.assign``); the batched driver takes every candidate pair when no box has two
  candidates and sends the other images to the per-image driver;
- box-in-box *parts* (model instances whose parent is a crowd box) exist only in the per-image driver: the
  batched driver detects a box-in-box box with ``box_in_box_boxes`` and falls back;
- padding masks and the flattening of results.

Why not one driver, the per-image scorer being the batched one on a batch of one? Measured on images of ten
boxes (``bench.speed``'s), ``score_batch([crowd], [pred]).image(0)`` takes 0.38 ms against 0.18 ms for
``score_image``: sorting, block cutting, padding, masks and reassembly cost more than the rules themselves,
and the backend scores one task at a time. The Hungarian assignment and box-in-box parts would still need a
per-image branch. Keeping the rules here and the drivers thin gives one place to change a rule, at no cost to
either path.

Rules, in the order the drivers apply them (thresholds are ``LSMConfig`` fields):

0. ``usable_predictions``: the predictions the rules see (score floor, a positive area, cross-class
   duplicates without ``class_aware``).
1. ``match_candidates``: crowd box and prediction are the same object at IoU >= ``match_iou``.
2. ``box_in_box_parts`` / ``box_in_box``: an unmatched crowd box holding >= 2 confident predictions.
3. ``second_chance_candidates``: an unmatched crowd box and a confident unmatched prediction at IoU >=
   ``loc_min_iou``.
4. ``crowd_findings``: per crowd box its type (clean, localization, background, box-in-box), severity,
   confidence, grade and proposal, using ``localization`` and ``background``.
5. ``second_boxes`` / ``missed_grade``: every prediction left over is a missed object, graded by its score,
   except an unmatched one at IoU >= ``match_iou`` with a crowd box (a second box on a labelled object).

Grades come from ``grade_crowd_instances`` / ``missed_grade``; ``aggregate`` (and its padded form
``aggregate_rows``) pools instance severities into the image discrepancy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from selection.boxes import pair_geometry


class NoiseType(enum.StrEnum):
    """What is wrong with one instance (a crowd box, or a prediction without a crowd box)."""

    CLEAN = "clean"
    BACKGROUND = "background"
    MISSED = "missed"
    LOCALIZATION = "localization"
    BOX_IN_BOX = "box_in_box"


class Grade(enum.StrEnum):
    """How sure the LSM is about an instance's noise, which decides its action."""

    CLEAN = "clean"
    MINOR = "minor"
    MAJOR = "major"
    UNCERTAIN = "uncertain"


class Action(enum.StrEnum):
    """What to do with an instance: keep it, fix it automatically, or send it for expert review."""

    KEEP = "keep"
    AUTO_FIX = "auto_fix"
    REVIEW = "review"


class Aggregation(enum.StrEnum):
    """How instance severities combine into one image discrepancy in [0, 1]."""

    NOISY_OR = "noisy_or"  # 1 - prod(1 - s): a soft maximum that grows with every extra error
    SOFTMAX = "softmax"  # softmax(s / temperature)-weighted mean: between mean and max
    SUM = "sum"  # 1 - exp(-sum s / sum_scale): a monotone squash of the summed severities into [0, 1)
    MEAN = "mean"
    MAX = "max"


# Integer codes (the position in the enum) index these tables; the drivers work on codes.
NOISE_NAMES = np.array([t.value for t in NoiseType])
GRADE_NAMES = np.array([g.value for g in Grade])
ACTION_NAMES = np.array([a.value for a in Action])
T_CLEAN, T_BACKGROUND, T_MISSED, T_LOCALIZATION, T_BOX_IN_BOX = range(len(NoiseType))
G_CLEAN, G_MINOR, G_MAJOR, G_UNCERTAIN = range(len(Grade))
GRADE_ACTION = np.array([0, 1, 1, 2], np.int64)  # clean->keep, minor/major->auto_fix, uncertain->review
GRADE_BY_CODE = tuple(Grade)
GRADE_CODE = {g.value: code for code, g in enumerate(Grade)}


@dataclass(frozen=True)
class LSMConfig:
    """Every threshold of the LSM scorer. IoU/IoA/score values are in [0, 1].

    Attributes:
        match_iou: IoU at which a crowd box and a prediction count as the same object.
        high_iou: IoU at or above which a matched crowd box is clean (no localization error).
        loc_min_iou: lowest IoU at which an unmatched crowd box is read as a badly placed box for a confident
            unmatched prediction (second matching pass); also the IoU at which a prediction fully supports an
            unmatched crowd box. 0.2 since rules revision 2026-12-02 (0.3 before): at 0.3, 42 of 106 and 28 of
            112 displaced crowd boxes of the development seeds' unbought images were read as a box on
            background plus a missed object, 42 of those 70 beside a confident prediction at IoU 0.1-0.3
            (``docs/results/dev-notes-issue7.txt`` section 32).
        score_floor: predictions below this score are ignored.
        confident_score: a prediction at least this confident can drive an automatic fix.
        bib_ioa: share of a prediction's area that must lie inside a crowd box to count as one of its parts.
        background_confidence: ``1 - support`` at or above which a background box is dropped automatically.
        clean_severity: severities below this are graded clean.
        class_aware: only boxes of the same class can match, contain or support each other.
        duplicate_iou: without ``class_aware``, a prediction overlapping a more confident prediction of
            another class at this IoU or more is the same object seen twice (a detector's per-class NMS keeps
            both) and is ignored, like a prediction below ``score_floor``; same-class overlaps are left as
            the detector's NMS left them (but where a crowd box stands, ``second_boxes`` leaves out an
            unmatched prediction of any class at IoU >= ``match_iou`` with it). Unused with ``class_aware``.
        aggregation: how instance severities become the image discrepancy.
        temperature: softmax temperature for ``Aggregation.SOFTMAX`` (> 0; smaller is closer to max).
        sum_scale: for ``Aggregation.SUM``, discrepancy = ``1 - exp(-sum(severity) / sum_scale)``: about
            ``sum_scale`` severe errors give 0.63, three times as many 0.95, so the Data Manager's rounded
            column still tells very noisy images apart. The default aggregation is SUM because it ranks by
            the expected number of errors, which is what an expert's time is worth spending on; measured on
            the quick preset (seed 0), the top 15 % of images by SUM held 227 label errors against 147-161
            for noisy-or/max (oracle: 259), at a slightly lower AUROC for "has any error" (0.91 vs 0.93).
    """

    match_iou: float = 0.5
    high_iou: float = 0.8
    loc_min_iou: float = 0.2
    score_floor: float = 0.1
    confident_score: float = 0.5
    bib_ioa: float = 0.7
    background_confidence: float = 0.9
    clean_severity: float = 0.25
    class_aware: bool = False
    duplicate_iou: float = 0.7
    aggregation: Aggregation = Aggregation.SUM
    temperature: float = 0.1
    sum_scale: float = 3.0

    def __post_init__(self) -> None:
        for name in (
            "match_iou",
            "high_iou",
            "loc_min_iou",
            "score_floor",
            "confident_score",
            "bib_ioa",
            "background_confidence",
            "clean_severity",
        ):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
        if not 0.0 < float(self.duplicate_iou) <= 1.0:
            raise ValueError(f"duplicate_iou: expected a value in (0, 1], got {self.duplicate_iou}")
        if not 0.0 < self.loc_min_iou <= self.match_iou < self.high_iou:
            raise ValueError(
                "loc_min_iou, match_iou, high_iou: expected 0 < loc_min_iou <= match_iou < high_iou, got "
                f"{self.loc_min_iou}, {self.match_iou}, {self.high_iou}"
            )
        if self.score_floor > self.confident_score:
            raise ValueError(
                f"score_floor: expected at most confident_score={self.confident_score}, "
                f"got {self.score_floor}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a positive value, got {self.temperature}")
        if not self.sum_scale > 0:
            raise ValueError(f"sum_scale: expected a positive value, got {self.sum_scale}")
        try:
            object.__setattr__(self, "aggregation", Aggregation(self.aggregation))
        except ValueError:
            raise ValueError(
                f"aggregation: expected one of {[a.value for a in Aggregation]}, got {self.aggregation!r}"
            ) from None


# ------------------------------------------------------------------------------------------- the rules
# Shapes: ``...`` is no axis (one image) or the batch axis; M crowd boxes, K (kept) predictions.


def above_floor(score: np.ndarray, cfg: LSMConfig) -> np.ndarray:
    """bool (K,): scores at least ``score_floor``, compared in float64 as every other score threshold is."""
    return np.asarray(score, np.float64) >= cfg.score_floor


def usable_predictions(
    xyxy: np.ndarray, score: np.ndarray | None, class_id: np.ndarray, cfg: LSMConfig
) -> np.ndarray:
    """The predictions of one image that the rules see: bool (K,).

    A prediction is used when its score is at least ``score_floor`` (compared in float64, as every other
    score threshold is: a float32 score exactly at a threshold float32 rounds down, 0.7 say, is below the
    floor as it is below ``confident_score``, where it used to pass the floor yet not be confident; an
    unscored prediction counts as 1.0), its box has a positive width and height (a zero-area box is no
    object and cannot be drawn), and, without ``class_aware``, it is not the same object as a more
    confident used prediction of another class (IoU >= ``duplicate_iou``, greedy in descending score, ties
    by index). Predictions of one class only are never compared with each other, so a one-class detector's
    predictions lose only the floor's and the empty boxes.

    Args:
        xyxy: float (K, 4) boxes in pixels.
        score: float (K,) scores, or None (every prediction counts as 1.0).
        class_id: int (K,) class ids.
        cfg: thresholds.

    Returns:
        bool (K,), True for a prediction the rules see.
    """
    xyxy = np.asarray(xyxy)
    k = xyxy.shape[0]
    usable = np.ones(k, bool) if score is None else above_floor(score, cfg)
    usable &= (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if cfg.class_aware or k < 2:
        return usable
    idx = np.flatnonzero(usable)
    cls = class_id[idx]
    if idx.size < 2 or cls.min() == cls.max():
        return usable
    order = idx if score is None else idx[np.argsort(-score[idx], kind="stable")]
    first, second = _duplicate_pairs(xyxy[order], class_id[order], cfg.duplicate_iou)
    dropped = np.zeros(order.size, bool)
    for i, j in zip(first.tolist(), second.tolist(), strict=True):  # greedy: a dropped one suppresses nothing
        if not dropped[i]:
            dropped[j] = True
    usable[order[dropped]] = False
    return usable


def _duplicate_pairs(
    xyxy: np.ndarray, class_id: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of boxes of different classes with IoU >= ``threshold`` (> 0), sorted by
    ``i`` then ``j``: only boxes whose x-ranges overlap are compared (a sweep over the left edges), so
    thousands of spread-out boxes (a tiled image) cost about linear time and memory, not K x K."""
    n = xyxy.shape[0]
    by_x = np.argsort(xyxy[:, 0], kind="stable")
    left = xyxy[by_x, 0]
    # For the p-th box by left edge: the later ones (by left edge) that start before it ends.
    start = np.arange(1, n + 1)
    count = np.maximum(np.searchsorted(left, xyxy[by_x, 2], side="left") - start, 0)
    p = np.repeat(np.arange(n), count)
    q = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + np.repeat(start, count)
    a, b = by_x[p], by_x[q]
    keep = class_id[a] != class_id[b]
    a, b = a[keep], b[keep]
    iou, _ = pair_geometry(xyxy[a][:, None, :], xyxy[b][:, None, :])
    hit = iou[:, 0, 0] >= threshold
    i, j = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
    key = np.lexsort((j, i))
    return i[key], j[key]


def same_class_only(
    iou: np.ndarray, ioa: np.ndarray, crowd_class: np.ndarray, pred_class: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``class_aware``: zero the IoU and IoA of pairs of different classes.

    Args:
        iou: float64 (..., M, K).
        ioa: float64 (..., M, K).
        crowd_class: int (..., M) class ids.
        pred_class: int (..., K) class ids.

    Returns:
        ``(iou, ioa)`` with different-class pairs set to 0.
    """
    same = crowd_class[..., :, None] == pred_class[..., None, :]
    return iou * same, ioa * same


def match_candidates(iou: np.ndarray, cfg: LSMConfig) -> np.ndarray:
    """Rule 1: bool (..., M, K), pairs that may be matched as the same object (IoU >= ``match_iou``)."""
    return iou >= cfg.match_iou


def box_in_box_parts(
    iou: np.ndarray, ioa: np.ndarray, confident: np.ndarray, unmatched: np.ndarray, cfg: LSMConfig
) -> np.ndarray:
    """Rule 2, candidates: bool (..., M, K), confident predictions mostly inside an unmatched crowd box.

    Args:
        iou: float64 (..., M, K).
        ioa: float64 (..., M, K), share of each prediction inside each crowd box.
        confident: bool (..., K) predictions with score >= ``confident_score``.
        unmatched: bool (..., M) crowd boxes without a primary match.
        cfg: the thresholds (``bib_ioa``, ``match_iou``).
    """
    return (ioa >= cfg.bib_ioa) & (iou < cfg.match_iou) & confident[..., None, :] & unmatched[..., :, None]


def box_in_box_boxes(parts: np.ndarray) -> np.ndarray:
    """Rule 2: bool (..., M), crowd boxes holding two or more parts (``parts`` from ``box_in_box_parts``)."""
    return parts.sum(axis=-1) >= 2


@dataclass(frozen=True)
class BoxInBox:
    """Rule 2's findings (arrays over the trailing axes of the driver's shapes).

    Attributes:
        box: bool (..., M) the box-in-box crowd boxes.
        part: bool (..., M, K) their parts.
        severity: float64 (..., M) noisy-or of the parts' scores.
        confidence: float64 (..., M) the second-highest part score.
        covered: bool (..., K) predictions mostly inside a box-in-box box (never reported as missed).
        is_part: bool (..., K) predictions that are a part of some box-in-box box.
        owner: int64 (..., K) the crowd box a part belongs to (the one holding most of it).
    """

    box: np.ndarray
    part: np.ndarray
    severity: np.ndarray
    confidence: np.ndarray
    covered: np.ndarray
    is_part: np.ndarray
    owner: np.ndarray


def box_in_box(parts: np.ndarray, ioa: np.ndarray, score: np.ndarray, cfg: LSMConfig) -> BoxInBox | None:
    """Rule 2: crowd boxes drawn around several objects; None when there is none.

    Args:
        parts: bool (..., M, K) from ``box_in_box_parts``.
        ioa: float64 (..., M, K).
        score: float64 (..., K) prediction scores.
        cfg: the thresholds (``bib_ioa``).
    """
    box = box_in_box_boxes(parts)
    if not box.any():
        return None
    part = parts & box[..., :, None]
    part_score = np.where(part, score[..., None, :], 0.0)
    return BoxInBox(
        box=box,
        part=part,
        severity=1.0 - np.prod(1.0 - part_score, axis=-1),
        confidence=np.sort(part_score, axis=-1)[..., -2],  # a box-in-box box has >= 2 parts, so K >= 2
        covered=((ioa >= cfg.bib_ioa) & box[..., :, None]).any(axis=-2),
        is_part=part.any(axis=-2),
        owner=np.argmax(np.where(part, ioa, -1.0), axis=-2),
    )


def second_chance_candidates(
    iou: np.ndarray, rest_crowd: np.ndarray, rest_confident_pred: np.ndarray, cfg: LSMConfig
) -> np.ndarray:
    """Rule 3: bool (..., M, K), badly placed boxes of confident predictions (IoU >= ``loc_min_iou``).

    Args:
        iou: float64 (..., M, K).
        rest_crowd: bool (..., M) crowd boxes neither matched nor box-in-box.
        rest_confident_pred: bool (..., K) confident predictions neither matched nor covered.
        cfg: the thresholds (``loc_min_iou``).
    """
    return (iou >= cfg.loc_min_iou) & rest_crowd[..., :, None] & rest_confident_pred[..., None, :]


def localization(
    match_iou: np.ndarray, match_score: np.ndarray, cfg: LSMConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Localization of matched crowd boxes: ``(fraction, severity)``, float64 (..., M).

    ``fraction = clip((high_iou - IoU) / (high_iou - match_iou), 0, 1)`` (0: clean; 1 for second-chance
    matches, whose IoU is below ``match_iou``) and ``severity = score * fraction``.
    """
    frac = np.clip((cfg.high_iou - match_iou) / (cfg.high_iou - cfg.match_iou), 0.0, 1.0)
    return frac, match_score * frac


def background(iou: np.ndarray, score: np.ndarray, pred_taken: np.ndarray, cfg: LSMConfig) -> np.ndarray:
    """Rule 4, background: float64 (..., M) severity ``1 - support`` of each crowd box.

    The support is ``max score * clip(IoU / loc_min_iou, 0, 1)`` over predictions not matched to a crowd box
    (zero-score padding adds nothing).
    """
    if iou.shape[-1] == 0:
        return np.ones(iou.shape[:-1])
    w = np.clip(iou / cfg.loc_min_iou, 0.0, 1.0) * (score * ~pred_taken)[..., None, :]
    return 1.0 - w.max(axis=-1)


def grade_crowd_instances(
    noise_type: np.ndarray, severity: np.ndarray, confidence: np.ndarray, cfg: LSMConfig
) -> np.ndarray:
    """Grade codes of crowd-box findings (any shape, element-wise).

    Clean below ``clean_severity``; localization ``minor`` when confident, background ``major`` when
    ``confidence >= background_confidence``, box-in-box ``major`` when confident; otherwise ``uncertain``.

    Args:
        noise_type: int noise-type codes (the order of ``NoiseType``).
        severity: float severities in [0, 1].
        confidence: float model confidences in [0, 1].
        cfg: the thresholds.

    Returns:
        int grade codes (the order of ``Grade``), same shape.
    """
    grade = np.where(
        noise_type == T_LOCALIZATION,
        np.where(confidence >= cfg.confident_score, G_MINOR, G_UNCERTAIN),
        np.where(
            noise_type == T_BACKGROUND,
            np.where(confidence >= cfg.background_confidence, G_MAJOR, G_UNCERTAIN),
            np.where(confidence >= cfg.confident_score, G_MAJOR, G_UNCERTAIN),
        ),
    )
    return np.where((severity < cfg.clean_severity) | (noise_type == T_CLEAN), G_CLEAN, grade)


def second_boxes(iou: np.ndarray, pred_taken: np.ndarray, cfg: LSMConfig) -> np.ndarray:
    """Rule 5's exception: bool (..., K) unmatched predictions on an object a crowd box already stands for.

    A prediction left unmatched though it overlaps a crowd box at IoU >= ``match_iou`` lost that box to
    another prediction (a one-to-one match takes every pair it can): it is the detector's second box on an
    object the crowd labelled (a detector's NMS at IoU 0.7 keeps two boxes at 0.5-0.7), not an object the
    crowd missed, and is not reported. Adding it would put a duplicate label on the object.

    Args:
        iou: float64 (..., M, K) crowd boxes against predictions (between classes zeroed with
            ``class_aware``: a box of another class is then still missed).
        pred_taken: bool (..., K) predictions matched to a crowd box.
        cfg: the thresholds (``match_iou``).
    """
    return ~pred_taken & (iou >= cfg.match_iou).any(axis=-2)


def missed_grade(score: np.ndarray, cfg: LSMConfig) -> np.ndarray:
    """Rule 5: grade codes of missed objects (severity = confidence = the prediction's score), any shape."""
    grade = np.where(score >= cfg.confident_score, G_MAJOR, G_UNCERTAIN)
    return np.where(score < cfg.clean_severity, G_CLEAN, grade)


@dataclass(frozen=True)
class CrowdFindings:
    """Rule 4's findings per crowd box, arrays (..., M) (``proposed``: (..., M, 4), NaN rows = drop)."""

    noise_type: np.ndarray
    severity: np.ndarray
    confidence: np.ndarray
    grade: np.ndarray
    proposed: np.ndarray


def _matched(
    iou: np.ndarray, score: np.ndarray, pred_xyxy: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU, score and box of prediction ``index[..., i]`` for each crowd box ``i`` (K >= 1)."""
    if index.ndim == 1:  # one image: plain indexing is several times faster than take_along_axis
        return iou[np.arange(index.shape[0]), index], score[index], pred_xyxy[index]
    return (
        np.take_along_axis(iou, index[..., None], axis=-1)[..., 0],
        np.take_along_axis(score, index, axis=-1),
        np.take_along_axis(pred_xyxy, index[..., None], axis=-2),
    )


def crowd_findings(
    iou: np.ndarray,
    score: np.ndarray,
    crowd_xyxy: np.ndarray,
    pred_xyxy: np.ndarray,
    crowd_pred: np.ndarray,
    pred_taken: np.ndarray,
    bib: BoxInBox | None,
    cfg: LSMConfig,
) -> CrowdFindings:
    """Rule 4: type, severity, confidence, grade and proposed box of every crowd box, after matching.

    A matched crowd box is clean or localization (proposal: the prediction), an unmatched one background
    (proposal: drop), a box-in-box box keeps rule 2's findings (proposal: drop).

    Args:
        iou: float64 (..., M, K).
        score: float64 (..., K).
        crowd_xyxy: float (..., M, 4) crowd boxes.
        pred_xyxy: float (..., K, 4) predictions (same dtype as ``crowd_xyxy``).
        crowd_pred: int64 (..., M) the prediction matched to each crowd box, -1 for none.
        pred_taken: bool (..., K) predictions matched to a crowd box.
        bib: rule 2's findings, or None.
        cfg: the thresholds.
    """
    has_pred = crowd_pred >= 0
    if iou.shape[-1]:
        match_iou, match_score, matched_box = _matched(
            iou, score, pred_xyxy, np.where(has_pred, crowd_pred, 0)
        )
    else:
        match_iou = match_score = np.zeros(crowd_pred.shape)
        matched_box = crowd_xyxy
    loc_frac, loc_sev = localization(match_iou, match_score, cfg)
    bg_sev = background(iou, score, pred_taken, cfg)

    ctype = np.where(has_pred, np.where(loc_frac > 0, T_LOCALIZATION, T_CLEAN), T_BACKGROUND)
    csev = np.where(has_pred, loc_sev, bg_sev)
    cconf = np.where(has_pred, match_score, bg_sev)
    if bib is not None:
        ctype = np.where(bib.box, T_BOX_IN_BOX, ctype)
        csev = np.where(bib.box, bib.severity, csev)
        cconf = np.where(bib.box, bib.confidence, cconf)
    proposed = np.where((has_pred & (ctype != T_CLEAN))[..., None], matched_box, crowd_xyxy)
    proposed[(ctype == T_BACKGROUND) | (ctype == T_BOX_IN_BOX)] = np.nan
    return CrowdFindings(ctype, csev, cconf, grade_crowd_instances(ctype, csev, cconf, cfg), proposed)


# ------------------------------------------------------------------------------------------- pooling


def aggregate(
    severity: np.ndarray,
    aggregation: Aggregation | str,
    *,
    temperature: float = LSMConfig.temperature,
    sum_scale: float = LSMConfig.sum_scale,
) -> float:
    """Combine instance severities into one image discrepancy (the defaults are ``LSMConfig``'s, so that
    ``aggregate(severities, config.aggregation)`` is what ``score_image`` gives under a default config).

    Args:
        severity: float (N,) instance severities in [0, 1].
        aggregation: an ``Aggregation`` (or its value).
        temperature: softmax temperature (> 0), used by ``Aggregation.SOFTMAX`` only.
        sum_scale: severities summed per unit of ``-log(1 - discrepancy)`` (> 0), ``Aggregation.SUM`` only.

    Returns:
        The discrepancy in [0, 1]; 0.0 when ``severity`` is empty.

    Example:
        >>> aggregate(np.array([0.5, 0.5]), "noisy_or")
        0.75
    """
    if severity.size == 0:
        return 0.0
    agg = Aggregation(aggregation)
    if agg is Aggregation.NOISY_OR:
        value = 1.0 - float(np.prod(1.0 - severity))
    elif agg is Aggregation.MAX:
        value = float(severity.max())
    elif agg is Aggregation.MEAN:
        value = float(severity.mean())
    elif agg is Aggregation.SUM:
        value = 1.0 - float(np.exp(-severity.sum() / sum_scale))
    else:
        z = (severity - severity.max()) / temperature
        w = np.exp(z)
        value = float((w * severity).sum() / w.sum())
    return min(1.0, max(0.0, value))


def aggregate_rows(severity: np.ndarray, valid: np.ndarray, cfg: LSMConfig) -> np.ndarray | None:
    """``aggregate`` on each row of padded severities, where padding cannot change the result.

    Noisy-or and max ignore padding (a factor of exactly 1.0, a 0 under a maximum of values >= 0), so they
    are computed for all rows at once; the other aggregations depend on the number and summation order of
    the values, so None tells the caller to run ``aggregate`` on each row's valid values.

    Args:
        severity: float64 (B, N).
        valid: bool (B, N), the rows' real instances.
        cfg: ``aggregation`` is read.

    Returns:
        float64 (B,) discrepancies, or None.
    """
    if cfg.aggregation not in (Aggregation.NOISY_OR, Aggregation.MAX):
        return None
    sev = np.where(valid, severity, 0.0)
    disc = sev.max(axis=1) if cfg.aggregation is Aggregation.MAX else 1.0 - np.prod(1.0 - sev, axis=1)
    return np.minimum(1.0, np.maximum(0.0, disc))
