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

The rule reads box by box, but it is computed annotator by annotator: while one annotator's boxes are placed,
the clusters it may join are those opened before its turn that it has not joined yet, and their boxes do not
move until its turn ends (only its own joins move a box, and a joined cluster is closed to it). So each turn
compares its boxes with the clusters' boxes as they stood when it began, in one vectorised IoU call (the same
``pair_geometry`` floats as box by box), then assigns them in order. Only nearby clusters are compared: a
uniform grid (cells the median box size) holds each cluster's current box, and an IoU >= ``iou`` > 0 needs a
positive intersection, so a common cell; a box spanning more than 64 cells is compared with every cluster of
its class. For N boxes spread over the image this is O(N) grid work and O(N k) IoUs (k: clusters near a box),
plus a fixed cost per annotator, instead of O(N^2): three annotators of 5,000 boxes on a 20,000 px image
merge in 0.1 to 0.3 s, against 14 to 15 s box by box (``python -m bench.merge``, a shared 2-core machine).
Boxes piled on one spot, or very large boxes, still cost up to O(N^2).

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

_MAX_CELLS = 64
"""A box spanning more grid cells than this is compared with every cluster of its class (and a cluster whose
box does is a candidate for every box of its class), rather than registered cell by cell."""

_Cells = tuple[int, int, int, int] | None  # (first column, last column, first row, last row); None: large


def _cell_size(xyxy: np.ndarray) -> float:
    """The grid's cell side in pixels: the median box extent (``max(width, height)``) of the positive ones."""
    extent = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
    extent = extent[extent > 0]
    return float(np.median(extent)) if len(extent) else 1.0


def _cell_spans(xyxy: np.ndarray, size: float) -> list[_Cells]:
    """The grid cells each float64 (N, 4) box covers, ``None`` where it spans more than ``_MAX_CELLS``.

    Two boxes whose intersection is positive share a cell: the larger of their left edges lies in both
    x-ranges, and ``floor(x / size)`` is monotonic in ``x`` (one correctly rounded division, then a floor);
    likewise in y.
    """
    cells = np.floor(xyxy / size)
    count = (cells[:, 2] - cells[:, 0] + 1) * (cells[:, 3] - cells[:, 1] + 1)
    # Far-out coordinates would not fit an exact integer; a box there is simply compared with everything.
    large = (count > _MAX_CELLS) | (np.abs(cells) > 2.0**50).any(axis=1)
    spans: list[_Cells] = []
    for (x0, y0, x1, y1), is_large in zip(cells.tolist(), large.tolist(), strict=True):
        spans.append(None if is_large else (int(x0), int(x1), int(y0), int(y1)))
    return spans


class _Grid:
    """Which clusters of each class have their current box in which grid cell (large ones: a set a class)."""

    def __init__(self) -> None:
        self.cells: dict[tuple[int, int, int], set[int]] = {}
        self.large: dict[int, set[int]] = {}
        self.where: dict[int, tuple[int, _Cells]] = {}

    @staticmethod
    def _keys(c: int, span: tuple[int, int, int, int]) -> list[tuple[int, int, int]]:
        x0, x1, y0, y1 = span
        return [(c, x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)]

    def place(self, cluster: int, c: int, span: _Cells) -> None:
        """Register ``cluster`` (class ``c``) where its current box is, dropping where it was."""
        old = self.where.get(cluster)
        if old == (c, span):
            return
        if old is not None:
            old_c, old_span = old
            if old_span is None:
                self.large[old_c].discard(cluster)
            else:
                for key in self._keys(old_c, old_span):
                    self.cells[key].discard(cluster)
        self.where[cluster] = (c, span)
        if span is None:
            self.large.setdefault(c, set()).add(cluster)
        else:
            for key in self._keys(c, span):
                self.cells.setdefault(key, set()).add(cluster)

    def near(self, c: int, span: tuple[int, int, int, int]) -> set[int]:
        """Every cluster of class ``c`` whose current box could intersect a box covering ``span``."""
        found = set(self.large.get(c, ()))
        for key in self._keys(c, span):
            found.update(self.cells.get(key, ()))
        return found


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
    current = np.zeros((n_total, 4), np.float64)  # sums / weights: the cluster's box
    score_sums = np.zeros(n_total, np.float64)
    members = np.zeros(n_total, np.int64)
    cls = np.zeros(n_total, np.int64)
    size = _cell_size(np.concatenate([d.xyxy for d in dets_per_annotator]).astype(np.float64))
    grid = _Grid()
    n_open = 0
    for dets in dets_per_annotator:
        if not len(dets):
            continue
        order: np.ndarray = np.arange(len(dets))
        if dets.score is not None:
            order = np.argsort(-dets.score, kind="stable")
        boxes = dets.xyxy[order].astype(np.float64)
        classes = dets.class_id[order]
        w = dets.score[order].astype(np.float64) if scored and dets.score is not None else np.ones(len(dets))
        w = np.maximum(w, 1e-6)  # a zero-score box still counts as a member
        added = dets.score[order].astype(np.float64) if dets.score is not None else np.zeros(len(dets))

        # The clusters open at this turn's start, near each box: (box, cluster) pairs of one class.
        pair_box: list[int] = []
        pair_cluster: list[int] = []
        if n_open:
            for j, (c, span) in enumerate(zip(classes.tolist(), _cell_spans(boxes, size), strict=True)):
                near = np.flatnonzero(cls[:n_open] == c).tolist() if span is None else grid.near(c, span)
                pair_box.extend([j] * len(near))
                pair_cluster.extend(near)
        pb = np.array(pair_box, np.int64)
        pk = np.array(pair_cluster, np.int64)
        overlap = pair_geometry(boxes[pb][:, None, :], current[pk][:, None, :])[0][:, 0, 0]
        hit = overlap >= iou
        pb, pk, overlap = pb[hit], pk[hit], overlap[hit]
        # Per box, its clusters by IoU descending, then by index: the first one still free is the box's pick
        # (the highest IoU, the first cluster among equals).
        rank = np.lexsort((pk, -overlap, pb))
        pb, pk = pb[rank], pk[rank]
        starts = np.searchsorted(pb, np.arange(len(dets) + 1)).tolist()
        clusters = pk.tolist()
        best = np.full(len(dets), -1, np.int64)
        taken: set[int] = set()  # joined this turn: an annotator votes once per cluster
        for j in np.unique(pb).tolist():
            for k in clusters[starts[j] : starts[j + 1]]:
                if k not in taken:
                    taken.add(k)
                    best[j] = k
                    break
        opened = best < 0
        n_new = int(opened.sum())
        best[opened] = np.arange(n_open, n_open + n_new)
        cls[best[opened]] = classes[opened]
        n_open += n_new
        # Each cluster takes at most one box per turn, so these indexed updates add one member each.
        sums[best] += w[:, None] * boxes
        weights[best] += w
        score_sums[best] += added
        members[best] += 1
        current[best] = sums[best] / weights[best, None]
        for k, span in zip(best.tolist(), _cell_spans(current[best], size), strict=True):
            grid.place(k, int(cls[k]), span)
    n = n_open
    votes = members[:n]  # one box per annotator per cluster: members are annotators
    keep = votes >= int(min_votes)
    xyxy = (sums[:n] / weights[:n, None])[keep]
    score = (score_sums[:n] / members[:n])[keep] if scored else None
    merged = Detections(xyxy=xyxy.astype(np.float32), class_id=cls[:n][keep], score=score)
    return merged, votes[keep]
