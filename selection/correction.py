"""Noise-graded correction of crowd labels from the LSM's findings, optionally confirmed by a consensus model.

``plan_corrections`` decides, once, what happens to every instance of an image (an ``Edit`` and the box it
leaves); ``correct_labels`` applies that plan, and the Label Studio backend renders the same plan as the
regions an annotator sees (``backend.protocol.proposals_from_score``), so the two cannot drift apart.

Each instance is handled by its ``Action``:

- ``keep``: the crowd box stays as it is (a clean prediction-only instance adds nothing);
- ``auto_fix``: localization -> the crowd box takes the prediction's coordinates (class unchanged);
  background -> the crowd box is dropped; missed -> the prediction is added; box-in-box -> the crowd box is
  dropped and its confident parts that no crowd box covers are added;
- ``review``: left unchanged and returned in ``Correction.flagged``.

With a ``consensus`` model (predictions of a second, independently trained model), an automatic fix is applied
only when the consensus agrees; otherwise the instance is left unchanged, flagged and counted as vetoed.
Consensus boxes below ``config.score_floor`` are ignored (unscored boxes count as score 1). The rules:

- drop (background): no consensus box with score >= ``confident_score`` has IoU >= ``loc_min_iou`` with the
  crowd box;
- add (missed): some consensus box has IoU >= ``match_iou`` with the prediction;
- move (localization): the best consensus IoU with the proposed box is >= ``match_iou`` and higher than the
  best consensus IoU with the crowd box (the consensus sides with the prediction);
- split (box-in-box): at least two consensus boxes lie inside the crowd box (IoA >= ``bib_ioa``, IoU <
  ``match_iou``).

With ``config.class_aware`` only consensus boxes of the instance's class count.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from selection.boxes import pair_geometry
from selection.detections import Detections
from selection.lsm import Action, ImageScore, InstanceFindings, LSMConfig, NoiseType


class Edit(enum.StrEnum):
    """What the correction does with one instance."""

    KEEP = "keep"  # the crowd box stays as drawn
    MOVE = "move"  # the crowd box takes the proposed coordinates (localization)
    DROP = "drop"  # the crowd box is removed (background)
    SPLIT = "split"  # the crowd box is removed and its parts are added (box-in-box)
    ADD = "add"  # the prediction is added (a missed object, or a part of a split box)
    REVIEW = (
        "review"  # left as it is and flagged for an expert (a crowd box stays; a prediction is not added)
    )
    NONE = "none"  # a prediction nothing is done with (clean, or a part of a box that is not split)


_EDIT_NAMES = np.array([e.value for e in Edit])
_KEEP, _MOVE, _DROP, _SPLIT, _ADD, _REVIEW, _NONE = range(len(Edit))


@dataclass(frozen=True)
class CorrectionPlan:
    """What the correction does with each instance of one image; arrays parallel to ``findings``.

    Attributes:
        findings: the ``ImageScore.instances`` the plan was made from.
        edit: str (N,) ``Edit`` values.
        xyxy: float32 (N, 4) pixels, the instance's box once the plan is applied: the new box for ``move``,
            the prediction for ``add`` and for a prediction under ``review``, otherwise the crowd box (for
            ``drop`` and ``split`` the box that goes); NaN rows for ``none``.
        class_id: int64 (N,) the instance's class (the crowd box's, or the prediction's).
        vetoed: bool (N,) automatic fixes the consensus refused (their edit is ``review``).
    """

    findings: InstanceFindings
    edit: np.ndarray
    xyxy: np.ndarray
    class_id: np.ndarray
    vetoed: np.ndarray

    def __len__(self) -> int:
        return int(self.edit.shape[0])

    def labels_mask(self) -> np.ndarray:
        """bool (N,) instances whose box is in the corrected labels (kept, moved, under review, added)."""
        crowd = self.findings.source == 0
        stays = (
            (self.edit == Edit.KEEP.value) | (self.edit == Edit.MOVE.value) | (self.edit == Edit.REVIEW.value)
        )
        return (crowd & stays) | (self.edit == Edit.ADD.value)


@dataclass(frozen=True)
class Correction:
    """Corrected labels of one image.

    Attributes:
        labels: the corrected boxes (unscored): surviving crowd boxes in their original order (moved ones
            with new coordinates), then the added boxes in instance order.
        flagged: boxes left for expert review (crowd boxes or predictions as they are), scored with the
            instance severity.
        counts: ``kept`` (crowd boxes unchanged), ``moved``, ``dropped`` (background boxes removed),
            ``split`` (box-in-box boxes replaced by parts), ``added`` (missed boxes and parts added),
            ``flagged``, ``vetoed`` (fixes the consensus refused; those are also flagged).
        flagged_rows: int64 (F,) the instance (row of ``ImageScore.instances``) each flagged box stands for.
    """

    labels: Detections
    flagged: Detections
    counts: dict[str, int]
    flagged_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _consensus_votes(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    consensus: Detections,
    cfg: LSMConfig,
) -> np.ndarray:
    """bool (N,) per instance: does the consensus agree with the instance's proposed fix?"""
    f = score.instances
    n = len(f)
    cscore = np.ones(len(consensus)) if consensus.score is None else consensus.score.astype(np.float64)
    cons = consensus.subset(cscore >= cfg.score_floor)
    cscore = cscore[cscore >= cfg.score_floor]
    if len(cons) == 0:
        # Nothing there: the consensus agrees only with drops.
        return np.asarray(f.noise_type == NoiseType.BACKGROUND.value)
    from_crowd = f.source == 0
    # The instance's current box (the crowd box, or the prediction for model instances) and its class.
    own = np.empty((n, 4), np.float32)
    own[from_crowd] = crowd.xyxy[f.index[from_crowd]]
    own[~from_crowd] = pred.xyxy[f.index[~from_crowd]]
    cls = np.empty(n, np.int64)
    cls[from_crowd] = crowd.class_id[f.index[from_crowd]]
    cls[~from_crowd] = pred.class_id[f.index[~from_crowd]]
    proposed = np.where(np.isnan(f.proposed_xyxy), own, f.proposed_xyxy)
    iou_own, ioa_own = pair_geometry(own, cons.xyxy)
    iou_prop, _ = pair_geometry(proposed, cons.xyxy)
    if cfg.class_aware:
        same = cls[:, None] == cons.class_id[None, :]
        iou_own, ioa_own, iou_prop = iou_own * same, ioa_own * same, iou_prop * same
    best_own = iou_own.max(axis=1)
    best_prop = iou_prop.max(axis=1)
    drop_ok = ~((iou_own >= cfg.loc_min_iou) & (cscore >= cfg.confident_score)[None, :]).any(axis=1)
    add_ok = best_own >= cfg.match_iou
    move_ok = (best_prop >= cfg.match_iou) & (best_prop > best_own)
    split_ok = ((ioa_own >= cfg.bib_ioa) & (iou_own < cfg.match_iou)).sum(axis=1) >= 2
    t = f.noise_type
    return np.select(
        [
            t == NoiseType.BACKGROUND.value,
            t == NoiseType.MISSED.value,
            t == NoiseType.LOCALIZATION.value,
            (t == NoiseType.BOX_IN_BOX.value) & from_crowd,
        ],
        [drop_ok, add_ok, move_ok, split_ok],
        default=True,
    )


def _check_score(crowd: Detections, pred: Detections, score: ImageScore) -> None:
    f = score.instances
    m = len(crowd)
    if score.n_crowd != m or score.n_pred != len(pred):
        raise ValueError(
            f"score: expected a score of {m} crowd boxes and {len(pred)} predictions, got one of "
            f"{score.n_crowd} and {score.n_pred}"
        )
    if int((f.source == 0).sum()) != m or (len(f) > m and int(f.index[m:].max()) >= len(pred)):
        raise ValueError("score: its instances do not index these crowd boxes and predictions")


def plan_corrections(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    *,
    consensus: Detections | None = None,
    config: LSMConfig | None = None,
) -> CorrectionPlan:
    """Decide what the correction does with each instance of one image (the rules in the module docstring).

    Args:
        crowd: M crowd boxes, the ones ``score`` was computed from.
        pred: K predictions of the cleaning model, the ones ``score`` was computed from.
        score: ``score_image(crowd, pred, config=config)``.
        consensus: predictions of a second, independently trained model; when given, a fix is planned only
            if it agrees.
        config: thresholds (the consensus rules use them); ``LSMConfig()`` when None.

    Returns:
        One entry per instance of ``score.instances``, in the same order.

    Raises:
        ValueError: if ``score`` was not computed from ``crowd`` and ``pred`` (sizes or indices disagree).

    Example:
        A crowd box 5 px off a confident prediction is moved onto it; a far crowd box is dropped:

        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120], [300, 300, 320, 320]]), np.array([0, 0]))
        >>> pred = Detections(np.array([[105, 100, 125, 120]]), np.array([0]), score=np.array([0.9]))
        >>> plan = plan_corrections(crowd, pred, score_image(crowd, pred))
        >>> plan.edit.tolist(), plan.xyxy[0].tolist()
        (['move', 'drop'], [105.0, 100.0, 125.0, 120.0])
    """
    cfg = config or LSMConfig()
    _check_score(crowd, pred, score)
    f = score.instances
    m = len(crowd)
    from_crowd = f.source == 0

    fix = f.action == Action.AUTO_FIX.value
    review = f.action == Action.REVIEW.value
    vetoed = np.zeros(len(f), bool)
    if consensus is not None and fix.any():
        agree = _consensus_votes(crowd, pred, score, consensus, cfg)
        vetoed = fix & ~agree & (f.parent < 0)
        fix = fix & agree
    # Box-in-box parts follow their parent's fate.
    part = f.parent >= 0
    if part.any():
        fix[part] = fix[f.parent[part]]
        vetoed[part] = False
        review[part] = False

    t = f.noise_type
    flag = review | vetoed
    code = np.where(from_crowd, _KEEP, _NONE)
    code[from_crowd & fix & (t == NoiseType.LOCALIZATION.value)] = _MOVE
    code[from_crowd & fix & (t == NoiseType.BACKGROUND.value)] = _DROP
    code[from_crowd & fix & (t == NoiseType.BOX_IN_BOX.value)] = _SPLIT
    code[~from_crowd & fix] = _ADD
    code[flag] = _REVIEW
    edit = _EDIT_NAMES[code]

    own = np.concatenate([crowd.xyxy, pred.xyxy[f.index[m:]]])
    xyxy = np.where((edit == Edit.MOVE.value)[:, None], f.proposed_xyxy, own)
    xyxy[edit == Edit.NONE.value] = np.nan
    return CorrectionPlan(
        findings=f,
        edit=edit,
        xyxy=xyxy.astype(np.float32, copy=False),
        class_id=np.concatenate([crowd.class_id, pred.class_id[f.index[m:]]]),
        vetoed=vetoed,
    )


def correct_labels(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    *,
    consensus: Detections | None = None,
    config: LSMConfig | None = None,
) -> Correction:
    """Apply the LSM's graded corrections to one image's crowd labels (``plan_corrections``, applied).

    Args:
        crowd: M crowd boxes, the ones ``score`` was computed from.
        pred: K predictions of the cleaning model, the ones ``score`` was computed from.
        score: ``score_image(crowd, pred, config=config)``.
        consensus: predictions of a second, independently trained model; when given, a fix is applied only
            if it agrees (rules in the module docstring).
        config: thresholds (the consensus rules use them); ``LSMConfig()`` when None.

    Returns:
        The corrected labels, the boxes flagged for review and the counts of what was done. When every
        instance is kept, ``labels`` has exactly the crowd's boxes and classes.

    Raises:
        ValueError: if ``score`` was not computed from ``crowd`` and ``pred`` (sizes or indices disagree).

    Example:
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120], [300, 300, 320, 320]]), np.array([0, 0]))
        >>> pred = Detections(np.array([[105, 100, 125, 120], [10, 10, 30, 30]]), np.array([0, 1]),
        ...                   score=np.array([0.9, 0.8]))
        >>> fixed = correct_labels(crowd, pred, score_image(crowd, pred))
        >>> fixed.labels.xyxy.tolist(), fixed.labels.class_id.tolist()
        ([[105.0, 100.0, 125.0, 120.0], [10.0, 10.0, 30.0, 30.0]], [0, 1])
        >>> {k: v for k, v in fixed.counts.items() if v}
        {'moved': 1, 'dropped': 1, 'added': 1}
    """
    plan = plan_corrections(crowd, pred, score, consensus=consensus, config=config)
    from_crowd = plan.findings.source == 0
    edit = plan.edit
    keep = plan.labels_mask()
    flag = edit == Edit.REVIEW.value
    labels = Detections(plan.xyxy[keep], plan.class_id[keep])
    flagged = Detections(
        xyxy=plan.xyxy[flag],
        class_id=plan.class_id[flag],
        score=np.clip(plan.findings.severity[flag], 0.0, 1.0).astype(np.float32),
    )
    counts = {
        "kept": int((from_crowd & ((edit == Edit.KEEP.value) | flag)).sum()),
        "moved": int((edit == Edit.MOVE.value).sum()),
        "dropped": int((edit == Edit.DROP.value).sum()),
        "split": int((edit == Edit.SPLIT.value).sum()),
        "added": int((edit == Edit.ADD.value).sum()),
        "flagged": int(flag.sum()),
        "vetoed": int(plan.vetoed.sum()),
    }
    return Correction(labels=labels, flagged=flagged, counts=counts, flagged_rows=np.flatnonzero(flag))
