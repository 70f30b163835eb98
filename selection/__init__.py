"""The Label Selection Module: matching, discrepancy, grading, selection and correction (numpy only)."""

from selection.batch import BatchScores, score_batch, score_images
from selection.boxes import box_ioa, box_iou
from selection.correction import Correction, CorrectionPlan, Edit, correct_labels, plan_corrections
from selection.detections import Detections
from selection.lsm import (
    Action,
    Aggregation,
    Grade,
    ImageScore,
    InstanceFindings,
    LSMConfig,
    NoiseType,
    aggregate,
    score_image,
)
from selection.matching import Match, match_boxes
from selection.strategies import Strategy, image_features, model_uncertainty, select

RULES_REVISION = "2026-12-02"
"""The revision of the LSM's rules and of the calibration: changed with every change that can move a finding,
a grade, a calibrated probability or a correction, so that the benchmark's ``results.json`` says which rules
produced it (``meta["rules"]``) and its pooled figures pool runs of one revision only. Runs recording none
predate 2026-12-01, which brought stratified calibration folds, ``crowd_overlap`` on images with one crowd
box, and no ``missed`` finding for a second box on an object a crowd box stands for. 2026-12-02: the second
matching pass reads a crowd box as badly placed from IoU 0.2 with a confident unmatched prediction
(``LSMConfig.loc_min_iou``, 0.3 before). Kept at 2026-12-02: the score floor compared in float64 like every
other score threshold (it was float32), which moves nothing but a score exactly at a threshold float32 rounds
down (0.7, not the defaults 0.1 and 0.5)."""

__all__ = [
    "RULES_REVISION",
    "Action",
    "Aggregation",
    "BatchScores",
    "Correction",
    "CorrectionPlan",
    "Detections",
    "Edit",
    "Grade",
    "ImageScore",
    "InstanceFindings",
    "LSMConfig",
    "Match",
    "NoiseType",
    "Strategy",
    "aggregate",
    "box_ioa",
    "box_iou",
    "correct_labels",
    "image_features",
    "match_boxes",
    "model_uncertainty",
    "plan_corrections",
    "score_batch",
    "score_image",
    "score_images",
    "select",
]
