"""Speed of crowd fusion (``merge_annotators``) against the quadratic algorithm it replaced, side by side.

    python -m bench.merge [--annotators 3] [--boxes 500,2000,5000] [--image 20000] [--seed 0]

Each image has ``--boxes`` objects spread over a square image of ``--image`` pixels (boxes of 16 to 160 px);
every annotator redraws 90 % of them, jittered by 2 px, and adds lone boxes up to ``--boxes`` in all. Timed on
each image: ``selection.consensus.merge_annotators`` and ``merge_quadratic`` below, the first implementation
kept verbatim (every box against every open cluster, in Python). Their outputs are checked bit-identical; the
run fails if they are not. Figures are wall time and process CPU time (``time.process_time``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from selection.boxes import pair_geometry
from selection.consensus import merge_annotators
from selection.detections import Detections

_T = TypeVar("_T")


def timed(fn: Callable[[], _T]) -> tuple[_T, float, float]:
    """``fn()``'s result, wall seconds and process CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def merge_quadratic(
    dets_per_annotator: Sequence[Detections], *, iou: float = 0.5, min_votes: int = 1
) -> tuple[Detections, np.ndarray]:
    """The first ``merge_annotators`` (same rule, same result): each box against every open cluster."""
    scored = bool(dets_per_annotator) and all(d.score is not None for d in dets_per_annotator)
    if len(dets_per_annotator) == 1:
        (only,) = dets_per_annotator
        kept = np.full(len(only), int(min_votes) <= 1)
        return only.subset(kept), np.ones(int(kept.sum()), np.int64)
    n_total = sum(len(d) for d in dets_per_annotator)
    if n_total == 0:
        return Detections.empty(with_score=scored), np.zeros(0, np.int64)
    sums = np.zeros((n_total, 4), np.float64)
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
            w = max(w, 1e-6)
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


def make_crowd(n_boxes: int, n_annotators: int, image: float, rng: np.random.Generator) -> list[Detections]:
    """``n_annotators`` annotators of ``n_boxes`` boxes each on one ``image`` x ``image`` px image."""
    xy = rng.uniform(0, image - 160, (n_boxes, 2))
    objects = np.concatenate([xy, xy + rng.uniform(16, 160, (n_boxes, 2))], axis=1)
    crowd = []
    for _ in range(n_annotators):
        drawn = objects[rng.random(n_boxes) < 0.9]
        boxes = drawn + rng.normal(0, 2, drawn.shape)
        exy = rng.uniform(0, image - 160, (n_boxes - len(drawn), 2))
        extra = np.concatenate([exy, exy + rng.uniform(16, 160, exy.shape)], axis=1)
        boxes = np.concatenate([boxes, extra])[rng.permutation(n_boxes)]
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        crowd.append(Detections(boxes.astype(np.float32), np.zeros(n_boxes, np.int64)))
    return crowd


def same_merge(a: tuple[Detections, np.ndarray], b: tuple[Detections, np.ndarray]) -> bool:
    """Whether two fusions are bit-identical: boxes, classes, scores and votes, in order."""
    (da, va), (db, vb) = a, b
    if (da.score is None) != (db.score is None):
        return False
    scores_equal = da.score is None or da.score.tobytes() == db.score.tobytes()  # type: ignore[union-attr]
    return (
        da.xyxy.tobytes() == db.xyxy.tobytes()
        and np.array_equal(da.class_id, db.class_id)
        and scores_equal
        and va.dtype == vb.dtype
        and np.array_equal(va, vb)
    )


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected box counts >= 1, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> None:
    """Time both implementations on each size and print the figures side by side."""
    parser = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=3, help="annotators per image")
    parser.add_argument(
        "--boxes", type=_sizes, default=[500, 2000, 5000], help="boxes per annotator: 500,2000"
    )
    parser.add_argument("--image", type=float, default=20_000.0, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.annotators < 1 or args.image < 200:
        parser.error("--annotators must be >= 1 and --image >= 200")

    rng = np.random.default_rng(args.seed)
    merge_annotators(make_crowd(50, args.annotators, args.image, rng))  # warm-up (imports, first calls)
    print(f"{args.annotators} annotators, a {args.image:.0f} px image, IoU 0.5; wall seconds (process CPU)")
    print("| boxes per annotator | clusters | merge_annotators | quadratic | quadratic / merge_annotators |")
    print("|---|---|---|---|---|")
    all_same = True
    for n_boxes in args.boxes:
        crowd = make_crowd(n_boxes, args.annotators, args.image, rng)
        ours, o_wall, o_cpu = timed(lambda crowd=crowd: merge_annotators(crowd))  # type: ignore[misc]
        theirs, t_wall, t_cpu = timed(lambda crowd=crowd: merge_quadratic(crowd))  # type: ignore[misc]
        same = same_merge(ours, theirs)
        all_same &= same
        print(
            f"| {n_boxes:,} | {len(ours[0]):,} | {o_wall:.3f} ({o_cpu:.3f}) | {t_wall:.2f} ({t_cpu:.2f}) "
            f"| {t_wall / o_wall:.0f}x ({t_cpu / o_cpu:.0f}x) |" + ("" if same else " DIFFERENT")
        )
    print(f"outputs: {'bit-identical' if all_same else 'DIFFERENT'}")
    if not all_same:
        raise SystemExit("bench.merge: merge_annotators and the quadratic reference disagree")


if __name__ == "__main__":
    main()
