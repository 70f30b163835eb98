"""Expert cost in instance decisions, and the oracle that answers reviews (benchmark only: reads experts).

Two units of expert cost are counted for every arm:

- **images re-annotated** (the paper's unit);
- **instance decisions**: in a re-annotated image, one per crowd box (the expert confirms, moves or deletes
  it) plus one per box the expert draws; for every instance sent to review (``Correction.flagged``), one for
  the review, plus one for each extra box drawn when a reviewed box-in-box box is split.

Matching is class-agnostic: crowd and expert boxes are matched one-to-one at IoU >= 0.5; a matched crowd box
below ``MOVE_IOU`` is one the expert moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selection.detections import Detections
from selection.matching import assign, match_boxes, pair_geometry

MOVE_IOU = 0.8  # a matched crowd box below this IoU with the expert box counts as one the expert moved
REVIEW_NEAR_IOU = 0.1  # a reviewed box overlapping an expert box this much is read as meant for it
REVIEW_MATCH_IOU = 0.5  # a reviewed model box is added when it matches a still unlabelled expert box
REVIEW_BIB_IOA = 0.7  # an expert box this much inside a reviewed box is one of its parts


@dataclass(frozen=True)
class Decisions:
    """What an expert does to turn one image's crowd boxes into the expert boxes."""

    confirmed: int
    moved: int
    deleted: int
    drawn: int

    @property
    def total(self) -> int:
        """Every instance decision: one per crowd box and one per box drawn."""
        return self.confirmed + self.moved + self.deleted + self.drawn

    @property
    def touched(self) -> int:
        """Boxes changed: moved, deleted or drawn (confirmed ones are not)."""
        return self.moved + self.deleted + self.drawn


def instance_decisions(crowd: Detections, expert: Detections) -> Decisions:
    """The instance decisions of re-annotating one image.

    Args:
        crowd: the crowd boxes the expert starts from, pixels.
        expert: the expert's boxes of the same image, pixels.

    Returns:
        Confirmed (matched, IoU >= ``MOVE_IOU``), moved (matched below it), deleted (unmatched crowd) and
        drawn (unmatched expert) counts.
    """
    m = match_boxes(crowd, expert, iou_threshold=0.5)
    moved = int(np.sum(m.iou < MOVE_IOU))
    return Decisions(
        confirmed=len(m) - moved,
        moved=moved,
        deleted=len(m.unmatched_crowd),
        drawn=len(m.unmatched_pred),
    )


@dataclass(frozen=True)
class ReviewOutcome:
    """What the oracle did with the instances of one image sent to review.

    Attributes:
        reviewed: instances reviewed (each one decision).
        replaced: reviewed boxes replaced by the expert box they stand for (moved or confirmed).
        deleted: reviewed boxes deleted.
        split: reviewed boxes replaced by the two or more expert boxes inside them.
        added: reviewed model boxes added (as the expert box they match).
        extra_drawn: boxes drawn beyond the first when splitting (one decision each).
    """

    reviewed: int = 0
    replaced: int = 0
    deleted: int = 0
    split: int = 0
    added: int = 0
    extra_drawn: int = 0

    @property
    def decisions(self) -> int:
        """Instance decisions the review cost."""
        return self.reviewed + self.extra_drawn


def review(labels: Detections, flagged: Detections, expert: Detections) -> tuple[Detections, ReviewOutcome]:
    """Answer the reviews of one image as an expert would, from the expert's boxes.

    ``labels`` and ``flagged`` are a ``Correction``'s: a flagged crowd box is left unchanged in the labels
    (found there by its exact coordinates); a flagged box not among the labels is a model proposal. All label
    boxes are matched one-to-one to expert boxes (highest IoU, at least ``REVIEW_NEAR_IOU``). A reviewed
    label box that encloses two or more expert boxes (IoA >= ``REVIEW_BIB_IOA``) nobody else stands for is
    split into them; otherwise it becomes the expert box it is matched to, or is deleted. A reviewed model box
    is added, as the expert box, when it matches (IoU >= ``REVIEW_MATCH_IOU``) an expert box no label box
    stands for; otherwise it is not added. Unreviewed boxes are left as they are.

    Args:
        labels: the corrected labels of the image.
        flagged: the boxes sent to review.
        expert: the expert's boxes of the image (read only for the reviewed instances).

    Returns:
        The labels after the review (unscored) and what was done.
    """
    n, e = len(labels), len(flagged)
    if e == 0:
        return Detections(labels.xyxy, labels.class_id), ReviewOutcome()
    used = np.zeros(n, bool)
    row_of_flag = np.full(e, -1, np.int64)
    for j in range(e):
        same = np.flatnonzero(np.all(labels.xyxy == flagged.xyxy[j], axis=1) & ~used)
        if same.size:
            row_of_flag[j] = same[0]
            used[same[0]] = True
    reviewed_rows = row_of_flag[row_of_flag >= 0]
    proposals = np.flatnonzero(row_of_flag < 0)
    k = len(expert)
    owner = np.full(k, -1, np.int64)  # label row each expert box is matched to
    row_expert = np.full(n, -1, np.int64)
    iou = np.zeros((n, k))
    ioa = np.zeros((n, k))
    if n and k:
        iou, ioa = pair_geometry(labels.xyxy, expert.xyxy)
        rows, cols = assign(iou, iou >= REVIEW_NEAR_IOU)
        owner[cols] = rows
        row_expert[rows] = cols
    claimed = np.zeros(k, bool)
    claimed[owner >= 0] = True
    replace: dict[int, np.ndarray] = {}  # label row -> expert indices it becomes (empty: deleted)
    counts = {"replaced": 0, "deleted": 0, "split": 0, "extra_drawn": 0}
    for r in reviewed_rows:
        inner = np.flatnonzero((ioa[r] >= REVIEW_BIB_IOA) & ((owner == r) | ~claimed))
        if inner.size >= 2:
            replace[int(r)] = inner
            claimed[inner] = True
            counts["split"] += 1
            counts["extra_drawn"] += int(inner.size) - 1
        elif row_expert[r] >= 0:
            replace[int(r)] = row_expert[r : r + 1]
            counts["replaced"] += 1
        else:
            replace[int(r)] = np.zeros(0, np.int64)
            counts["deleted"] += 1
    added = np.zeros(0, np.int64)
    free = np.flatnonzero(~claimed)
    if proposals.size and free.size:
        piou, _ = pair_geometry(flagged.xyxy[proposals], expert.xyxy[free])
        _, cols = assign(piou, piou >= REVIEW_MATCH_IOU)
        added = free[cols]
    keep = np.ones(n, bool)
    keep[list(replace)] = False
    new_idx = np.concatenate([*replace.values(), added]).astype(np.int64) if replace or added.size else added
    out = Detections(
        np.concatenate([labels.xyxy[keep], expert.xyxy[new_idx]]),
        np.concatenate([labels.class_id[keep], expert.class_id[new_idx]]),
    )
    outcome = ReviewOutcome(reviewed=e, added=int(added.size), **counts)
    return out, outcome
