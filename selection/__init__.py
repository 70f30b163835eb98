"""The Label Selection Module: matching, discrepancy, grading, selection and correction (numpy only)."""

from selection.boxes import box_ioa, box_iou
from selection.detections import Detections

__all__ = ["Detections", "box_ioa", "box_iou"]
