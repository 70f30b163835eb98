"""Import a folder of images with crowd labels (and optional expert labels) into a Label Studio project.

``python -m backend.ingest --help``; the steps as functions: :func:`plan_import` reads and checks every input
(no Label Studio), :func:`run_import` creates or fills the project through the SDK.
"""

from backend.ingest.importer import ImportReport, LabelStudioError, run_import
from backend.ingest.plan import ImportPlan, PlannedImage, build_task, plan_import
from backend.ingest.sources import IngestError, InputFormat

__all__ = [
    "ImportPlan",
    "ImportReport",
    "IngestError",
    "InputFormat",
    "LabelStudioError",
    "PlannedImage",
    "build_task",
    "plan_import",
    "run_import",
]
