"""Noise-graded correction of crowd labels from the LSM's findings, optionally confirmed by a consensus model.

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

from dataclasses import dataclass

import numpy as np

from selection.detections import Detections
from selection.lsm import Action, ImageScore, LSMConfig, NoiseType
from selection.matching import pair_geometry


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
    """

    labels: Detections
    flagged: Detections
    counts: dict[str, int]


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


def correct_labels(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    *,
    consensus: Detections | None = None,
    config: LSMConfig | None = None,
) -> Correction:
    """Apply the LSM's graded corrections to one image's crowd labels.

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
    """
    cfg = config or LSMConfig()
    f = score.instances
    m = len(crowd)
    if score.n_crowd != m or score.n_pred != len(pred):
        raise ValueError(
            f"score: expected a score of {m} crowd boxes and {len(pred)} predictions, got one of "
            f"{score.n_crowd} and {score.n_pred}"
        )
    from_crowd = f.source == 0
    if int(from_crowd.sum()) != m or (len(f) > m and int(f.index[m:].max()) >= len(pred)):
        raise ValueError("score: its instances do not index these crowd boxes and predictions")

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

    t = f.noise_type[:m]
    cfix = fix[:m]
    move = cfix & (t == NoiseType.LOCALIZATION.value)
    drop = cfix & (t == NoiseType.BACKGROUND.value)
    split = cfix & (t == NoiseType.BOX_IN_BOX.value)
    add = fix[m:] & ~from_crowd[m:]
    flag = review | vetoed

    xyxy = crowd.xyxy
    if move.any():
        xyxy = xyxy.copy()
        xyxy[move] = f.proposed_xyxy[:m][move]
    survive = ~(drop | split)
    add_idx = f.index[m:][add]
    labels = Detections.concat(
        [
            Detections(xyxy[survive], crowd.class_id[survive]),
            Detections(f.proposed_xyxy[m:][add], pred.class_id[add_idx]),
        ]
    )
    flagged_crowd = flag[:m]
    flagged_model = flag[m:]
    flagged = Detections(
        xyxy=np.concatenate([crowd.xyxy[flagged_crowd], pred.xyxy[f.index[m:][flagged_model]]]),
        class_id=np.concatenate([crowd.class_id[flagged_crowd], pred.class_id[f.index[m:][flagged_model]]]),
        score=np.clip(f.severity[flag], 0.0, 1.0).astype(np.float32),
    )
    counts = {
        "kept": int((survive & ~move).sum()),
        "moved": int(move.sum()),
        "dropped": int(drop.sum()),
        "split": int(split.sum()),
        "added": int(add.sum()),
        "flagged": int(flag.sum()),
        "vetoed": int(vetoed.sum()),
    }
    return Correction(labels=labels, flagged=flagged, counts=counts)
