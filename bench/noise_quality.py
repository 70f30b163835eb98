"""How well a score finds noisy images, and how well the LSM's instance grades name each error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selection import Action, ImageScore, NoiseType
from selection.boxes import box_iou
from selection.detections import Detections
from selection.matching import assign

TYPES = ("background", "localization", "box_in_box", "missed")


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (higher = more likely positive), ties counted half.

    Args:
        score: float (N,) scores.
        positive: bool (N,) labels.

    Returns:
        AUROC in [0, 1]; NaN when one class is absent.
    """
    score = np.asarray(score, np.float64)
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(score: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated average precision of ranking by ``score`` descending; NaN with no positives."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-np.asarray(score, np.float64), kind="mergesort")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


@dataclass(frozen=True)
class TypeQuality:
    """Precision and recall of the LSM naming one noise type."""

    noise_type: str
    precision: float
    recall: float
    support: int


def instance_quality(
    scores: Sequence[ImageScore],
    crowd_noise: Sequence[np.ndarray],
    missed_boxes: Sequence[Detections],
    preds: Sequence[Detections],
) -> list[TypeQuality]:
    """Per-type precision/recall of the LSM's instance findings against the simulator's truth.

    Args:
        scores: the LSM's findings, one per image.
        crowd_noise: per image, the true noise type of each crowd box (strings, "bib_inner" is clean).
        missed_boxes: per image, the expert boxes the crowd missed.
        preds: per image, the predictions the LSM saw (its "missed" instances index them).
    """
    tp = dict.fromkeys(TYPES, 0)
    flagged = dict.fromkeys(TYPES, 0)
    support = dict.fromkeys(TYPES, 0)
    for score, truth, missed, pred in zip(scores, crowd_noise, missed_boxes, preds, strict=True):
        inst = score.instances
        is_crowd = inst.source == 0
        found = np.full(len(truth), NoiseType.CLEAN.value, dtype=object)
        found[inst.index[is_crowd]] = inst.noise_type[is_crowd].astype(str)
        for t in TYPES[:3]:
            actual = np.asarray(truth) == t
            named = found == t
            tp[t] += int(np.sum(actual & named))
            flagged[t] += int(np.sum(named))
            support[t] += int(np.sum(actual))
        is_missed = (~is_crowd) & (inst.noise_type.astype(str) == NoiseType.MISSED.value)
        proposals = pred.xyxy[inst.index[is_missed]] if is_missed.any() else np.zeros((0, 4))
        support["missed"] += len(missed)
        flagged["missed"] += len(proposals)
        if len(missed) and len(proposals):
            iou = box_iou(proposals, missed.xyxy)
            # Each missed deposit counts once, each proposal once.
            hit_missed = (iou >= 0.5).any(axis=0)
            tp["missed"] += int(min(hit_missed.sum(), (iou >= 0.5).any(axis=1).sum()))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return [TypeQuality(t, ratio(tp[t], flagged[t]), ratio(tp[t], support[t]), support[t]) for t in TYPES]


def fiftyone_scores(
    ids: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    crowds: Sequence[Detections],
    preds: Sequence[Detections],
    *,
    python: Path,
    workdir: Path,
    timeout: float = 600.0,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """FiftyOne Brain's ``compute_mistakenness`` on the same predictions, per image (benchmark extra).

    FiftyOne runs in its own environment (``python``, e.g. ``.venv-fo/bin/python`` from ``make
    setup-fiftyone``) through ``bench/fiftyone_peer.py``; its database and home folder are kept under
    ``workdir`` (the database folder is removed afterwards). FiftyOne gives no image-level score that counts
    every kind of label error, so the image score is the number of crowd boxes it deems spurious plus the
    predictions it deems missing, plus the largest class or localization mistakenness of the image's crowd
    boxes (in [0, 1], so it orders images with equal counts).

    Args:
        ids: image ids; sizes: (width, height) per image; crowds: crowd boxes; preds: scored predictions.
        python: the interpreter of the FiftyOne environment.
        workdir: folder for the exchange files, FiftyOne's database and its home.
        timeout: seconds before the peer is given up.

    Returns:
        float64 (N,) image scores and, per image, FiftyOne's fields.

    Raises:
        RuntimeError: the peer failed (its last output lines in the message).
    """
    import json
    import os
    import shutil
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (w, h), c, p in zip(ids, sizes, crowds, preds, strict=True):
        score = p.score if p.score is not None else np.ones(len(p))
        images.append(
            {
                "id": str(i),
                "width": int(w),
                "height": int(h),
                "crowd": c.xyxy.astype(float).tolist(),
                "pred": np.concatenate([p.xyxy, score[:, None]], axis=1).astype(float).tolist(),
            }
        )
    src, dst = workdir / "in.json", workdir / "out.json"
    src.write_text(json.dumps({"images": images}))
    dst.unlink(missing_ok=True)
    env = dict(
        os.environ,
        HOME=str(workdir / "home"),
        FIFTYONE_DATABASE_DIR=str(workdir / "db"),
        FIFTYONE_CONFIG_PATH=str(workdir / "config.json"),
        FIFTYONE_DO_NOT_TRACK="true",
    )
    script = Path(__file__).with_name("fiftyone_peer.py")
    try:
        run = subprocess.run(
            [str(python), str(script), str(src), str(dst)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        # The samples were throwaway; the database folder (about 300 MB of journal) is not kept.
        shutil.rmtree(workdir / "db", ignore_errors=True)
    if run.returncode != 0 or not dst.exists():
        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"FiftyOne peer ({python}) failed with exit code {run.returncode}:\n{tail}")
    fields = json.loads(dst.read_text())
    rows = [fields[str(i)] for i in ids]
    score = np.array(
        [
            r["possible_missing"]
            + r["possible_spurious"]
            + max(0.0, r["mistakenness"], r["mistakenness_loc"])
            for r in rows
        ],
        np.float64,
    )
    return score, rows


def cleanlab_scores(
    crowds: Sequence[Detections], preds: Sequence[Detections], *, num_classes: int = 1
) -> np.ndarray:
    """cleanlab ObjectLab's per-image label *issue* score (1 - label quality), from the same predictions.

    Single-class data: ObjectLab's "swap" subscore compares classes and carries no signal here, so its
    aggregation weight is set to 0 and the "overlooked" and "badloc" weights split the rest. With
    ``num_classes`` > 1 the predictions are handed over per class and ObjectLab's own weights apply.
    """
    from cleanlab.object_detection.rank import get_label_quality_scores

    labels = [{"bboxes": c.xyxy.astype(np.float32), "labels": c.class_id.astype(int)} for c in crowds]
    predictions = []
    for p in preds:
        score = p.score if p.score is not None else np.ones(len(p), np.float32)
        rows = np.concatenate([p.xyxy, score[:, None]], axis=1).astype(np.float32)
        predictions.append([rows[p.class_id == k] for k in range(num_classes)])
    weights = {"overlooked": 0.5, "badloc": 0.5, "swap": 0.0} if num_classes == 1 else None
    quality = get_label_quality_scores(labels, predictions, aggregation_weights=weights, verbose=False)
    return 1.0 - np.asarray(quality, np.float64)


def _finding_truth(
    score: ImageScore, crowd_noise: np.ndarray, missed: Detections, pred: Detections
) -> tuple[np.ndarray, dict[str, int]]:
    """Per primary instance of one image: is it a true error of the type named? And each type's support."""
    inst = score.instances
    named = inst.noise_type.astype(str)
    truth = np.zeros(len(inst), bool)
    crowd_rows = np.flatnonzero(inst.source == 0)
    actual = np.asarray(crowd_noise).astype(str)
    truth[crowd_rows] = actual[inst.index[crowd_rows]] == named[crowd_rows]
    rows = np.flatnonzero((inst.source == 1) & (named == NoiseType.MISSED.value) & (inst.parent < 0))
    if rows.size and len(missed):
        iou = box_iou(pred.xyxy[inst.index[rows]], missed.xyxy)
        r, _ = assign(iou, iou >= 0.5)
        truth[rows[r]] = True
    support = {t: int(np.sum(actual == t)) for t in TYPES[:3]}
    support["missed"] = len(missed)
    return truth, support


@dataclass(frozen=True)
class GradeQuality:
    """Precision and recall of the instances graded as errors of one type, against the truth.

    ``fix_*``: instances fixed automatically (action auto_fix); ``flag_*``: fixed or sent to review.
    ``precision_at_recall`` is the best precision of the calibrated ranking at recall >= 0.5 (NaN without
    one: no calibrated probabilities, or recall never reaching 0.5).
    """

    noise_type: str
    fix_precision: float
    fix_recall: float
    flag_precision: float
    flag_recall: float
    support: int
    precision_at_recall: float = float("nan")


def grade_quality(
    scores: Sequence[ImageScore],
    crowd_noise: Sequence[np.ndarray],
    missed_boxes: Sequence[Detections],
    preds: Sequence[Detections],
    *,
    probability: Sequence[np.ndarray] | None = None,
    min_recall: float = 0.5,
) -> tuple[list[GradeQuality], dict[str, dict[str, list[float]]]]:
    """Per-type precision/recall of the grades (auto-fixed, and fixed or reviewed), and PR curves.

    Args:
        scores: findings per image (the LSM's or regraded).
        crowd_noise: per image, the true type of each crowd box.
        missed_boxes: per image, the expert boxes the crowd missed.
        preds: per image, the predictions the findings index.
        probability: per image, calibrated error probabilities of the instances (NaN where none); when
            given, a precision-recall curve per type is returned, ranking the instances named that type.
        min_recall: recall at which ``precision_at_recall`` is read.

    Returns:
        One ``GradeQuality`` per type, and per type ``{"precision": [...], "recall": [...]}`` (empty lists
        without probabilities).
    """
    from selection.calibration import precision_recall_curve

    counts = {t: {"fix": 0, "fix_tp": 0, "flag": 0, "flag_tp": 0, "support": 0} for t in TYPES}
    probs: dict[str, list[np.ndarray]] = {t: [] for t in TYPES}
    hits: dict[str, list[np.ndarray]] = {t: [] for t in TYPES}
    for k, (score, truth_types, missed, pred) in enumerate(
        zip(scores, crowd_noise, missed_boxes, preds, strict=True)
    ):
        truth, support = _finding_truth(score, truth_types, missed, pred)
        inst = score.instances
        named = inst.noise_type.astype(str)
        primary = inst.parent < 0
        fix = (inst.action.astype(str) == Action.AUTO_FIX.value) & primary
        flag = (inst.action.astype(str) != Action.KEEP.value) & primary
        for t in TYPES:
            is_t = named == t
            c = counts[t]
            c["support"] += support[t]
            c["fix"] += int(np.sum(fix & is_t))
            c["fix_tp"] += int(np.sum(fix & is_t & truth))
            c["flag"] += int(np.sum(flag & is_t))
            c["flag_tp"] += int(np.sum(flag & is_t & truth))
            if probability is not None:
                sel = is_t & primary
                probs[t].append(np.asarray(probability[k])[sel])
                hits[t].append(truth[sel])

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    out = []
    curves: dict[str, dict[str, list[float]]] = {}
    for t in TYPES:
        c = counts[t]
        at_recall = float("nan")
        curves[t] = {"precision": [], "recall": []}
        if probability is not None and probs[t]:
            p = np.concatenate(probs[t])
            y = np.concatenate(hits[t])
            precision, recall, _ = precision_recall_curve(p, y, n_true=c["support"])
            curves[t] = {"precision": precision.tolist(), "recall": recall.tolist()}
            ok = recall >= min_recall
            if ok.any():
                at_recall = float(precision[ok].max())
        out.append(
            GradeQuality(
                noise_type=t,
                fix_precision=ratio(c["fix_tp"], c["fix"]),
                fix_recall=ratio(c["fix_tp"], c["support"]),
                flag_precision=ratio(c["flag_tp"], c["flag"]),
                flag_recall=ratio(c["flag_tp"], c["support"]),
                support=c["support"],
                precision_at_recall=at_recall,
            )
        )
    return out, curves
