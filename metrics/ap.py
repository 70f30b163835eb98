"""COCO-style average precision of scored detections against ground-truth boxes.

``evaluate_ap`` runs faster-coco-eval's ``COCOeval`` (the reference); ``ap_reference`` is an independent numpy
implementation of the same rules, used to cross-check it.
``python -m metrics.ap --truth TEST.json --images ROOT WEIGHTS...`` prints detectors' AP on a labelled image
set (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from selection.boxes import box_iou
from selection.detections import Detections

if TYPE_CHECKING:
    from model.detector import Detector

logger = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


@dataclass(frozen=True)
class APResult:
    """Average precision over a set of images.

    Attributes:
        ap50: AP at IoU 0.5, in [0, 1]; nan when there is no ground truth box at all.
        ap50_95: AP averaged over IoU 0.50:0.05:0.95, in [0, 1]; nan when there is no ground truth.
        n_images: images evaluated.
        n_gt: ground-truth boxes.
        n_pred: predicted boxes (before the per-image ``maxDets`` cut).
    """

    ap50: float
    ap50_95: float
    n_images: int
    n_gt: int
    n_pred: int


def _check_inputs(gt: Sequence[Detections], pred: Sequence[Detections], num_classes: int) -> None:
    if len(gt) != len(pred):
        raise ValueError(f"pred: expected one Detections per gt image ({len(gt)}), got {len(pred)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    for name, items in (("gt", gt), ("pred", pred)):
        for i, det in enumerate(items):
            if not isinstance(det, Detections):
                raise TypeError(f"{name}[{i}]: expected Detections, got {type(det).__name__}")
            if len(det) and int(det.class_id.max()) >= num_classes:
                raise ValueError(
                    f"{name}[{i}]: class id {int(det.class_id.max())} >= num_classes={num_classes}"
                )
    for i, det in enumerate(pred):
        if det.score is None:
            raise ValueError(f"pred[{i}]: expected scored detections (score is None)")


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    out = np.asarray(xyxy, np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def evaluate_ap(gt: Sequence[Detections], pred: Sequence[Detections], *, num_classes: int = 1) -> APResult:
    """COCO box AP through faster-coco-eval's ``COCOeval``.

    Rules (COCO defaults): IoU thresholds ``iouThrs = 0.50:0.05:0.95`` (10 values); precision interpolated
    at 101 recall points ``0:0.01:1`` (the monotone precision envelope, 0 beyond the last recall reached);
    ``maxDets = 100`` highest-scored predictions per image; area range ``'all'``; no crowd boxes. AP is
    averaged over the classes that have ground truth. Class ids map to COCO category ids ``class_id + 1``.

    Empty cases: without any ground-truth box AP is undefined (precision at recall r has no meaning when
    there is nothing to recall), so both APs are nan; with ground truth but no predictions both are 0.

    Args:
        gt: per image, ground-truth boxes in pixels (scores ignored).
        pred: per image (same order), scored predicted boxes in pixels.
        num_classes: class ids must lie in ``[0, num_classes)``.

    Returns:
        AP at IoU 0.5 and AP over 0.50:0.95, with counts.
    """
    _check_inputs(gt, pred, num_classes)
    n_gt = sum(len(d) for d in gt)
    n_pred = sum(len(d) for d in pred)
    counts = {"n_images": len(gt), "n_gt": n_gt, "n_pred": n_pred}
    if n_gt == 0:
        logger.debug("AP undefined: no ground-truth boxes")
        return APResult(ap50=math.nan, ap50_95=math.nan, **counts)
    if n_pred == 0:
        return APResult(ap50=0.0, ap50_95=0.0, **counts)

    from faster_coco_eval import COCO, COCOeval_faster

    images = [{"id": i + 1, "width": 1, "height": 1} for i in range(len(gt))]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]

    def annotations(items: Sequence[Detections], scored: bool) -> list[dict]:
        out: list[dict] = []
        for i, det in enumerate(items):
            boxes = _xywh(det.xyxy)
            for j in range(len(det)):
                ann = {
                    "id": len(out) + 1,
                    "image_id": i + 1,
                    "category_id": int(det.class_id[j]) + 1,
                    "bbox": boxes[j].tolist(),
                    "area": float(boxes[j, 2] * boxes[j, 3]),
                    "iscrowd": 0,
                }
                if scored:
                    ann["score"] = float(det.score[j])  # type: ignore[index]
                out.append(ann)
        return out

    coco_gt = COCO({"images": images, "categories": categories, "annotations": annotations(gt, False)})
    coco_dt = COCO({"images": images, "categories": categories, "annotations": annotations(pred, True)})
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=logger.debug)
    evaluator.params.iouThrs = IOU_THRESHOLDS.copy()
    evaluator.params.recThrs = RECALL_THRESHOLDS.copy()
    evaluator.params.maxDets = [1, 10, MAX_DETS]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ap50_95, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    # COCOeval reports -1 where no class has ground truth; the n_gt check above rules that out.
    return APResult(ap50=max(ap50, 0.0), ap50_95=max(ap50_95, 0.0), **counts)


def _class_ap(
    gt: Sequence[np.ndarray], pred: Sequence[tuple[np.ndarray, np.ndarray]], iou_threshold: float
) -> float:
    """AP of one class: greedy score-ordered matching per image, 101-point interpolation."""
    n_gt = sum(len(g) for g in gt)
    scores: list[np.ndarray] = []
    hits: list[np.ndarray] = []
    for gt_boxes, (boxes, score) in zip(gt, pred, strict=True):
        order = np.argsort(-score, kind="mergesort")[:MAX_DETS]
        boxes, score = boxes[order], score[order]
        iou = box_iou(boxes, gt_boxes)
        taken = np.zeros(len(gt_boxes), bool)
        hit = np.zeros(len(boxes), bool)
        for d in range(len(boxes)):
            # Like COCO: the unmatched ground truth with the highest IoU, if that IoU reaches the threshold.
            # COCO walks the ground truth in order and takes each one whose IoU is >= the best so far, so of
            # several tied at the highest IoU it keeps the last; np.argmax would keep the first.
            candidates = np.where(taken, -1.0, iou[d])
            if candidates.size == 0:
                continue
            g = len(candidates) - 1 - int(np.argmax(candidates[::-1]))
            if candidates[g] >= min(iou_threshold, 1 - 1e-10):
                taken[g] = True
                hit[d] = True
        scores.append(score)
        hits.append(hit)
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_hits = np.concatenate(hits) if hits else np.zeros(0, bool)
    order = np.argsort(-all_scores, kind="mergesort")
    tp = np.cumsum(all_hits[order])
    fp = np.cumsum(~all_hits[order])
    recall = tp / n_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    # Monotone envelope: precision at recall r is the best precision at any recall >= r.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    if len(precision) == 0:
        return 0.0
    index = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    sampled = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0)
    return float(sampled.mean())


def ap_reference(
    gt: Sequence[Detections],
    pred: Sequence[Detections],
    *,
    iou_threshold: float = 0.5,
    num_classes: int = 1,
) -> float:
    """COCO-style AP at one IoU threshold in plain numpy, independent of ``evaluate_ap``.

    Per image and class, predictions (top ``maxDets = 100`` by score, ties in input order) are matched
    greedily in score order to the unmatched ground truth of highest IoU, if that IoU is at least
    ``iou_threshold``; of ground-truth boxes tied at that IoU the one listed last wins, as in COCOeval
    (pycocotools and faster-coco-eval), whose loop keeps every box at ``>=`` the best IoU so far. There are
    no crowd or ignored ground-truth boxes (``evaluate_ap`` marks none), so every match uses up its ground
    truth and every prediction counts. Then all images' predictions are ranked by score (stable, image
    order) and precision is sampled at 101 recall points from its monotone envelope. AP is averaged over
    classes that have ground truth.

    Args:
        gt: per image, ground-truth boxes in pixels.
        pred: per image, scored predicted boxes in pixels.
        iou_threshold: IoU a match needs, in (0, 1].
        num_classes: class ids must lie in ``[0, num_classes)``.

    Returns:
        AP in [0, 1]; nan without any ground-truth box.
    """
    _check_inputs(gt, pred, num_classes)
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: expected a value in (0, 1], got {iou_threshold}")
    per_class: list[float] = []
    for c in range(num_classes):
        gt_c = [g.xyxy[g.class_id == c].astype(np.float64) for g in gt]
        if sum(len(g) for g in gt_c) == 0:
            continue
        pred_c = [
            (p.xyxy[p.class_id == c].astype(np.float64), p.score[p.class_id == c].astype(np.float64))  # type: ignore[index]
            for p in pred
        ]
        per_class.append(_class_ap(gt_c, pred_c, iou_threshold))
    return float(np.mean(per_class)) if per_class else math.nan


def _load_model(path: Path, device: str) -> tuple[str, Detector]:
    """A detector from a weights file (its family from a registry ``meta.json`` beside it, else YOLO)."""
    from model.detector import LEGACY_FAMILY, get_family

    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    meta_path = path.with_name("meta.json")
    family = LEGACY_FAMILY
    label = path.name
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        family = str(meta.get("family") or LEGACY_FAMILY)
        label = str(meta.get("version") or path.parent.name)
    return label, get_family(family).load(path, device=device)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metrics.ap --truth TEST.json --images ROOT WEIGHTS...``: each detector's AP on the images.

    Every image of the COCO file (``file_name`` relative to ``ROOT``) is predicted at confidence 0.001 (as
    the benchmark evaluates) and scored against its boxes; one row per weights file (a registry version's
    ``weights.pt``, e.g. the export's ``--train-final`` model and the serving one). Exit 2 on bad input.
    """
    from metrics.f1 import read_coco_labels

    parser = argparse.ArgumentParser(
        prog="python -m metrics.ap", description="COCO AP50 and AP50-95 of detectors on a labelled image set."
    )
    parser.add_argument("--truth", type=Path, required=True, help="COCO file of the true boxes")
    parser.add_argument("--images", type=Path, required=True, help="folder the COCO file_name paths start in")
    parser.add_argument(
        "weights", type=Path, nargs="+", help="weights files (e.g. MODEL_DIR/versions/V/weights.pt)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    args = parser.parse_args(argv)
    try:
        truth, names = read_coco_labels(args.truth)
        coco = json.loads(args.truth.read_text())
        files = {Path(im["file_name"]).stem: args.images / im["file_name"] for im in coco["images"]}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise ValueError(f"{len(missing)} images not found under {args.images}, e.g. {missing[0]}")
        stems = sorted(files)
        models = [_load_model(p, args.device) for p in args.weights]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gt = [truth.get(s, Detections.empty()) for s in stems]
    print(f"truth: {sum(len(g) for g in gt)} boxes on {len(stems)} images ({', '.join(names)})")
    width = max(len("model"), *(len(label) for label, _ in models))
    print(f"{'model':<{width}}   AP50  AP50-95")
    for label, detector in models:
        pred = detector.predict([files[s] for s in stems], conf=0.001, batch=16)
        result = evaluate_ap(gt, list(pred), num_classes=max(1, len(names)))
        print(f"{label:<{width}}  {result.ap50:5.3f}    {result.ap50_95:5.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
