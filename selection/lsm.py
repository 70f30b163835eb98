"""The Label Selection Module's scorer: per-instance discrepancy, noise type and grade, image discrepancy.

This module holds the result types and the per-image driver (``score_image``); the rules themselves are
written once in ``selection.rules`` and shared with the batched driver ``selection.batch.score_batch``.

For one image, crowd boxes ``C`` (M) are compared with the cleaning model's predictions ``P`` (K, scored).
Predictions below ``LSMConfig.score_floor`` are ignored throughout, as are boxes of zero area and, without
``class_aware``, a prediction that repeats a more confident one of another class at IoU >=
``duplicate_iou`` (``selection.rules.usable_predictions``). The rules, in order:

1. **Match** ``C`` to ``P`` one-to-one (Hungarian on IoU, pairs with IoU >= ``match_iou``).
   A matched pair with IoU >= ``high_iou`` is *clean* (severity 0). Below it, it is *localization* with
   severity ``score * clip((high_iou - IoU) / (high_iou - match_iou), 0, 1)``.
2. **Box-in-box.** An unmatched crowd box that contains (IoA >= ``bib_ioa``, IoU < ``match_iou``) two or more
   confident predictions (score >= ``confident_score``) is *box_in_box*. Its parts may also be matched to
   crowd boxes (the crowd drew the inner boxes as well: those stay clean matches). Severity is the noisy-or
   of the parts' scores, confidence the second-highest part score. Parts not matched to any crowd box are
   reported as model instances of type box_in_box (``parent`` = the crowd box) with the part as proposal:
   applying the correction drops the crowd box and adds these parts. Predictions mostly inside a
   box-in-box box are never reported as missed.
3. **Second chance for localization.** Remaining unmatched crowd boxes and confident unmatched predictions
   are matched again at IoU >= ``loc_min_iou``: *localization* with (saturated) severity ``score``.
4. **Background.** A crowd box still unmatched: the model's support for an object there is
   ``max score * clip(IoU / loc_min_iou, 0, 1)`` over predictions not explained by another crowd box;
   severity = confidence = ``1 - support``. (A box whose only overlapping prediction already matches another
   crowd box, a duplicate, is therefore background.)
5. **Missed.** Every remaining prediction (score >= ``score_floor``): severity = confidence = its score; but
   not one overlapping a crowd box at IoU >= ``match_iou`` (that box is matched to another prediction): it
   is the detector's second box on an object the crowd labelled, and is not reported.

Grades: ``clean`` if severity < ``clean_severity``; otherwise localization is ``minor`` when its prediction is
confident, background ``major`` when ``1 - support >= background_confidence``, missed and box-in-box ``major``
when confident; everything else is ``uncertain``. Actions: clean -> keep, minor/major -> auto_fix,
uncertain -> review. The image grade is the worst instance grade in the order
clean < minor < major < uncertain (uncertain is worst: it needs a person).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selection import rules
from selection.detections import Detections
from selection.matching import assign, pair_geometry
from selection.rules import (
    ACTION_NAMES,
    GRADE_ACTION,
    GRADE_BY_CODE,
    GRADE_NAMES,
    NOISE_NAMES,
    Action,
    Aggregation,
    Grade,
    LSMConfig,
    NoiseType,
    aggregate,
    grade_crowd_instances,
)

__all__ = [
    "Action",
    "Aggregation",
    "Grade",
    "ImageScore",
    "InstanceFindings",
    "LSMConfig",
    "NoiseType",
    "aggregate",
    "check_detections",
    "grade_crowd_instances",
    "score_image",
]


@dataclass(frozen=True)
class InstanceFindings:
    """Per-instance findings of one image: parallel arrays, crowd boxes first (in order), then predictions.

    Attributes:
        source: int8 (N,), 0 for a crowd box, 1 for a model prediction (missed object or box-in-box part).
        index: int64 (N,), index into the crowd (source 0) or the predictions (source 1).
        noise_type: str (N,) ``NoiseType`` values.
        severity: float64 (N,) discrepancy in [0, 1].
        confidence: float64 (N,) the model's confidence behind the finding, in [0, 1].
        grade: str (N,) ``Grade`` values.
        action: str (N,) ``Action`` values.
        proposed_xyxy: float32 (N, 4) pixels: the box after the type's correction (the crowd box itself for
            clean, the prediction for localization, missed and box-in-box parts); NaN rows mean "drop"
            (background and box-in-box crowd boxes).
        parent: int64 (N,), for box-in-box parts the crowd index of the enclosing box, else -1. Parts are
            consequences of their parent: they share its grade and action and are left out of the image
            discrepancy and of ``counts()``.
    """

    source: np.ndarray
    index: np.ndarray
    noise_type: np.ndarray
    severity: np.ndarray
    confidence: np.ndarray
    grade: np.ndarray
    action: np.ndarray
    proposed_xyxy: np.ndarray
    parent: np.ndarray

    def __len__(self) -> int:
        return int(self.source.shape[0])

    @classmethod
    def empty(cls) -> InstanceFindings:
        """No instances (arrays of length 0 with the usual dtypes)."""
        return cls(
            source=np.zeros(0, np.int8),
            index=np.zeros(0, np.int64),
            noise_type=NOISE_NAMES[:0],
            severity=np.zeros(0),
            confidence=np.zeros(0),
            grade=GRADE_NAMES[:0],
            action=ACTION_NAMES[:0],
            proposed_xyxy=np.zeros((0, 4), np.float32),
            parent=np.zeros(0, np.int64),
        )

    def counts(self) -> dict[NoiseType, int]:
        """Number of instances per noise type (box-in-box parts not counted), every type present."""
        primary = self.noise_type[self.parent < 0]
        return {t: int(np.count_nonzero(primary == t.value)) for t in NoiseType}

    def grade_counts(self) -> dict[Grade, int]:
        """Number of instances per grade (box-in-box parts not counted), every grade present."""
        primary = self.grade[self.parent < 0]
        return {g: int(np.count_nonzero(primary == g.value)) for g in Grade}


@dataclass(frozen=True)
class ImageScore:
    """The LSM's verdict on one image.

    Attributes:
        discrepancy: aggregate of instance severities in [0, 1]; 0 for an image with nothing to compare.
        grade: the worst instance grade (clean < minor < major < uncertain); clean when there are none.
        instances: the per-instance findings.
        n_crowd: number of crowd boxes scored (M).
        n_pred: number of predictions given (K, before the score floor).
    """

    discrepancy: float
    grade: Grade
    instances: InstanceFindings
    n_crowd: int
    n_pred: int


_EMPTY_FINDINGS = InstanceFindings.empty()


def _score(crowd: Detections, pred: Detections, cfg: LSMConfig) -> ImageScore:
    """The per-image driver of ``selection.rules``; inputs are trusted ``Detections``."""
    m = crowd.xyxy.shape[0]
    n_pred = pred.xyxy.shape[0]
    keep_pred = np.flatnonzero(rules.usable_predictions(pred.xyxy, pred.score, pred.class_id, cfg))
    score = np.ones(keep_pred.shape[0]) if pred.score is None else pred.score[keep_pred].astype(np.float64)
    k = keep_pred.shape[0]
    if m == 0 and k == 0:
        return ImageScore(0.0, Grade.CLEAN, _EMPTY_FINDINGS, 0, n_pred)
    pxyxy = pred.xyxy[keep_pred]
    iou, ioa = pair_geometry(crowd.xyxy, pxyxy)
    if cfg.class_aware:
        iou, ioa = rules.same_class_only(iou, ioa, crowd.class_id, pred.class_id[keep_pred])
    confident = score >= cfg.confident_score

    # 1. Primary one-to-one match (Hungarian); a tiny score term prefers the confident of two equal-IoU
    # predictions.
    rows, cols = assign(iou + 1e-6 * score[None, :], rules.match_candidates(iou, cfg))
    crowd_pred = np.full(m, -1, np.int64)
    crowd_pred[rows] = cols
    pred_taken = np.zeros(k, bool)
    pred_taken[cols] = True
    unmatched = crowd_pred < 0

    # 2. Box-in-box.
    bib = rules.box_in_box(rules.box_in_box_parts(iou, ioa, confident, unmatched, cfg), ioa, score, cfg)

    # 3. Second chance for badly placed boxes (Hungarian again).
    rest_crowd = unmatched if bib is None else unmatched & ~bib.box
    rest_pred = ~pred_taken if bib is None else ~pred_taken & ~bib.covered
    if rest_crowd.any() and rest_pred.any():
        valid2 = rules.second_chance_candidates(iou, rest_crowd, rest_pred & confident, cfg)
        rows2, cols2 = assign(iou, valid2)
        crowd_pred[rows2] = cols2
        pred_taken[cols2] = True

    # 4. Crowd boxes: clean, localization, background, box-in-box.
    c = rules.crowd_findings(iou, score, crowd.xyxy, pxyxy, crowd_pred, pred_taken, bib, cfg)

    # 5. Model instances: missed predictions and box-in-box parts nobody drew.
    second = rules.second_boxes(iou, pred_taken, cfg)
    model_mask = ~pred_taken & ~second
    if bib is not None:
        free_part = bib.is_part & ~pred_taken & ~second  # a second box on a drawn part is no part to add
        model_mask = (model_mask & ~bib.covered) | free_part
    midx = np.flatnonzero(model_mask)
    msev = score[midx]
    mtype = np.full(midx.shape[0], rules.T_MISSED)
    mgrade = rules.missed_grade(msev, cfg)
    mparent = np.full(midx.shape[0], -1, np.int64)
    if bib is not None:
        sel = free_part[midx]
        mtype[sel] = rules.T_BOX_IN_BOX
        mparent[sel] = bib.owner[midx[sel]]
        mgrade[sel] = c.grade[mparent[sel]]  # parts share their parent's grade

    grade_codes = np.concatenate([c.grade, mgrade])
    sev = np.concatenate([c.severity, msev])
    primary = np.concatenate([np.ones(m, bool), mparent < 0])
    findings = InstanceFindings(
        source=np.concatenate([np.zeros(m, np.int8), np.ones(midx.shape[0], np.int8)]),
        index=np.concatenate([np.arange(m), keep_pred[midx]]).astype(np.int64),
        noise_type=NOISE_NAMES[np.concatenate([c.noise_type, mtype])],
        severity=sev,
        confidence=np.concatenate([c.confidence, msev]),
        grade=GRADE_NAMES[grade_codes],
        action=ACTION_NAMES[GRADE_ACTION[grade_codes]],
        proposed_xyxy=np.concatenate([c.proposed, pxyxy[midx]]).astype(np.float32, copy=False),
        parent=np.concatenate([np.full(m, -1, np.int64), mparent]),
    )
    discrepancy = aggregate(
        sev[primary], cfg.aggregation, temperature=cfg.temperature, sum_scale=cfg.sum_scale
    )
    grade = GRADE_BY_CODE[int(grade_codes.max())] if grade_codes.size else Grade.CLEAN
    return ImageScore(discrepancy, grade, findings, m, n_pred)


def check_detections(name: str, value: object) -> Detections:
    """``value`` if it is ``Detections``, else TypeError naming ``name``."""
    if not isinstance(value, Detections):
        raise TypeError(f"{name}: expected Detections, got {type(value).__name__}")
    return value


def score_image(crowd: Detections, pred: Detections, *, config: LSMConfig | None = None) -> ImageScore:
    """Score one image: noise type, severity and grade of every instance, and the image discrepancy.

    Args:
        crowd: M crowd boxes (pixels; scores ignored).
        pred: K predictions of the cleaning model (pixels, scores in [0, 1]; unscored boxes count as 1.0).
        config: thresholds and aggregation; ``LSMConfig()`` when None.

    Returns:
        The image's ``ImageScore``; its ``instances`` hold the M crowd boxes first, then the predictions
        reported as missed objects or box-in-box parts.

    Raises:
        TypeError: if ``crowd`` or ``pred`` is not ``Detections``.

    Example:
        A crowd box shifted by 5 px from a confident prediction (IoU 0.6) and an object the crowd missed:

        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[105, 100, 125, 120], [10, 10, 30, 30]]), np.array([0, 0]),
        ...                   score=np.array([0.9, 0.7]))
        >>> s = score_image(crowd, pred)
        >>> s.instances.noise_type.tolist(), s.instances.action.tolist()
        (['localization', 'missed'], ['auto_fix', 'auto_fix'])
        >>> s.instances.severity.round(2).tolist(), s.grade.value, round(s.discrepancy, 3)
        ([0.6, 0.7], 'major', 0.352)
    """
    cfg = config or LSMConfig()
    return _score(check_detections("crowd", crowd), check_detections("pred", pred), cfg)
