"""Several crowd annotators' boxes of one image -> one set of boxes and how many annotators agree on each.

When several crowd users label the same image, the same object is drawn several times. Scored as they are,
the duplicates contradict each other (the LSM would grade all but one ``background``). ``merge_annotators``
clusters them first, a greedy box fusion:

* boxes are taken annotator by annotator, each annotator's boxes in order (highest score first when they are
  scored);
* a box joins the existing cluster of its class whose current box has the highest IoU with it, if that IoU is
  at least ``iou`` and the cluster holds no box of the same annotator yet (an annotator votes once per
  object); otherwise it starts a new cluster;
* a cluster's box is the mean of its members' coordinates (score-weighted when scored); its ``votes`` is the
  number of annotators in it, the agreement signal a grader can use (``selection.calibration``'s
  ``agreement`` feature takes ``votes / n_annotators``);
* clusters with fewer than ``min_votes`` annotators are dropped.

A single annotator's boxes come back unchanged, each with one vote. Two near-identical boxes of one
annotator stay two boxes (a duplicate is a label error for the LSM to see, not a second opinion).

Example:
    >>> import numpy as np
    >>> from selection.consensus import merge_annotators
    >>> from selection.detections import Detections
    >>> def boxes(*xyxy):
    ...     return Detections(np.array(xyxy, np.float32).reshape(-1, 4), np.zeros(len(xyxy), np.int64))
    >>> merged, votes = merge_annotators(
    ...     [boxes([0, 0, 10, 10], [50, 50, 60, 60]), boxes([2, 0, 12, 10]), boxes([1, 0, 11, 10])]
    ... )
    >>> merged.xyxy.tolist(), votes.tolist()
    ([[1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]], [3, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selection.boxes import pair_geometry
from selection.detections import Detections

__all__ = ["merge_annotators"]


def merge_annotators(
    dets_per_annotator: Sequence[Detections], *, iou: float = 0.5, min_votes: int = 1
) -> tuple[Detections, np.ndarray]:
    """Fuse the boxes of several annotators of one image (see the module docstring for the rule).

    Args:
        dets_per_annotator: one ``Detections`` per annotator (pixels; class ids of one label set); an
            annotator who drew nothing is an empty ``Detections`` (it still counts in ``n_annotators``
            for the caller, never as a vote).
        iou: a box joins a cluster of its class when its IoU with the cluster's current box is at least
            this, in (0, 1].
        min_votes: clusters drawn by fewer annotators are dropped (1 keeps every box).

    Returns:
        ``(merged, votes)``: the fused boxes (score = mean member score when every input is scored, else
        None), in the order their clusters were opened; ``votes``: int64 (M,) annotators per fused box.

    Raises:
        ValueError: ``iou`` outside (0, 1] or ``min_votes`` < 1.
        TypeError: an element of ``dets_per_annotator`` is not ``Detections``.
    """
    if not 0.0 < float(iou) <= 1.0:
        raise ValueError(f"iou: expected a value in (0, 1], got {iou}")
    if int(min_votes) < 1:
        raise ValueError(f"min_votes: expected an integer >= 1, got {min_votes}")
    for k, dets in enumerate(dets_per_annotator):
        if not isinstance(dets, Detections):
            raise TypeError(f"dets_per_annotator[{k}]: expected Detections, got {type(dets).__name__}")
    scored = bool(dets_per_annotator) and all(d.score is not None for d in dets_per_annotator)
    if len(dets_per_annotator) == 1:  # nothing to fuse: the boxes as drawn, in their order, one vote each
        (only,) = dets_per_annotator
        kept = np.full(len(only), int(min_votes) <= 1)
        return only.subset(kept), np.ones(int(kept.sum()), np.int64)
    n_total = sum(len(d) for d in dets_per_annotator)
    if n_total == 0:
        return Detections.empty(with_score=scored), np.zeros(0, np.int64)

    sums = np.zeros((n_total, 4), np.float64)  # weighted coordinate sums per cluster
    weights = np.zeros(n_total, np.float64)
    score_sums = np.zeros(n_total, np.float64)
    members = np.zeros(n_total, np.int64)
    cls = np.zeros(n_total, np.int64)
    owners: list[set[int]] = []
    for annotator, dets in enumerate(dets_per_annotator):
        order: np.ndarray = np.arange(len(dets))
        if dets.score is not None:
            order = np.argsort(-dets.score, kind="stable")
        for j in order:
            box = dets.xyxy[j].astype(np.float64)
            c = int(dets.class_id[j])
            w = float(dets.score[j]) if scored and dets.score is not None else 1.0
            w = max(w, 1e-6)  # a zero-score box still counts as a member
            n_open = len(owners)
            best = -1
            if n_open:
                current = sums[:n_open] / weights[:n_open, None]
                overlap, _ = pair_geometry(box[None, :], current)
                ok = (cls[:n_open] == c) & (overlap[0] >= iou)
                ok &= np.array([annotator not in owner for owner in owners])
                if ok.any():
                    best = int(np.flatnonzero(ok)[np.argmax(overlap[0][ok])])
            if best < 0:
                best = n_open
                owners.append(set())
                cls[best] = c
            owners[best].add(annotator)
            sums[best] += w * box
            weights[best] += w
            score_sums[best] += float(dets.score[j]) if dets.score is not None else 0.0
            members[best] += 1
    n = len(owners)
    votes = np.array([len(o) for o in owners], np.int64)
    keep = votes >= int(min_votes)
    xyxy = (sums[:n] / weights[:n, None])[keep]
    score = (score_sums[:n] / members[:n])[keep] if scored else None
    merged = Detections(xyxy=xyxy.astype(np.float32), class_id=cls[:n][keep], score=score)
    return merged, votes[keep]
