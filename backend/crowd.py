"""A task's crowd labels as the scorer sees them: one fused set of boxes and the annotators behind each box.

``CROWD_SOURCE=field``: the ``data.crowd_labels`` records. When every record of a task names its
``annotator`` (as ``python -m backend.ingest`` writes them for input with several annotators) they are fused
per annotator like annotations are; otherwise they are taken as they are (agreement unknown).

``CROWD_SOURCE=annotations``: the task's annotations by crowd users (``backend.roles``), the most recent one
per user, each turned into boxes; then ``selection.consensus.merge_annotators``. A task nobody of the crowd
annotated has no crowd boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.labelconfig import LabelSchema
from backend.roles import CrowdPolicy, UserDirectory, annotation_email
from backend.settings import ExpertPolicy
from formats.labelstudio import CROWD_FIELD, crowd_labels_to_detections, regions_to_detections
from selection.consensus import merge_annotators
from selection.detections import Detections

__all__ = ["CrowdLabels", "CrowdReader"]


@dataclass(frozen=True)
class CrowdLabels:
    """One task's crowd boxes after fusion.

    Attributes:
        detections: the M crowd boxes (pixels; class ids are label indices of the config).
        votes: int64 (M,) annotators agreeing on each box, or None when the source does not say who drew
            what.
        annotators: crowd annotators of the task (0 when unknown).
        labelled: whether the crowd labelled the task at all: False without a ``crowd_labels`` field, or
            without a crowd annotation; a labelled task may have no box (the crowd saw nothing on it).
    """

    detections: Detections
    votes: np.ndarray | None = None
    annotators: int = 0
    labelled: bool = True

    @property
    def agreement(self) -> np.ndarray | None:
        """float64 (M,) share of the task's annotators agreeing on each box (``selection.calibration``'s
        ``agreement`` feature), or None when unknown."""
        if self.votes is None or self.annotators <= 0:
            return None
        return self.votes.astype(np.float64) / float(self.annotators)


class CrowdReader:
    """Reads :class:`CrowdLabels` from Label Studio tasks under the configured policy.

    Args:
        crowd: the crowd policy (``CROWD_*``).
        expert: the expert policy (``all_but_experts`` is its complement).
        users: resolves ``completed_by`` ids the annotation does not explain (None: no Label Studio API).
    """

    def __init__(self, crowd: CrowdPolicy, expert: ExpertPolicy, *, users: UserDirectory | None) -> None:
        self.crowd = crowd
        self.expert = expert
        self.users = users

    def read(self, task: Mapping[str, Any], *, width: int, height: int, schema: LabelSchema) -> CrowdLabels:
        """The task's crowd labels.

        Raises:
            ValueError: malformed ``crowd_labels`` records or crowd regions (the message names the field).
        """
        if self.crowd.from_annotations:
            per_user = self._annotations(task, width=width, height=height, schema=schema)
            return self._fuse(per_user)
        records = (task.get("data") or {}).get(CROWD_FIELD)
        if records is None:
            return CrowdLabels(Detections.empty(), labelled=False)
        detections = crowd_labels_to_detections(
            records, width=width, height=height, label_to_id=schema.label_ids
        )
        if not records or not all(r.get("annotator") is not None for r in records):
            return CrowdLabels(detections)
        groups: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            groups.setdefault(str(rec.get("annotator")), []).append(i)
        return self._fuse([detections.subset(np.array(idx, np.int64)) for idx in groups.values()])

    def _fuse(self, per_annotator: Sequence[Detections]) -> CrowdLabels:
        if not per_annotator:
            return CrowdLabels(Detections.empty(), np.zeros(0, np.int64), 0, labelled=False)
        merged, votes = merge_annotators(
            per_annotator, iou=self.crowd.merge_iou, min_votes=self.crowd.min_votes
        )
        return CrowdLabels(merged, votes, len(per_annotator))

    def _author(self, annotation: Mapping[str, Any]) -> str | None:
        if self.users is not None:
            return self.users.author_email(annotation)
        return annotation_email(annotation)

    def _annotations(
        self, task: Mapping[str, Any], *, width: int, height: int, schema: LabelSchema
    ) -> list[Detections]:
        """The latest crowd annotation of each crowd user, as boxes (users in order of first annotation)."""
        latest: dict[str, Mapping[str, Any]] = {}
        for ann in task.get("annotations") or []:
            if not isinstance(ann, Mapping):
                continue
            email = self._author(ann)
            if not self.crowd.is_crowd(ann, expert=self.expert, user_email=email):
                continue
            key = email or f"user-{ann.get('completed_by')}"
            when = (str(ann.get("updated_at") or ""), int(ann.get("id") or 0))
            old = latest.get(key)
            if old is None or when >= (str(old.get("updated_at") or ""), int(old.get("id") or 0)):
                latest[key] = ann
        out = []
        for ann in latest.values():
            try:
                dets = regions_to_detections(
                    ann.get("result") or [],
                    label_to_id=schema.label_ids,
                    width=width,
                    height=height,
                    from_name=schema.from_name,
                )
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"crowd annotation {ann.get('id', '?')}: {exc}") from None
            out.append(dets)
        return out
