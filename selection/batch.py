"""Batched LSM scoring: ``score_image``'s rules for many images at once, results as flat arrays.

``score_batch`` gives, for every image, exactly what ``score_image`` gives (same floats, bit for bit), but
computes it for blocks of images at once on padded ``(B, Mmax, Kmax)`` arrays instead of one image at a time.
Images are sorted by their numbers of crowd boxes and kept predictions and cut into blocks of at most
``_BLOCK_PAIRS`` padded pairs, so one crowded image does not inflate a whole block.

Matching is vectorised where it is trivial: when no crowd box has two candidate predictions and no
prediction two candidate crowd boxes (in the primary pass at ``match_iou`` and in the second-chance pass at
``loc_min_iou``), the optimal one-to-one assignment is simply every candidate pair, which is what
``scipy.optimize.linear_sum_assignment`` returns too (each valid pair has a positive weight, so any other
assignment loses weight). Images with a conflict in either pass, or with a box-in-box crowd box, are scored
by the per-image scorer instead (``BatchScores.fallback`` marks them); a few percent of typical images.

The rules are ``selection.rules``, the same functions the per-image scorer calls, here on ``(B, M, K)``
arrays. Aggregation: ``noisy_or`` and ``max`` are computed on the padded severities
(``rules.aggregate_rows``: padding adds factors of exactly 1.0, or zeros to a maximum, so the sequential
product is unchanged); ``sum`` (the default), ``softmax`` and ``mean`` run ``aggregate`` on each image's
severities so their summation order is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from selection import rules
from selection.boxes import pair_geometry
from selection.detections import Detections
from selection.lsm import ImageScore, InstanceFindings, check_detections, score_image
from selection.rules import (
    ACTION_NAMES,
    GRADE_ACTION,
    GRADE_BY_CODE,
    GRADE_CODE,
    GRADE_NAMES,
    NOISE_NAMES,
    Grade,
    LSMConfig,
    aggregate,
)

_BLOCK_PAIRS = 1 << 18  # padded crowd x prediction pairs per block: ~2 MB per float64 array
_LOOKAHEAD = 16_384  # images examined when cutting one block


@dataclass(frozen=True)
class BatchScores:
    """The LSM's verdicts on N images as flat arrays; ``image(i)`` is ``score_image`` on image ``i``.

    Attributes:
        discrepancy: float64 (N,) image discrepancies in [0, 1].
        grade: str (N,) ``Grade`` values, the worst instance grade of each image.
        n_crowd: int64 (N,) crowd boxes per image (M).
        n_pred: int64 (N,) predictions given per image (K, before the score floor).
        offsets: int64 (N + 1,) image ``i``'s instances are rows ``offsets[i]:offsets[i + 1]`` of
            ``instances``.
        instances: the per-instance findings of all images, concatenated in image order (``index`` and
            ``parent`` stay relative to their own image).
        fallback: bool (N,) images scored one at a time (a matching conflict that needs the Hungarian
            algorithm, or a box-in-box crowd box); informational, the results do not depend on it.
    """

    discrepancy: np.ndarray
    grade: np.ndarray
    n_crowd: np.ndarray
    n_pred: np.ndarray
    offsets: np.ndarray
    instances: InstanceFindings
    fallback: np.ndarray

    def __len__(self) -> int:
        return int(self.discrepancy.shape[0])

    def image(self, i: int) -> ImageScore:
        """Image ``i``'s ``ImageScore``, equal to ``score_image`` on it; IndexError when out of range."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"i: expected an image index in [{-n}, {n}), got {i}")
        i = int(i) % n
        return self._make(i, int(self.offsets[i]), int(self.offsets[i + 1]))

    def images(self) -> list[ImageScore]:
        """Every image's ``ImageScore``, in input order."""
        f = self.instances
        arrays = (f.source, f.index, f.noise_type, f.severity, f.confidence, f.grade, f.action)
        prop, parent = f.proposed_xyxy, f.parent
        off = self.offsets.tolist()
        disc = self.discrepancy.tolist()
        grades = [GRADE_BY_CODE[GRADE_CODE[g]] for g in self.grade.tolist()]
        n_crowd = self.n_crowd.tolist()
        n_pred = self.n_pred.tolist()
        out = []
        for i in range(len(disc)):
            a, b = off[i], off[i + 1]
            src, idx, typ, sev, conf, grd, act = (x[a:b] for x in arrays)
            findings = InstanceFindings(src, idx, typ, sev, conf, grd, act, prop[a:b], parent[a:b])
            out.append(ImageScore(disc[i], grades[i], findings, n_crowd[i], n_pred[i]))
        return out

    def _make(self, i: int, a: int, b: int) -> ImageScore:
        f = self.instances
        findings = InstanceFindings(
            source=f.source[a:b],
            index=f.index[a:b],
            noise_type=f.noise_type[a:b],
            severity=f.severity[a:b],
            confidence=f.confidence[a:b],
            grade=f.grade[a:b],
            action=f.action[a:b],
            proposed_xyxy=f.proposed_xyxy[a:b],
            parent=f.parent[a:b],
        )
        return ImageScore(
            float(self.discrepancy[i]),
            Grade(str(self.grade[i])),
            findings,
            int(self.n_crowd[i]),
            int(self.n_pred[i]),
        )


@dataclass(frozen=True)
class _Block:
    """Vectorised results of one block of images (sorted order); rows of fallback images left out."""

    counts: np.ndarray  # int64 (B,) instances per image
    fallback: np.ndarray  # bool (B,)
    discrepancy: np.ndarray | None  # float64 (B,) from rules.aggregate_rows; None: aggregate per image
    grade: np.ndarray  # int64 (B,) grade codes
    source: np.ndarray
    index: np.ndarray
    noise: np.ndarray  # int64 codes
    severity: np.ndarray
    confidence: np.ndarray
    grade_rows: np.ndarray  # int64 codes
    proposed: np.ndarray  # float64 (R, 4)


def _pad(
    values: np.ndarray, rep: np.ndarray, col: np.ndarray, shape: tuple[int, ...], fill: float
) -> np.ndarray:
    out = np.full(shape, fill, values.dtype)
    out[rep, col] = values
    return out


def _score_block(
    c_rep: np.ndarray,
    c_col: np.ndarray,
    c_xyxy: np.ndarray,
    c_cls: np.ndarray | None,
    p_rep: np.ndarray,
    p_col: np.ndarray,
    p_xyxy: np.ndarray,
    p_cls: np.ndarray | None,
    p_score: np.ndarray,
    p_orig: np.ndarray,
    n_img: int,
    mx: int,
    kx: int,
    cfg: LSMConfig,
) -> _Block:
    """Score ``n_img`` images from their crowd rows (image ``c_rep``, slot ``c_col``) and kept predictions."""
    b_ = n_img
    c_ok = np.zeros((b_, mx), bool)
    c_ok[c_rep, c_col] = True
    p_ok = np.zeros((b_, kx), bool)
    p_ok[p_rep, p_col] = True
    a = _pad(c_xyxy.astype(np.float64), c_rep, c_col, (b_, mx, 4), 0.0)
    b = _pad(p_xyxy.astype(np.float64), p_rep, p_col, (b_, kx, 4), 0.0)
    score = _pad(p_score, p_rep, p_col, (b_, kx), 0.0)
    iou, ioa = pair_geometry(a, b)
    pair_ok = c_ok[:, :, None] & p_ok[:, None, :]
    if cfg.class_aware:
        assert c_cls is not None and p_cls is not None
        iou, ioa = rules.same_class_only(
            iou, ioa, _pad(c_cls, c_rep, c_col, (b_, mx), -1), _pad(p_cls, p_rep, p_col, (b_, kx), -2)
        )
    confident = (score >= cfg.confident_score) & p_ok

    # 1. Primary match, trivial images only: each crowd box and prediction has at most one candidate.
    crowd_pred, pred_taken, fallback = _trivial_assign(rules.match_candidates(iou, cfg) & pair_ok)
    unmatched = (crowd_pred < 0) & c_ok

    # 2. Box-in-box crowd boxes go to the per-image scorer.
    parts = rules.box_in_box_parts(iou, ioa, confident, unmatched, cfg)
    fallback |= rules.box_in_box_boxes(parts).any(axis=1)

    # 3. Second chance, again only where trivial.
    rest_pred = ~pred_taken & p_ok
    crowd_pred2, taken2, conflict2 = _trivial_assign(
        rules.second_chance_candidates(iou, unmatched, rest_pred & confident, cfg)
    )
    fallback |= conflict2
    crowd_pred = np.where(crowd_pred2 >= 0, crowd_pred2, crowd_pred)
    pred_taken |= taken2

    # 4. Crowd boxes (padded predictions have score 0 and IoU 0: they support nothing).
    c = rules.crowd_findings(iou, score, a, b, crowd_pred, pred_taken, None, cfg)

    # 5. Missed predictions (a second box on a matched crowd box is a conflict above: never here).
    missed = ~pred_taken & p_ok & ~rules.second_boxes(iou, pred_taken, cfg)
    mgrade = rules.missed_grade(score, cfg)

    keep = ~fallback[:, None]
    row_ok = np.concatenate([c_ok & keep, missed & keep], axis=1)
    sev = np.concatenate([c.severity, score], axis=1)
    gcode = np.concatenate([c.grade, mgrade], axis=1)
    disc = rules.aggregate_rows(sev, row_ok, cfg)
    p_orig_pad = _pad(p_orig, p_rep, p_col, (b_, kx), -1)
    index = np.concatenate([np.broadcast_to(np.arange(mx), (b_, mx)), p_orig_pad], axis=1)
    source = np.concatenate([np.zeros((b_, mx), np.int8), np.ones((b_, kx), np.int8)], axis=1)
    noise = np.concatenate([c.noise_type, np.full((b_, kx), rules.T_MISSED)], axis=1)
    conf = np.concatenate([c.confidence, score], axis=1)
    prop = np.concatenate([c.proposed, b], axis=1)
    return _Block(
        counts=row_ok.sum(axis=1),
        fallback=fallback,
        discrepancy=disc,
        grade=np.where(row_ok, gcode, rules.G_CLEAN).max(axis=1),
        source=source[row_ok],
        index=index[row_ok],
        noise=noise[row_ok],
        severity=sev[row_ok],
        confidence=conf[row_ok],
        grade_rows=gcode[row_ok],
        proposed=prop[row_ok],
    )


def _trivial_assign(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one-to-one assignment of candidate pairs where no box has two candidates.

    Args:
        valid: bool (B, M, K) candidate pairs.

    Returns:
        ``(crowd_pred, pred_taken, conflict)``: int64 (B, M) each crowd box's prediction (-1 for none),
        bool (B, K) predictions taken, bool (B,) images where some box has two candidates (their
        assignment needs the Hungarian algorithm: the per-image scorer).
    """
    rc = valid.sum(axis=2)
    cc = valid.sum(axis=1)
    conflict = (rc > 1).any(axis=1) | (cc > 1).any(axis=1)
    return np.where(rc > 0, valid.argmax(axis=2), -1), cc > 0, conflict


def _rows(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of ``counts`` rows: each row's segment number and position inside its segment."""
    total = int(counts.sum())
    seg = np.repeat(np.arange(counts.shape[0]), counts)
    starts = np.cumsum(counts) - counts
    return seg, np.arange(total) - starts[seg]


def _several_classes(preds: Sequence[Detections], p_img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Images whose kept predictions (``keep``, rows of the concatenated predictions) hold two classes."""
    if keep.sum() < 2:
        return np.zeros(0, np.int64)
    cls = np.concatenate([p.class_id for p in preds])[keep]
    img = p_img[keep]
    lo = np.full(len(preds), np.iinfo(np.int64).max)
    hi = np.full(len(preds), np.iinfo(np.int64).min)
    np.minimum.at(lo, img, cls)
    np.maximum.at(hi, img, cls)
    return np.flatnonzero(hi > lo)


def score_batch(
    crowds: Sequence[Detections], preds: Sequence[Detections], *, config: LSMConfig | None = None
) -> BatchScores:
    """Score many images at once; ``score_batch(...).image(i)`` equals ``score_image(crowds[i], preds[i])``.

    Args:
        crowds: N crowd label sets (pixels; scores ignored).
        preds: N prediction sets, parallel to ``crowds`` (unscored boxes count as 1.0).
        config: thresholds and aggregation; ``LSMConfig()`` when None.

    Returns:
        Flat per-image and per-instance arrays; ``.discrepancy`` alone is the cheap path for ranking.

    Raises:
        ValueError: if the two sequences differ in length.
        TypeError: if an element is not ``Detections``.

    Example:
        Two images: one crowd box the model confirms, and one crowd box with nothing there.

        >>> box = np.array([[10, 10, 30, 30]])
        >>> crowds = [Detections(box, np.array([0])), Detections(box + 100, np.array([0]))]
        >>> preds = [Detections(box, np.array([0]), score=np.array([0.9])), Detections.empty(with_score=True)]
        >>> b = score_batch(crowds, preds)
        >>> b.discrepancy.round(3).tolist(), b.grade.tolist()
        ([0.0, 0.283], ['clean', 'major'])
        >>> b.image(1).instances.noise_type.tolist()
        ['background']
    """
    if len(crowds) != len(preds):
        raise ValueError(f"preds: expected {len(crowds)} prediction sets got {len(preds)}")
    cfg = config or LSMConfig()
    for i, (c, p) in enumerate(zip(crowds, preds, strict=True)):
        if not isinstance(c, Detections) or not isinstance(p, Detections):
            check_detections(f"crowds[{i}]", c)
            check_detections(f"preds[{i}]", p)
    n = len(crowds)
    if n == 0:
        return _empty_batch()

    m_img = np.array([c.xyxy.shape[0] for c in crowds], np.int64)
    k_raw = np.array([p.xyxy.shape[0] for p in preds], np.int64)
    c_xyxy = np.concatenate([c.xyxy for c in crowds])
    p_xyxy = np.concatenate([p.xyxy for p in preds])
    p_score32 = np.concatenate(
        [p.score if p.score is not None else np.ones(p.xyxy.shape[0], np.float32) for p in preds]
    )
    c_cls = p_cls = None
    if cfg.class_aware:
        c_cls = np.concatenate([c.class_id for c in crowds])
        p_cls = np.concatenate([p.class_id for p in preds])
    # The predictions the rules see (``rules.usable_predictions``): the score floor, compared in float64 as
    # score_image does (unscored predictions are never dropped), and a positive area, vectorised; an image
    # whose used predictions hold several classes is redone alone for its cross-class duplicates.
    keep = rules.above_floor(p_score32, cfg) & (p_xyxy[:, 2] > p_xyxy[:, 0]) & (p_xyxy[:, 3] > p_xyxy[:, 1])
    p_img, p_pos = _rows(k_raw)
    if not cfg.class_aware:
        for i in _several_classes(preds, p_img, keep):
            lo = int(k_raw[:i].sum())
            hi = lo + int(k_raw[i])
            keep[lo:hi] = rules.usable_predictions(preds[i].xyxy, preds[i].score, preds[i].class_id, cfg)
    kept = np.flatnonzero(keep)
    k_img = np.bincount(p_img[kept], minlength=n).astype(np.int64)

    # Sort images by size and lay crowd rows and kept predictions out in that order.
    order = np.lexsort((k_img, m_img))
    m_sorted, k_sorted = m_img[order], k_img[order]
    c_off = np.cumsum(m_img) - m_img
    k_off = np.cumsum(k_img) - k_img
    c_seg, c_col = _rows(m_sorted)
    c_perm = c_off[order][c_seg] + c_col
    p_seg, p_col = _rows(k_sorted)
    p_perm = kept[k_off[order][p_seg] + p_col]
    c_bounds = np.concatenate([[0], np.cumsum(m_sorted)])
    p_bounds = np.concatenate([[0], np.cumsum(k_sorted)])

    blocks: list[_Block] = []
    s = 0
    while s < n:
        e_max = min(n, s + _LOOKAHEAD)
        mx_run = np.maximum(m_sorted[s:e_max], 1)  # ascending already
        kx_run = np.maximum.accumulate(np.maximum(k_sorted[s:e_max], 1))
        cost = np.arange(1, e_max - s + 1) * mx_run * kx_run
        e = s + max(1, int(np.searchsorted(cost, _BLOCK_PAIRS, side="right")))
        cs, ce, ps, pe = c_bounds[s], c_bounds[e], p_bounds[s], p_bounds[e]
        cr, pr = c_perm[cs:ce], p_perm[ps:pe]
        blocks.append(
            _score_block(
                c_seg[cs:ce] - s,
                c_col[cs:ce],
                c_xyxy[cr],
                None if c_cls is None else c_cls[cr],
                p_seg[ps:pe] - s,
                p_col[ps:pe],
                p_xyxy[pr],
                None if p_cls is None else p_cls[pr],
                p_score32[pr].astype(np.float64),
                p_pos[pr],
                e - s,
                int(mx_run[e - s - 1]),
                int(kx_run[e - s - 1]),
                cfg,
            )
        )
        s = e
    return _assemble(blocks, order, m_img, k_raw, crowds, preds, cfg)


def score_images(
    crowds: Sequence[Detections], preds: Sequence[Detections], *, config: LSMConfig | None = None
) -> list[ImageScore]:
    """Score many images (see ``score_image``), batched across images (see ``score_batch``).

    Args:
        crowds: N crowd label sets.
        preds: N prediction sets, parallel to ``crowds``.
        config: thresholds and aggregation; ``LSMConfig()`` when None.

    Returns:
        N ``ImageScore`` in input order, each equal to ``score_image`` on that image. For the discrepancies
        alone, ``score_batch(...).discrepancy`` skips building the N objects.

    Raises:
        ValueError: if the two sequences differ in length.
        TypeError: if an element is not ``Detections``.
    """
    return score_batch(crowds, preds, config=config).images()


def _assemble(
    blocks: list[_Block],
    order: np.ndarray,
    m_img: np.ndarray,
    k_raw: np.ndarray,
    crowds: Sequence[Detections],
    preds: Sequence[Detections],
    cfg: LSMConfig,
) -> BatchScores:
    """Put block results (sorted order) back in input order and splice in the per-image fallbacks."""
    n = order.shape[0]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(blk, name) for blk in blocks])

    counts_sorted = cat("counts")
    fallback = np.zeros(n, bool)
    fallback[order] = cat("fallback")
    discrepancy = np.zeros(n)
    pooled = blocks[0].discrepancy is not None  # the same for every block: it depends on cfg only
    if pooled:
        discrepancy[order] = cat("discrepancy")
    grade = np.zeros(n, np.int64)
    grade[order] = cat("grade")
    counts = np.zeros(n, np.int64)
    counts[order] = counts_sorted

    slow = {int(i): score_image(crowds[i], preds[i], config=cfg) for i in np.flatnonzero(fallback)}
    for i, sc in slow.items():
        counts[i] = len(sc.instances)
        discrepancy[i] = sc.discrepancy
        grade[i] = GRADE_CODE[sc.grade.value]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    seg, pos = _rows(counts_sorted)
    dest = offsets[order][seg] + pos
    total = int(offsets[-1])
    noise = np.zeros(total, np.int64)
    noise[dest] = cat("noise")
    grade_rows = np.zeros(total, np.int64)
    grade_rows[dest] = cat("grade_rows")
    source = np.zeros(total, np.int8)
    source[dest] = cat("source")
    index = np.zeros(total, np.int64)
    index[dest] = cat("index")
    severity = np.zeros(total)
    severity[dest] = cat("severity")
    confidence = np.zeros(total)
    confidence[dest] = cat("confidence")
    proposed = np.zeros((total, 4), np.float32)
    proposed[dest] = cat("proposed")
    parent = np.full(total, -1, np.int64)
    noise_type = NOISE_NAMES[noise]
    grade_str = GRADE_NAMES[grade_rows]
    action = ACTION_NAMES[GRADE_ACTION[grade_rows]]
    for i, sc in slow.items():
        f = sc.instances
        sl = slice(int(offsets[i]), int(offsets[i + 1]))
        source[sl], index[sl], noise_type[sl] = f.source, f.index, f.noise_type
        severity[sl], confidence[sl], grade_str[sl] = f.severity, f.confidence, f.grade
        action[sl], proposed[sl], parent[sl] = f.action, f.proposed_xyxy, f.parent

    if not pooled:
        off = offsets.tolist()
        for i in np.flatnonzero(~fallback).tolist():
            discrepancy[i] = aggregate(
                severity[off[i] : off[i + 1]],
                cfg.aggregation,
                temperature=cfg.temperature,
                sum_scale=cfg.sum_scale,
            )
    return BatchScores(
        discrepancy=discrepancy,
        grade=GRADE_NAMES[grade],
        n_crowd=m_img,
        n_pred=k_raw,
        offsets=offsets,
        instances=InstanceFindings(
            source=source,
            index=index,
            noise_type=noise_type,
            severity=severity,
            confidence=confidence,
            grade=grade_str,
            action=action,
            proposed_xyxy=proposed,
            parent=parent,
        ),
        fallback=fallback,
    )


def _empty_batch() -> BatchScores:
    empty = np.zeros(0, np.int64)
    return BatchScores(
        discrepancy=np.zeros(0),
        grade=GRADE_NAMES[:0],
        n_crowd=empty,
        n_pred=empty,
        offsets=np.zeros(1, np.int64),
        instances=InstanceFindings.empty(),
        fallback=np.zeros(0, bool),
    )
