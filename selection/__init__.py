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

__all__ = [
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
