"""Agreement between two label sets of the same images: one-to-one box matches, precision, recall, F1.

``python -m metrics.f1 --truth expert.json crowd.json export/annotations.json`` prints each COCO file's F1
against the true boxes (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from scipy.optimize import linear_sum_assignment

from formats.coco import (
    CocoCategories,
    CocoError,
    CocoImageEntry,
    ImageFrame,
    check_coco_lists,
    image_entries,
    read_boxes,
    read_categories,
)
from selection.boxes import box_iou
from selection.detections import Detections


@dataclass(frozen=True)
class F1Result:
    """Counts and rates of ``labels`` measured against ``reference``.

    Attributes:
        precision: ``tp / (tp + fp)``; 1 when both sets are empty, 0 when only ``labels`` is empty.
        recall: ``tp / (tp + fn)``; 1 when both sets are empty, 0 when only ``reference`` is empty.
        f1: ``2 tp / (2 tp + fp + fn)``; 1 when both sets are empty.
        tp: matched pairs.
        fp: label boxes without a reference match.
        fn: reference boxes without a label match.
    """

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int


def count_matches(reference: Detections, labels: Detections, *, iou: float = 0.5) -> int:
    """Largest number of one-to-one same-class pairs with IoU >= ``iou`` (ties broken by higher total IoU).

    Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on a weight that first counts pairs and
    then adds their IoU, so a pair is never given up for a better IoU elsewhere.
    """
    if len(reference) == 0 or len(labels) == 0:
        return 0
    overlap = box_iou(reference.xyxy, labels.xyxy)
    valid = (overlap >= iou) & (reference.class_id[:, None] == labels.class_id[None, :])
    if not valid.any():
        return 0
    # Each valid pair is worth more than the IoU of all pairs together: cardinality first, then IoU.
    bonus = float(min(overlap.shape) + 1)
    weight = np.where(valid, bonus + overlap, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return int(valid[rows, cols].sum())


def _check(reference: Sequence[Detections], labels: Sequence[Detections], iou: float) -> None:
    if len(reference) != len(labels):
        raise ValueError(
            f"labels: expected one Detections per reference image ({len(reference)}), got {len(labels)}"
        )
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou: expected a value in (0, 1], got {iou}")


def _rates(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return precision, recall, f1


def label_f1(reference: Sequence[Detections], labels: Sequence[Detections], *, iou: float = 0.5) -> F1Result:
    """Precision, recall and F1 of ``labels`` against ``reference``, pooled over images.

    Args:
        reference: per image, the reference boxes (e.g. expert labels) in pixels.
        labels: per image (same order), the boxes to assess (e.g. crowd or corrected labels) in pixels.
        iou: IoU a same-class pair needs to count as a match, in (0, 1].

    Returns:
        Pooled counts and rates.
    """
    _check(reference, labels, iou)
    tp = fp = fn = 0
    for ref, lab in zip(reference, labels, strict=True):
        matched = count_matches(ref, lab, iou=iou)
        tp += matched
        fp += len(lab) - matched
        fn += len(ref) - matched
    precision, recall, f1 = _rates(tp, fp, fn)
    return F1Result(precision=precision, recall=recall, f1=f1, tp=tp, fp=fp, fn=fn)


def per_image_f1(
    reference: Sequence[Detections], labels: Sequence[Detections], *, iou: float = 0.5
) -> np.ndarray:
    """F1 of each image; an image with no boxes in either set scores 1.

    Returns:
        float64 (n_images,) in [0, 1].
    """
    _check(reference, labels, iou)
    out = np.empty(len(reference), np.float64)
    for i, (ref, lab) in enumerate(zip(reference, labels, strict=True)):
        matched = count_matches(ref, lab, iou=iou)
        out[i] = _rates(matched, len(lab) - matched, len(ref) - matched)[2]
    return out


# ---------------------------------------------------------------- CLI: COCO files against a COCO truth


def _frame(entry: CocoImageEntry) -> ImageFrame:
    """An image entry's size, from its own ``width`` and ``height`` (the file is not read)."""
    size = []
    for key in ("width", "height"):
        value = entry.fields.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or value % 1:
            raise CocoError(  # 640.0 is 640, as some tools write it
                f"{entry.where}: expected a positive integer {key!r} (boxes are checked against their "
                f"image), got {value!r}"
            )
        size.append(int(value))
    return ImageFrame(size[0], size[1], entry.file_name)


def read_coco_labels(
    path: Path, *, names: Sequence[str] | None = None
) -> tuple[dict[str, Detections], list[str]]:
    """A COCO detection file's boxes per image, keyed by file name stem (``images/a/0001.png`` -> ``0001``).

    The file may be anyone's (a lab's true boxes, its crowd labels, a ``backend.export``): it is read with
    :mod:`formats.coco`'s checks of a lab's file, as ``python -m backend.ingest`` and ``bench.simulate
    --data`` read one. Category ids may be any integers (gaps, 0, negative): classes follow the categories'
    listed order, or ``names``. Each image entry needs its ``width`` and ``height``; boxes that reach past
    their image are clipped to it, ``iscrowd`` regions are refused, and ``score`` fields are not read.

    Args:
        path: the COCO JSON file.
        names: category names whose index the class ids must follow (matched case-insensitively; the file
            may have fewer); None keeps the file's own order (its ``categories`` as listed).

    Returns:
        The boxes per image stem (float32 pixel xyxy, unscored; class ids index ``names``, else the file's
        categories), and the names.

    Raises:
        CocoError: starting with the file (and the entry, ``annotations[4] (id 17)``): the file is not
            readable COCO JSON, a malformed category, image or annotation entry, two images share a stem, or a
            category is not among ``names``.

    Example:
        >>> import tempfile
        >>> coco = {"images": [{"id": 1, "file_name": "img/a.png", "width": 20, "height": 20}],
        ...         "categories": [{"id": 0, "name": "cell"}, {"id": 7, "name": "deposit"}],
        ...         "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 4, 4]}]}
        >>> path = Path(tempfile.mkdtemp()) / "truth.json"
        >>> _ = path.write_text(json.dumps(coco))
        >>> boxes, names = read_coco_labels(path)
        >>> names, boxes["a"].xyxy.tolist(), boxes["a"].class_id.tolist()
        (['cell', 'deposit'], [[2.0, 2.0, 6.0, 6.0]], [1])
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: not a readable COCO detection file: {exc}") from None
    # The lists' errors read "<file>: not a readable COCO detection file: annotations: expected a list, ...".
    coco = check_coco_lists(raw, f"{path}: not a readable COCO detection file")
    categories = read_categories(coco, path)
    if names is None:
        names = list(categories.names)
    else:
        index = {n.lower(): i for i, n in enumerate(names)}
        unknown = [n for n in categories.names if n.lower() not in index]
        if unknown:
            raise CocoError(f"{path}: categories {unknown} are not among the truth's {list(names)}")
        categories = CocoCategories(
            tuple(names),
            {cid: index[categories.names[k].lower()] for cid, k in categories.class_of.items()},
        )
    stem_of: dict[int, str] = {}
    frames: dict[int, ImageFrame] = {}
    taken: set[str] = set()
    for entry in image_entries(coco, path):
        stem = PurePath(entry.file_name).stem
        if stem in taken:
            raise CocoError(
                f"{entry.where}: two images are named {stem!r} (images are matched by file name without "
                "folder and suffix)"
            )
        frames[entry.id] = _frame(entry)
        stem_of[entry.id] = stem
        taken.add(stem)
    found = read_boxes(coco, path, images=frames, categories=categories)
    return {stem_of[image_id]: boxes for image_id, boxes in found.boxes.items()}, list(names)


def expert_images(manifest: Path) -> set[str]:
    """Stems of the images a ``python -m backend.export`` manifest took from an expert annotation."""
    try:
        rows = json.loads(Path(manifest).read_text())["images"]
        return {PurePath(str(r["image"])).stem for r in rows if r.get("source") == "expert"}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{manifest}: not an export manifest (manifest.json): {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metrics.f1 --truth TRUTH.json LABELS.json...``: each labels file's F1 against the truth.

    Images are matched by file name without folder and suffix; the comparison uses the images that the truth
    and every labels file have (minus, with ``--manifest``, those an export took from expert annotations).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> def coco(boxes):
    ...     return json.dumps({"images": [{"id": 1, "file_name": "img/a.png", "width": 20, "height": 20}],
    ...         "categories": [{"id": 1, "name": "deposit"}],
    ...         "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b}
    ...                         for i, b in enumerate(boxes)]})
    >>> _ = (d / "truth.json").write_text(coco([[0, 0, 10, 10], [10, 10, 5, 5]]))
    >>> _ = (d / "crowd.json").write_text(coco([[0, 0, 10, 10], [15, 0, 5, 5]]))
    >>> main(["--truth", str(d / "truth.json"), str(d / "crowd.json")])  # doctest: +NORMALIZE_WHITESPACE
    truth: 2 boxes on 1 images; compared on 1 images (IoU >= 0.5)
    labels      boxes  precision  recall     F1
    crowd.json      2      0.500   0.500  0.500
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m metrics.f1",
        description="Precision, recall and F1 of COCO label files against the true boxes.",
    )
    parser.add_argument("--truth", type=Path, required=True, help="COCO file of the true (expert) boxes")
    parser.add_argument("labels", type=Path, nargs="+", help="COCO files to assess (e.g. crowd, an export)")
    parser.add_argument(
        "--manifest", type=Path, help="an export's manifest.json: leave out the images it took from experts"
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU of a match (0.5)")
    args = parser.parse_args(argv)
    try:
        truth, names = read_coco_labels(args.truth)
        label_sets = [read_coco_labels(p, names=names)[0] for p in args.labels]
        for path, labels in zip(args.labels, label_sets, strict=True):
            extra = sorted(set(labels) - set(truth))
            if extra:
                raise ValueError(f"{path}: images {extra[:5]} are not in the truth {args.truth}")
        keep = set(truth).intersection(*label_sets)
        skipped = ""
        if args.manifest is not None:
            experts = expert_images(args.manifest) & keep
            keep -= experts
            skipped = f", {len(experts)} images with an expert annotation left out"
        if not keep:
            raise ValueError("no image is in the truth and in every labels file (matched by file name)")
        stems = sorted(keep)
        reference = [truth[s] for s in stems]
        results = [label_f1(reference, [labels[s] for s in stems], iou=args.iou) for labels in label_sets]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_truth = sum(len(d) for d in truth.values())
    print(
        f"truth: {n_truth} boxes on {len(truth)} images; compared on {len(stems)} images{skipped} "
        f"(IoU >= {args.iou:g})"
    )
    width = max(len("labels"), *(len(p.name) for p in args.labels))
    print(f"{'labels':<{width}}  boxes  precision  recall     F1")
    for path, result in zip(args.labels, results, strict=True):
        print(
            f"{path.name:<{width}}  {result.tp + result.fp:5d}  {result.precision:9.3f}  "
            f"{result.recall:6.3f}  {result.f1:5.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
