"""Grades learned from the images experts re-annotated (pure numpy).

The LSM names a noise type for each instance (``selection.lsm``) and grades it with thresholds. Those
thresholds are constants; on real data they do not transfer. Every image an expert re-annotated is a set of
labelled examples for them: each crowd box the LSM named as an error of type T either is one (by the
expert's boxes on that image) or is not, and each prediction the LSM reported as missed either is a deposit
no crowd box covers or is not. This module turns those examples into one small decision rule per noise type
and applies it to new findings:

1. ``label_findings(crowd, pred, score, expert)``: the labelled examples of one re-annotated image (features
   from ``instance_features``, targets from ``expert_truth``).
2. ``fit_calibration(examples)``: per noise type, an L2-regularised logistic model of "the finding is a true
   error" on the instance features; its two cut-offs are chosen on out-of-fold probabilities so that the
   auto-fixed findings were true errors at least ``fix_precision`` of the time and the reviewed ones at least
   ``review_precision`` of the time (Laplace-smoothed). A type with fewer than ``min_examples`` examples, or
   fewer than ``min_class`` of either outcome, is too thin for a model: it gets no rule (``TypeRule.fitted``
   False) and its findings keep the LSM's own grades. Optionally (``min_rate_examples`` > 0, off by default)
   it gets a *rate rule* instead: one probability per action the LSM gave (auto-fix, review, keep) that has
   at least ``min_rate_examples`` examples, the Laplace-smoothed share of those examples that were true
   errors; a finding is auto-fixed when its rate reaches ``fix_precision``, reviewed when it reaches
   ``review_precision``, else kept; findings of other actions keep the LSM's grades.
3. ``regrade(score, crowd, pred, calibration)``: the same ``ImageScore`` with new grades and actions
   (probability >= fix cut-off -> auto_fix (localization ``minor``, the others ``major``); >= review cut-off
   -> review (``uncertain``); below -> keep (``clean``)). Types, severities, proposals and the image
   discrepancy are unchanged, so ``correct_labels`` applies the result as it applies the LSM's own grades.
   Box-in-box parts follow their parent.
4. ``weigh(score, calibration)``: the same ``ImageScore`` with the image discrepancy recomputed from
   severities weighted by the share of true errors among the re-annotated images' findings of the same type
   that were at least as severe (``Calibration.severity_weight``, shrunk towards 1 by ``weight_prior``
   pseudo-examples). The LSM's own discrepancy counts a finding of a type experts rarely confirm (on the
   simulator: localization about 0.2, missed about 0.3) as much as one they almost always confirm
   (box-in-box above 0.9); and within a type, the severe findings are the ones experts confirm (a crowd box
   a confident prediction overlaps at IoU 0.3 is displaced; one at IoU 0.7 is usually the model's own
   imprecision). Weighed, the images ranked first are those whose findings are of the kinds, and the
   severities, that experts did confirm.
5. ``image_priority(crowd, pred, score, calibration, rule=...)``: what the benchmark's LSM loop buys by and
   the backend's ``priority`` orders tasks by: the weighted severities with each likely missed object counted
   once more (``missed``, the default), aggregated as the LSM aggregates, or the weighted discrepancy
   (``discrepancy``).

The whole calibration is a JSON-ready dict (``Calibration.to_dict`` / ``from_dict``), so a backend can store
it with a model version. Truth from expert boxes (``expert_truth``) ignores classes by default (a crowd box
with the wrong class is not one of these noise types); with ``class_aware=True`` (pass the LSM's
``LSMConfig.class_aware``) it keeps them apart as the class-aware LSM does, so a crowd box of the wrong class
is background and the expert's box missed: what the class-aware LSM reports, and its fix.

Example:
    >>> import numpy as np
    >>> from selection.calibration import FEATURES, LabelledFindings, fit_calibration
    >>> examples = LabelledFindings(
    ...     noise_type=np.array(["background"] * 4),
    ...     features=np.zeros((4, len(FEATURES))),
    ...     target=np.array([True, False, True, False]),
    ... )
    >>> fit_calibration(examples).rules["background"].fitted  # too few examples: the LSM's grades stay
    False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from selection.detections import Detections
from selection.lsm import Action, Grade, ImageScore, InstanceFindings, LSMConfig, NoiseType, aggregate
from selection.matching import assign, match_boxes, pair_geometry

# The noise types a rule can be learned for, and the grade an automatic fix of each gets.
CALIBRATED_TYPES: tuple[str, ...] = ("background", "localization", "box_in_box", "missed")
_FIX_GRADE = {"localization": Grade.MINOR.value}
FEATURES: tuple[str, ...] = (
    "severity",
    "confidence",
    "log_size",
    "proposal_iou",
    "crowd_overlap",
    "support",
    "confident_inside",
    "agreement",
)
_GRADE_ORDER = {g.value: k for k, g in enumerate(Grade)}


@dataclass(frozen=True)
class CalibrationConfig:
    """How expert boxes define the truth, and how the rules are fitted.

    Attributes:
        match_iou: IoU at which a crowd box (or a prediction) and an expert box are the same object.
        clean_iou: a crowd box matched to an expert box at this IoU or more is correct; below it, it is a
            localization error (the expert would move it).
        near_iou: an unmatched crowd box overlapping an otherwise unlabelled expert box at this IoU or more
            is a badly placed box for it (localization), not a box on background.
        bib_ioa: share of an expert box inside a crowd box for it to count as enclosed; a crowd box
            enclosing two or more expert boxes is box-in-box.
        fix_precision: auto-fix only where at least this share of the findings were true errors.
        review_precision: send to review only where at least this share were true errors; keep the rest.
        min_examples: fewest labelled examples of a type to fit its rule.
        min_class: fewest true errors and fewest non-errors of a type to fit its rule.
        min_rate_examples: fewest labelled examples of one LSM action of a type for a rate rule on that action
            when a model cannot be fitted; 0 (the default) turns rate rules off. Off because on the
            development seeds they never raised the corrected labels' F1 and once lowered it (a rate from 12
            examples demoted fixes that were right; ``docs/results/dev-notes-issue7.txt`` section 7).
        l2: L2 penalty on the standardised logistic coefficients (the intercept is not penalised).
        folds: folds of the out-of-fold probabilities the cut-offs are chosen on (stratified: each fold holds
            its share of the true errors, dealt in the order of the features, not of the examples).
        weight_prior: pseudo-examples, all true errors, added to each type's examples when its share of true
            errors weighs the image discrepancy (``weigh``); a type with no examples weighs 1, the LSM's own.
        weight_by_severity: a finding weighs the share of true errors among its type's examples that were at
            least as severe (True, the default); False: among all its type's examples, whatever their
            severity (one weight per type).
    """

    match_iou: float = 0.5
    clean_iou: float = 0.8
    near_iou: float = 0.1
    bib_ioa: float = 0.7
    fix_precision: float = 0.8
    review_precision: float = 0.4
    min_examples: int = 20
    min_class: int = 4
    min_rate_examples: int = 0
    l2: float = 1.0
    folds: int = 5
    weight_prior: float = 2.0
    weight_by_severity: bool = True

    def __post_init__(self) -> None:
        for name in ("match_iou", "clean_iou", "near_iou", "bib_ioa", "fix_precision", "review_precision"):
            value = getattr(self, name)
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name}: expected a value in (0, 1], got {value}")
        if not self.near_iou <= self.match_iou <= self.clean_iou:
            raise ValueError(
                "near_iou, match_iou, clean_iou: expected near_iou <= match_iou <= clean_iou, got "
                f"{self.near_iou}, {self.match_iou}, {self.clean_iou}"
            )
        if self.review_precision > self.fix_precision:
            raise ValueError(
                f"review_precision: expected at most fix_precision={self.fix_precision}, "
                f"got {self.review_precision}"
            )
        if self.min_class < 1 or self.min_examples < 2 * self.min_class:
            raise ValueError(
                f"min_examples, min_class: expected min_class >= 1 and min_examples >= 2 * min_class, got "
                f"{self.min_examples}, {self.min_class}"
            )
        if self.min_rate_examples < 0:
            raise ValueError(f"min_rate_examples: expected 0 or more, got {self.min_rate_examples}")
        if not self.l2 > 0:
            raise ValueError(f"l2: expected a positive penalty, got {self.l2}")
        if self.folds < 2:
            raise ValueError(f"folds: expected at least 2, got {self.folds}")
        if not self.weight_prior > 0:
            raise ValueError(f"weight_prior: expected a positive number of examples, got {self.weight_prior}")


@dataclass(frozen=True)
class ExpertTruth:
    """What the expert's boxes say about one image's crowd boxes.

    Attributes:
        crowd_type: str (M,) per crowd box: ``clean``, ``localization``, ``box_in_box`` or ``background``.
        crowd_expert: int64 (M,) the expert box each crowd box stands for (-1 for background and box-in-box).
        missed: bool (E,) expert boxes no crowd box stands for, nor encloses as box-in-box.
    """

    crowd_type: np.ndarray
    crowd_expert: np.ndarray
    missed: np.ndarray


def expert_truth(
    crowd: Detections,
    expert: Detections,
    *,
    config: CalibrationConfig | None = None,
    class_aware: bool = False,
) -> ExpertTruth:
    """Classify each crowd box of one image against the expert's boxes, and find the deposits it missed.

    Rules (classes ignored unless ``class_aware``: then every pairing below is of boxes of one class): crowd
    and expert boxes are matched one-to-one at IoU >= ``match_iou``; a match at IoU >= ``clean_iou`` is
    clean, below it localization. An unmatched crowd box enclosing two or more
    expert boxes (IoA >= ``bib_ioa``) is box-in-box. The other unmatched crowd boxes are matched again to the
    unmatched expert boxes at IoU >= ``near_iou`` (localization); what is left is background. An expert box
    is missed when no crowd box stands for it and no box-in-box box encloses it.

    Args:
        crowd: M crowd boxes, pixels.
        expert: E expert boxes of the same image, pixels.
        config: the thresholds; ``CalibrationConfig()`` when None.
        class_aware: pair only boxes of the same class (as the LSM with ``LSMConfig.class_aware``).

    Returns:
        The per-box truth.
    """
    cfg = config or CalibrationConfig()
    m, e = len(crowd), len(expert)
    ctype = np.full(m, NoiseType.BACKGROUND.value, dtype=object)
    cexp = np.full(m, -1, np.int64)
    taken = np.zeros(e, bool)
    enclosed = np.zeros(e, bool)
    if m and e:
        first = match_boxes(crowd, expert, iou_threshold=cfg.match_iou, class_aware=class_aware)
        ctype[first.crowd_idx] = np.where(
            first.iou >= cfg.clean_iou, NoiseType.CLEAN.value, NoiseType.LOCALIZATION.value
        )
        cexp[first.crowd_idx] = first.pred_idx
        taken[first.pred_idx] = True
        iou, ioa = pair_geometry(crowd.xyxy, expert.xyxy)
        if class_aware:  # a box of another class is no pairing at all
            other = crowd.class_id[:, None] != expert.class_id[None, :]
            iou, ioa = np.where(other, 0.0, iou), np.where(other, 0.0, ioa)
        free = np.ones(m, bool)
        free[first.crowd_idx] = False
        bib = free & (((ioa >= cfg.bib_ioa) & (iou < cfg.match_iou)).sum(axis=1) >= 2)
        ctype[bib] = NoiseType.BOX_IN_BOX.value
        if bib.any():
            enclosed = (ioa[bib] >= cfg.bib_ioa).any(axis=0)
        free &= ~bib
        valid = (iou >= cfg.near_iou) & free[:, None] & ~taken[None, :]
        rows, cols = assign(iou, valid)
        ctype[rows] = NoiseType.LOCALIZATION.value
        cexp[rows] = cols
        taken[cols] = True
    return ExpertTruth(crowd_type=ctype.astype(str), crowd_expert=cexp, missed=~taken & ~enclosed)


def instance_features(
    crowd: Detections,
    pred: Detections,
    findings: InstanceFindings,
    *,
    agreement: np.ndarray | None = None,
) -> np.ndarray:
    """Features of every instance of one image, the inputs of the calibrated rules.

    Columns (``FEATURES``): the LSM's ``severity`` and ``confidence``; ``log_size`` = log(1 + sqrt(area)) of
    the instance's own box (the crowd box, or the prediction for model instances); ``proposal_iou`` = IoU of
    the own box with its proposed box (0 when the proposal is a drop); ``crowd_overlap`` = highest IoU with
    another crowd box (for a crowd box, its duplicates; for a model instance, a crowd box already standing
    there); ``support`` = highest score of a prediction overlapping the own box at IoU >= 0.1 (other than
    the instance itself); ``confident_inside`` = number of predictions with score
    >= 0.5 lying mostly (IoA >= 0.7) inside the own box; ``agreement`` = the caller's per-crowd-box
    annotator agreement in [0, 1] (NaN for model instances and when not given).

    Args:
        crowd: M crowd boxes the findings were computed from.
        pred: K predictions the findings were computed from (unscored boxes count as score 1).
        findings: the LSM's findings of this image.
        agreement: optional float (M,) annotator agreement per crowd box.

    Returns:
        float64 (N, len(FEATURES)).

    Raises:
        ValueError: if ``agreement`` has the wrong shape or the findings do not index these boxes.
    """
    n = len(findings)
    m = len(crowd)
    if agreement is not None:
        agreement = np.asarray(agreement, np.float64)
        if agreement.shape != (m,):
            raise ValueError(f"agreement: expected shape ({m},), got {agreement.shape}")
    out = np.zeros((n, len(FEATURES)), np.float64)
    if n == 0:
        return out
    from_crowd = findings.source == 0
    idx = findings.index
    if (from_crowd & (idx >= m)).any() or (~from_crowd & (idx >= len(pred))).any():
        raise ValueError("findings: their indices do not fit these crowd boxes and predictions")
    own = np.empty((n, 4), np.float64)
    own[from_crowd] = crowd.xyxy[idx[from_crowd]]
    own[~from_crowd] = pred.xyxy[idx[~from_crowd]]
    pscore = np.ones(len(pred)) if pred.score is None else pred.score.astype(np.float64)
    area = np.clip((own[:, 2] - own[:, 0]) * (own[:, 3] - own[:, 1]), 0.0, None)
    proposed = findings.proposed_xyxy.astype(np.float64)
    drop = np.isnan(proposed).any(axis=1)
    prop_iou = np.zeros(n)
    if (~drop).any():
        # Each box with its own proposal only (N pairs, not an N x N matrix for its diagonal).
        pi, _ = pair_geometry(own[~drop][:, None, :], np.nan_to_num(proposed[~drop])[:, None, :])
        prop_iou[~drop] = pi[:, 0, 0]
    crowd_overlap = np.zeros(n)
    if m:
        ci, _ = pair_geometry(own, crowd.xyxy)
        ci[np.flatnonzero(from_crowd), idx[from_crowd]] = 0.0  # not with itself
        crowd_overlap = ci.max(axis=1)
    support = np.zeros(n)
    inside = np.zeros(n)
    if len(pred):
        pi, pa = pair_geometry(own, pred.xyxy)
        w = np.where(pi >= 0.1, pscore[None, :], 0.0)
        w[np.flatnonzero(~from_crowd), idx[~from_crowd]] = 0.0
        support = w.max(axis=1)
        inside = ((pa >= 0.7) & (pscore >= 0.5)[None, :]).sum(axis=1).astype(np.float64)
    agree = np.full(n, np.nan)
    if agreement is not None:
        agree[from_crowd] = agreement[idx[from_crowd]]
    out[:, 0] = findings.severity
    out[:, 1] = findings.confidence
    out[:, 2] = np.log1p(np.sqrt(area))
    out[:, 3] = prop_iou
    out[:, 4] = crowd_overlap
    out[:, 5] = support
    out[:, 6] = inside
    out[:, 7] = agree
    return out


@dataclass(frozen=True)
class LabelledFindings:
    """Labelled examples: findings of calibrated types with features and whether each was a true error.

    Attributes:
        noise_type: str (N,) the type the LSM named.
        features: float64 (N, len(FEATURES)).
        target: bool (N,) True when the finding was a true error of that type.
        action: str (N,) the LSM's own action for the finding (``keep``, ``auto_fix``, ``review``; rate rules
            are kept per action); ``""`` where unknown (None: unknown for all).
    """

    noise_type: np.ndarray
    features: np.ndarray
    target: np.ndarray
    action: np.ndarray | None = None

    def __post_init__(self) -> None:
        nt = np.asarray(self.noise_type).astype(str)
        feats = np.asarray(self.features, np.float64).reshape(-1, len(FEATURES))
        target = np.asarray(self.target, bool)
        action = np.full(nt.shape[0], "") if self.action is None else np.asarray(self.action).astype(str)
        if not nt.shape[0] == feats.shape[0] == target.shape[0] == action.shape[0]:
            raise ValueError(
                f"noise_type, features, target, action: expected equal lengths, got {nt.shape[0]}, "
                f"{feats.shape[0]}, {target.shape[0]}, {action.shape[0]}"
            )
        for name, value in (("noise_type", nt), ("features", feats), ("target", target), ("action", action)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @classmethod
    def empty(cls) -> LabelledFindings:
        """No examples."""
        return cls(np.zeros(0, str), np.zeros((0, len(FEATURES))), np.zeros(0, bool))

    @classmethod
    def concat(cls, parts: Sequence[LabelledFindings]) -> LabelledFindings:
        """All examples of ``parts``, in order."""
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.noise_type for p in parts]),
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.target for p in parts]),
            np.concatenate([p.action for p in parts if p.action is not None]),
        )


def finding_targets(
    crowd: Detections,
    pred: Detections,
    findings: InstanceFindings,
    expert: Detections,
    *,
    config: CalibrationConfig | None = None,
    class_aware: bool = False,
) -> np.ndarray:
    """Per instance, whether the LSM's finding is a true error of the type it named (expert boxes as truth).

    A crowd instance named T is a true error when ``expert_truth`` gives its box type T. A model instance
    named missed is one when it matches (IoU >= ``match_iou``, one-to-one) an expert box that is missed.
    Clean findings and box-in-box parts are False.

    Args:
        crowd: M crowd boxes; pred: K predictions; findings: the LSM's findings on them.
        expert: the expert's boxes of the same image.
        config: the thresholds; ``CalibrationConfig()`` when None.
        class_aware: truth by class (``expert_truth``), and a missed prediction stands only for an expert box
            of its class; pass the ``LSMConfig.class_aware`` the findings were scored with.

    Returns:
        bool (N,).
    """
    cfg = config or CalibrationConfig()
    truth = expert_truth(crowd, expert, config=cfg, class_aware=class_aware)
    n = len(findings)
    target = np.zeros(n, bool)
    if n == 0:
        return target
    from_crowd = findings.source == 0
    named = findings.noise_type.astype(str)
    rows = np.flatnonzero(from_crowd)
    target[rows] = (truth.crowd_type[findings.index[rows]] == named[rows]) & (
        named[rows] != NoiseType.CLEAN.value
    )
    missed_rows = np.flatnonzero(~from_crowd & (named == NoiseType.MISSED.value) & (findings.parent < 0))
    missed_expert = np.flatnonzero(truth.missed)
    if missed_rows.size and missed_expert.size:
        iou, _ = pair_geometry(pred.xyxy[findings.index[missed_rows]], expert.xyxy[missed_expert])
        ok = iou >= cfg.match_iou
        if class_aware:
            ok &= (
                pred.class_id[findings.index[missed_rows]][:, None] == expert.class_id[missed_expert][None, :]
            )
        r, _ = assign(iou, ok)
        target[missed_rows[r]] = True
    return target


def _calibrated_rows(findings: InstanceFindings) -> np.ndarray:
    return np.flatnonzero(np.isin(findings.noise_type.astype(str), CALIBRATED_TYPES) & (findings.parent < 0))


def label_findings(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    expert: Detections,
    *,
    agreement: np.ndarray | None = None,
    config: CalibrationConfig | None = None,
    class_aware: bool = False,
) -> LabelledFindings:
    """The labelled examples one re-annotated image gives: its findings of calibrated types, with targets.

    Use predictions of a model that was not trained on this image's expert boxes (e.g. the model whose
    findings sent the image to the experts): findings on a model's own training images are too good.

    Args:
        crowd: M crowd boxes; pred: K predictions; score: ``score_image(crowd, pred)``.
        expert: the expert's boxes of this image.
        agreement: optional float (M,) annotator agreement per crowd box.
        config: the truth thresholds; ``CalibrationConfig()`` when None.
        class_aware: the ``LSMConfig.class_aware`` ``score`` was computed with: truth is then read by class
            (``expert_truth``), else a correct class fix would be labelled "not an error".

    Returns:
        One example per primary instance the LSM named background, localization, box-in-box or missed.
    """
    f = score.instances
    rows = _calibrated_rows(f)
    feats = instance_features(crowd, pred, f, agreement=agreement)
    target = finding_targets(crowd, pred, f, expert, config=config, class_aware=class_aware)
    return LabelledFindings(
        f.noise_type.astype(str)[rows], feats[rows], target[rows], f.action.astype(str)[rows]
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights (F + 1,) of an L2-regularised logistic regression (last = intercept), Newton's method."""
    n, d = x.shape
    x1 = np.concatenate([x, np.ones((n, 1))], axis=1)
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[-1] = 1e-6
    for _ in range(50):
        p = _sigmoid(x1 @ w)
        grad = x1.T @ (p - y) + penalty * w
        hess = (x1 * (p * (1.0 - p))[:, None]).T @ x1 + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.max(np.abs(step)) < 1e-9:
            break
    return w


def _cutoff(prob: np.ndarray, target: np.ndarray, precision: float) -> float:
    """Lowest probability p such that the findings at or above p had smoothed precision >= ``precision``.

    Returns +inf when no cut-off reaches it.
    """
    order = np.argsort(-prob, kind="mergesort")
    hits = np.cumsum(target[order])
    k = np.arange(1, len(order) + 1)
    smoothed = (hits + 1.0) / (k + 2.0)
    # Only cut between distinct probabilities.
    last_of_tie = np.r_[prob[order][1:] != prob[order][:-1], True]
    ok = np.flatnonzero((smoothed >= precision) & last_of_tie)
    return float(prob[order][ok[-1]]) if ok.size else float("inf")


@dataclass(frozen=True)
class TypeRule:
    """The calibrated rule of one noise type.

    Attributes:
        noise_type: the type.
        fitted: False when there were too few examples (then the LSM's own grades are kept).
        reason: why it is not fitted, ``"fitted"`` for a model, or ``"rate of ..."`` for a rate rule.
        n_examples, n_errors: labelled examples and how many were true errors.
        used: bool (F,) features the model uses (those with a value in every example).
        mean, scale: float64 (F,) standardisation of the features.
        coef: float64 (F + 1,) logistic weights on the standardised used features, intercept last.
        fix_threshold: probability at or above which the finding is fixed automatically (inf: never).
        review_threshold: probability at or above which it is reviewed (below: kept).
        rates: for a rate rule, the LSM's action -> the probability of every finding the LSM gave that action
            (the smoothed share of true errors among those examples); empty for a model.
        severities: float64 (n_examples,) the examples' LSM severities, ascending, and ``errors`` bool
            (n_examples,) whether each was a true error: the severity-conditional weight of ``weigh``. Empty
            in a calibration stored before they were kept (then the type's weight is one share).
    """

    noise_type: str
    fitted: bool
    reason: str
    n_examples: int
    n_errors: int
    used: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURES), bool))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURES)))
    scale: np.ndarray = field(default_factory=lambda: np.ones(len(FEATURES)))
    coef: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURES) + 1))
    fix_threshold: float = float("inf")
    review_threshold: float = float("inf")
    rates: dict[str, float] = field(default_factory=dict)
    severities: np.ndarray = field(default_factory=lambda: np.zeros(0))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def probability(self, features: np.ndarray, action: np.ndarray | None = None) -> np.ndarray:
        """float64 (N,) probability that each finding is a true error; NaN everywhere when not fitted.

        Args:
            features: float64 (N, len(FEATURES)); NaN values are replaced by the training mean.
            action: str (N,) the LSM's own action for each finding; a rate rule reads it (NaN for an action
                it has no rate for, and everywhere without it), a model ignores it.
        """
        features = np.asarray(features, np.float64).reshape(-1, len(FEATURES))
        if not self.fitted:
            return np.full(features.shape[0], np.nan)
        if self.rates:
            if action is None:
                return np.full(features.shape[0], np.nan)
            return np.array([self.rates.get(str(a), np.nan) for a in np.asarray(action)], np.float64)
        z = (features - self.mean) / self.scale
        z = np.where(np.isnan(z), 0.0, z)[:, self.used]
        return _sigmoid(z @ self.coef[:-1][self.used] + self.coef[-1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite thresholds as None)."""

        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else float(v)

        return {
            "noise_type": self.noise_type,
            "fitted": self.fitted,
            "reason": self.reason,
            "n_examples": self.n_examples,
            "n_errors": self.n_errors,
            "used": [bool(v) for v in self.used],
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "coef": [float(v) for v in self.coef],
            "fix_threshold": num(self.fix_threshold),
            "review_threshold": num(self.review_threshold),
            "rates": {str(k): float(v) for k, v in self.rates.items()},
            "severities": [float(v) for v in self.severities],
            "errors": [bool(v) for v in self.errors],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TypeRule:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: a rule that could not score (arrays of the wrong length, severities not sorted or not
                paired with their outcomes, ``fitted`` not a boolean): a stored calibration fails when it is
                read, not on every prediction after.
        """

        def num(v: float | None) -> float:
            return float("inf") if v is None else float(v)

        if not isinstance(data.get("fitted"), bool):
            raise ValueError(f"rule {data.get('noise_type')!r}: fitted: expected true or false")
        rule = cls(
            noise_type=str(data["noise_type"]),
            fitted=bool(data["fitted"]),
            reason=str(data["reason"]),
            n_examples=int(data["n_examples"]),
            n_errors=int(data["n_errors"]),
            used=np.array(data["used"], bool),
            mean=np.array(data["mean"], np.float64),
            scale=np.array(data["scale"], np.float64),
            coef=np.array(data["coef"], np.float64),
            fix_threshold=num(data["fix_threshold"]),
            review_threshold=num(data["review_threshold"]),
            rates={str(k): float(v) for k, v in (data.get("rates") or {}).items()},
            severities=np.array(data.get("severities") or [], np.float64),
            errors=np.array(data.get("errors") or [], bool),
        )
        f = len(FEATURES)
        for name, value, size in (
            ("used", rule.used, f),
            ("mean", rule.mean, f),
            ("scale", rule.scale, f),
            ("coef", rule.coef, f + 1),
        ):
            if value.shape != (size,):
                raise ValueError(
                    f"rule {rule.noise_type!r}: {name}: expected {size} values, got {value.size}"
                )
        if rule.severities.shape != rule.errors.shape:
            raise ValueError(f"rule {rule.noise_type!r}: severities and errors: expected one outcome each")
        if np.any(np.diff(rule.severities) < 0):
            raise ValueError(f"rule {rule.noise_type!r}: severities: expected them sorted")
        return rule


def fitted_label(fitted: bool, reason: str) -> str:
    """How a rule was fitted, for tables: ``yes`` (a model), the rate rule's reason, or ``no (why)``."""
    if not fitted:
        return f"no ({reason})"
    return "yes" if reason == "fitted" else reason


def confirmed_share(errors: int, examples: int, prior: float) -> float:
    """The share of ``examples`` findings that were true errors, counting ``prior`` pseudo-examples that
    were: in (0, 1], 1 without examples (a type's weight in ``weigh``)."""
    return (errors + prior) / (examples + prior)


@dataclass(frozen=True)
class Calibration:
    """One rule per calibrated noise type (fitted or not) and the settings they were fitted with."""

    rules: dict[str, TypeRule]
    config: CalibrationConfig = field(default_factory=CalibrationConfig)

    @property
    def fitted_types(self) -> list[str]:
        """The types whose findings are regraded."""
        return [t for t, r in self.rules.items() if r.fitted]

    def type_weight(self, noise_type: str) -> float:
        """``confirmed_share`` of the type's labelled findings: 1 for a type without examples or not
        calibrated (``clean``)."""
        rule = self.rules.get(str(noise_type))
        n, k = (rule.n_examples, rule.n_errors) if rule is not None else (0, 0)
        return confirmed_share(k, n, self.config.weight_prior)

    def severity_weight(self, noise_type: str, severity: np.ndarray) -> np.ndarray:
        """float64, the shape of ``severity``: the weight ``weigh`` gives findings of ``noise_type``.

        With ``config.weight_by_severity`` and the rule's examples kept: the ``confirmed_share`` of the
        type's examples whose severity was at least the finding's (a finding more severe than every example
        weighs 1, the LSM's own). Otherwise ``type_weight`` for every finding.
        """
        severity = np.asarray(severity, np.float64)
        rule = self.rules.get(str(noise_type))
        if rule is None or not self.config.weight_by_severity or rule.severities.size == 0:
            return np.full(severity.shape, self.type_weight(noise_type))
        # Examples at least as severe: those from the first index with severity >= s (ascending order).
        first = np.searchsorted(rule.severities, severity, side="left")
        errors_above = np.concatenate([np.cumsum(rule.errors[::-1])[::-1], [0]])
        n = rule.severities.size - first
        prior = self.config.weight_prior
        return (errors_above[first] + prior) / (n + prior)  # confirmed_share, for every finding at once

    def type_weights(self) -> dict[str, float]:
        """``type_weight`` of every calibrated type, for reports."""
        return {t: self.type_weight(t) for t in CALIBRATED_TYPES}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for storing next to a model version."""
        from dataclasses import asdict

        return {"config": asdict(self.config), "rules": {t: r.to_dict() for t, r in self.rules.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Inverse of ``to_dict``. Config keys this version does not know (written by a newer one) are
        ignored.

        Raises:
            ValueError: a rule keyed by another noise type than its own, or one that could not score
                (:meth:`TypeRule.from_dict`).
        """
        rules = {t: TypeRule.from_dict(r) for t, r in data["rules"].items()}
        for key, rule in rules.items():
            if key != rule.noise_type or key not in {t.value for t in NoiseType}:
                raise ValueError(f"rules: {key!r} holds a rule for {rule.noise_type!r}")
        known = {f.name for f in fields(CalibrationConfig)}
        config = {k: v for k, v in (data.get("config") or {}).items() if k in known}
        return cls(rules=rules, config=CalibrationConfig(**config))


def _rate_rule(
    noise_type: str, action: np.ndarray, y: np.ndarray, why: str, cfg: CalibrationConfig
) -> TypeRule:
    """Per LSM action with at least ``min_rate_examples`` examples, one probability for its findings: the
    Laplace-smoothed share of true errors among them. Findings of other actions keep the LSM's grade."""
    n, pos = len(y), int(y.sum())
    rates: dict[str, float] = {}
    parts = []
    for a in sorted(set(action.tolist())):
        sel = action == a
        k, hit = int(sel.sum()), int(y[sel].sum())
        if a and k >= cfg.min_rate_examples:
            rates[a] = (hit + 1.0) / (k + 2.0)
            parts.append(f"{a} {hit}/{k}")
    if not rates:
        return TypeRule(
            noise_type, False, f"{why}; no LSM action has {cfg.min_rate_examples} examples", n, pos
        )
    return TypeRule(
        noise_type,
        True,
        f"rate of true errors per LSM action: {', '.join(parts)} ({why})",
        n,
        pos,
        fix_threshold=cfg.fix_precision,
        review_threshold=cfg.review_precision,
        rates=rates,
    )


def _stratified_folds(x: np.ndarray, y: np.ndarray, folds: int) -> np.ndarray:
    """int64 (N,) the cross-validation fold of each example.

    The true errors, then the other examples, are each dealt round-robin in the order of their features, so
    that every fold holds its share of both kinds and the folds (hence the cut-offs) depend on the examples,
    not on the order they came in. Dealt in the order given, a handful of true errors could all land in one
    fold: the model fitted without that fold has no error to learn from, its out-of-fold probabilities say
    nothing, and the type's cut-offs could come out unreachable (no automatic fix at all) for one order of
    the same examples and not for another.
    """
    fold = np.empty(len(y), np.int64)
    dealt = 0
    for kind in (True, False):
        idx = np.flatnonzero(y == kind)
        keys = np.nan_to_num(x[idx], nan=-np.inf)
        ordered = idx[np.lexsort(keys.T[::-1])]
        fold[ordered] = (np.arange(ordered.size) + dealt) % folds
        dealt += ordered.size
    return fold


def _fit_type(
    noise_type: str, x: np.ndarray, y: np.ndarray, action: np.ndarray, cfg: CalibrationConfig
) -> TypeRule:
    n, pos = len(y), int(y.sum())
    thin = None
    if n < cfg.min_examples:
        thin = f"{n} examples, fewer than {cfg.min_examples}"
    elif min(pos, n - pos) < cfg.min_class:
        thin = f"{pos} true errors of {n}: fewer than {cfg.min_class} of one kind"
    if thin is not None:
        if cfg.min_rate_examples and n >= cfg.min_rate_examples:
            return _rate_rule(noise_type, action, y, thin, cfg)
        return TypeRule(noise_type, False, thin, n, pos)
    used = ~np.isnan(x).any(axis=0)
    mean = np.where(used, np.nanmean(np.where(used, x, 0.0), axis=0), 0.0)
    scale = np.where(used, x.std(axis=0), 1.0)
    scale = np.where(~used | (scale < 1e-12), 1.0, scale)
    z = ((np.where(used, x, 0.0) - mean) / scale)[:, used]
    # Out-of-fold probabilities choose the cut-offs; the final model uses every example.
    fold = _stratified_folds(x, y, cfg.folds)
    oof = np.empty(n)
    for k in range(cfg.folds):
        test = fold == k
        if not test.any():
            continue
        w = _fit_logistic(z[~test], y[~test].astype(np.float64), cfg.l2)
        oof[test] = _sigmoid(z[test] @ w[:-1] + w[-1])
    w = _fit_logistic(z, y.astype(np.float64), cfg.l2)
    coef = np.zeros(len(FEATURES) + 1)
    coef[:-1][used] = w[:-1]
    coef[-1] = w[-1]
    fix = _cutoff(oof, y, cfg.fix_precision)
    review = min(_cutoff(oof, y, cfg.review_precision), fix)
    return TypeRule(noise_type, True, "fitted", n, pos, used, mean, scale, coef, fix, review)


def fit_calibration(examples: LabelledFindings, *, config: CalibrationConfig | None = None) -> Calibration:
    """Fit one rule per calibrated noise type on labelled examples (see the module docstring).

    Args:
        examples: from ``label_findings`` on the re-annotated images (``LabelledFindings.concat``).
        config: settings; ``CalibrationConfig()`` when None.

    Returns:
        The calibration; types with too few examples have an unfitted rule and keep the LSM's grades.
    """
    cfg = config or CalibrationConfig()
    rules = {}
    action = examples.action if examples.action is not None else np.full(len(examples), "")
    for t in CALIBRATED_TYPES:
        sel = examples.noise_type == t
        rule = _fit_type(t, examples.features[sel], examples.target[sel], action[sel], cfg)
        severity = examples.features[sel, FEATURES.index("severity")]
        order = np.argsort(severity, kind="stable")
        rules[t] = replace(rule, severities=severity[order], errors=examples.target[sel][order])
    return Calibration(rules=rules, config=cfg)


def error_probability(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    agreement: np.ndarray | None = None,
) -> np.ndarray:
    """float64 (N,) calibrated probability that each finding is a true error of its type.

    NaN for clean findings, box-in-box parts, types without a fitted rule, and findings of an LSM action a
    rate rule has no rate for. ``score`` is the LSM's own verdict (``score_image``), not a regraded one: rate
    rules read the LSM's actions.
    """
    f = score.instances
    prob = np.full(len(f), np.nan)
    rows = _calibrated_rows(f)
    if rows.size == 0 or not calibration.fitted_types:
        return prob
    feats = instance_features(crowd, pred, f, agreement=agreement)
    named = f.noise_type.astype(str)
    for t in calibration.fitted_types:
        sel = rows[named[rows] == t]
        if sel.size:
            prob[sel] = calibration.rules[t].probability(feats[sel], f.action.astype(str)[sel])
    return prob


def weigh(score: ImageScore, calibration: Calibration, *, config: LSMConfig | None = None) -> ImageScore:
    """The same verdict with the image discrepancy recomputed from severities weighted by type and severity.

    Each primary finding's severity is multiplied by ``calibration.severity_weight`` of its type at its
    severity (the share of true errors among the labelled findings of that type at least as severe) and the
    products are aggregated as the LSM aggregates severities (``config``: the settings ``score`` was
    computed with). Findings, grades and actions are unchanged. It commutes with ``regrade`` (which leaves
    types and severities alone).

    Example:
        >>> import numpy as np
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[105, 100, 125, 120], [10, 10, 30, 30]]), np.array([0, 0]),
        ...                   score=np.array([0.9, 0.7]))
        >>> missed = TypeRule("missed", False, "thin", n_examples=18, n_errors=4)
        >>> cal = Calibration(rules={"missed": missed})
        >>> round(cal.type_weight("missed"), 2), round(cal.type_weight("localization"), 2)
        (0.3, 1.0)
        >>> s = score_image(crowd, pred)
        >>> round(s.discrepancy, 3), round(weigh(s, cal).discrepancy, 3)
        (0.352, 0.237)

        With the examples' severities kept (as ``fit_calibration`` keeps them), a finding weighs the share
        among the examples at least as severe: here 1 of the 2 missed findings at severity >= 0.7 was real.

        >>> sev = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
        >>> missed = TypeRule("missed", False, "thin", 5, 1, severities=sev,
        ...                   errors=np.array([False, False, False, False, True]))
        >>> cal = Calibration(rules={"missed": missed})
        >>> cal.severity_weight("missed", np.array([0.0, 0.7, 0.95])).round(2).tolist()
        [0.43, 0.75, 1.0]
    """
    cfg = config or LSMConfig()
    value = aggregate(
        _weighted_severities(score, calibration),
        cfg.aggregation,
        temperature=cfg.temperature,
        sum_scale=cfg.sum_scale,
    )
    return replace(score, discrepancy=value)


def _weighted_severities(score: ImageScore, calibration: Calibration) -> np.ndarray:
    """Each primary finding's severity times ``calibration.severity_weight`` of its type at that severity."""
    f = score.instances
    primary = f.parent < 0
    named = f.noise_type[primary].astype(str)
    severity = f.severity[primary].astype(np.float64)
    weights = np.ones(severity.shape[0])
    for t in set(named.tolist()):
        sel = named == t
        weights[sel] = calibration.severity_weight(t, severity[sel])
    return severity * weights


def fix_findings(score: ImageScore, rows: np.ndarray) -> ImageScore:
    """The same verdict with the findings ``rows`` (primary instances) fixed automatically.

    Their grade becomes ``minor`` (localization) or ``major`` and their action ``auto_fix``; box-in-box parts
    follow their parent; the image grade is recomputed. Used when nobody will review a finding and its
    calibrated error probability says the fix is the likelier label (``bench.loop.corrected_labels``).

    Example:
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[10, 10, 30, 30]]), np.array([0]))
        >>> pred = Detections(np.array([[100, 100, 130, 130]]), np.array([0]), score=np.array([0.3]))
        >>> s = score_image(crowd, pred)
        >>> s.instances.action.tolist(), fix_findings(s, np.array([1])).instances.action.tolist()
        (['auto_fix', 'review'], ['auto_fix', 'auto_fix'])
    """
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        return score
    f = score.instances
    grade = f.grade.astype(str).astype(object)
    action = f.action.astype(str).astype(object)
    named = f.noise_type.astype(str)
    for r in rows:
        grade[r] = _FIX_GRADE.get(named[r], Grade.MAJOR.value)
        action[r] = Action.AUTO_FIX.value
    return _with_grades(score, grade, action)


def regrade(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    agreement: np.ndarray | None = None,
) -> ImageScore:
    """The LSM's verdict on one image with the grades and actions of the calibrated rules.

    Findings of types without a fitted rule keep their grade and action; box-in-box parts take their
    parent's. The image grade is recomputed (worst instance grade); everything else is unchanged.

    Args:
        crowd: M crowd boxes; pred: K predictions; score: ``score_image(crowd, pred)``.
        calibration: from ``fit_calibration``.
        agreement: optional float (M,) annotator agreement per crowd box (when the rules were fitted with it).

    Returns:
        A new ``ImageScore``.
    """
    return _regrade_with(
        score, calibration, error_probability(crowd, pred, score, calibration, agreement=agreement)
    )


def _regrade_with(score: ImageScore, calibration: Calibration, prob: np.ndarray) -> ImageScore:
    """``regrade`` from the findings' error probabilities (``error_probability``), computed once by callers
    that also need them."""
    f = score.instances
    if np.isnan(prob).all():
        return score
    grade = f.grade.astype(str).astype(object)
    action = f.action.astype(str).astype(object)
    named = f.noise_type.astype(str)
    for t in calibration.fitted_types:
        rule = calibration.rules[t]
        sel = np.flatnonzero((named == t) & ~np.isnan(prob))
        p = prob[sel]
        fix = p >= rule.fix_threshold
        review = ~fix & (p >= rule.review_threshold)
        grade[sel] = np.where(
            fix,
            _FIX_GRADE.get(t, Grade.MAJOR.value),
            np.where(review, Grade.UNCERTAIN.value, Grade.CLEAN.value),
        )
        action[sel] = np.where(
            fix, Action.AUTO_FIX.value, np.where(review, Action.REVIEW.value, Action.KEEP.value)
        )
    return _with_grades(score, grade, action)


def residual_errors(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    agreement: np.ndarray | None = None,
) -> float:
    """Expected label errors the calibrated correction would leave on one image: what re-annotating it adds.

    Each primary non-clean finding is a true error with probability ``p``: the calibrated error probability
    where a rule gives one, else the share of true errors among the labelled findings of its type at least
    as severe (``Calibration.severity_weight``, the weight ``weigh`` gives it). The calibrated grades
    (``regrade``) decide what the correction does with it: an automatic fix leaves an error when the finding
    was not one (``1 - p``); a kept or reviewed finding leaves one when it was (``p``; reviews are not
    counted as answered, since the cost limit leaves most unanswered). The sum ranks images by what an
    expert's re-annotation would fix that the correction would not: an image whose errors the correction
    fixes reliably (a confident background box) is worth less to buy than its discrepancy says.

    Args:
        crowd, pred: the image's crowd boxes and predictions; score: the LSM's own verdict on them
            (``score_image``, not regraded: rules read the LSM's actions).
        calibration: from ``fit_calibration``.
        agreement: optional float (M,) annotator agreement per crowd box.

    Example:
        >>> import numpy as np
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[10, 10, 30, 30]]), np.array([0]), score=np.array([0.9]))
        >>> s = score_image(crowd, pred)  # a background crowd box and a missed deposit, both auto-fixed
        >>> round(residual_errors(crowd, pred, s, Calibration(rules={})), 2)  # no examples: both errors
        0.0

        Experts confirmed 4 of 18 missed findings (weight (4 + 2) / (18 + 2) = 0.3): the automatic fix of
        the missed one is wrong with probability 0.7.

        >>> missed = TypeRule("missed", False, "thin", n_examples=18, n_errors=4)
        >>> round(residual_errors(crowd, pred, s, Calibration(rules={"missed": missed})), 2)
        0.7
    """
    _, prob, action = _finding_probabilities(crowd, pred, score, calibration, agreement)
    return _errors_left(prob, action)


PRIORITIES: tuple[str, ...] = ("discrepancy", "missed", "residual", "density")
"""The rules ``image_priority`` ranks images by once a calibration is fitted."""
DEFAULT_PRIORITY = "missed"
"""The rule the benchmark's LSM loop buys by and the backend orders a calibrated project's tasks by (its
``priority`` field). Chosen on development seeds 102, 103, 106, 107: the full method gained 0.4, 2.0, 0.2 and
0.6 AP50 over the ``discrepancy`` rule (dev notes §15). It is not the noise score: it ranks the noisy images
worse than the weighted discrepancy does (noisy-image AUROC 0.926 and 0.867 against 0.970 and 0.911 on seeds
102 and 103), so the backend writes both (``discrepancy``: how noisy a task is; ``priority``: which task an
expert should re-annotate first)."""


def image_priority(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    rule: str = DEFAULT_PRIORITY,
    agreement: np.ndarray | None = None,
    config: LSMConfig | None = None,
) -> float:
    """How much an expert's re-annotation of one image is worth, once a calibration is fitted: what the
    benchmark's LSM loop buys by (``bench.loop.LoopConfig.purchase``) and, by ``DEFAULT_PRIORITY``, the
    ``priority`` the backend orders a calibrated project's tasks by.

    Rules:
        ``discrepancy``: ``weigh(score, calibration).discrepancy``, the LSM aggregation of the severities,
        each weighted by the share of true errors among the labelled findings of its type at least as severe.
        ``missed``: the same aggregation over those weighted severities and, once more, each ``missed``
        finding's error probability (as in ``residual_errors``). The weighted discrepancy counts an image's
        likely errors of every type, so it prefers busy images, where re-annotating buys many errors at once.
        But the correction fixes the crowd's wrong boxes well and missed objects poorly: a missed deposit the
        experts do not draw stays missed in the cleaned labels. Counting each likely missed object a second
        time ranks the images whose errors only a re-annotation fixes higher while keeping the preference for
        busy images. Under the default ``sum`` aggregation it is ``1 - exp(-(weighted severities + expected
        missed objects) / sum_scale)``.
        ``residual`` (``residual_errors``) and ``density`` (``residual_density``): expected errors the
        correction would leave, and those per expected decision; not in [0, 1], tried and not taken.

    Args:
        crowd, pred: the image's crowd boxes and predictions; score: the LSM's own verdict on them
            (``score_image``, not regraded: rules read the LSM's actions).
        calibration: from ``fit_calibration``.
        rule: one of ``PRIORITIES``.
        agreement: optional float (M,) annotator agreement per crowd box.
        config: the LSM settings ``score`` was computed with (``LSMConfig()`` when None).

    Raises:
        ValueError: an unknown ``rule``.

    Example:
        >>> import numpy as np
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[10, 10, 30, 30]]), np.array([0]), score=np.array([0.9]))
        >>> s = score_image(crowd, pred)  # a background crowd box (severity 1.0), a missed deposit (0.9)
        >>> missed = TypeRule("missed", False, "thin", n_examples=18, n_errors=4)
        >>> cal = Calibration(rules={"missed": missed})  # the missed finding weighs 0.3, background 1.0
        >>> round(image_priority(crowd, pred, s, cal, rule="discrepancy"), 3)  # 1 - exp(-(1.0 + 0.27) / 3)
        0.345
        >>> round(image_priority(crowd, pred, s, cal, rule="missed"), 3)  # 1 - exp(-(1.0 + 0.27 + 0.3) / 3)
        0.407
    """
    if rule == "discrepancy":
        return float(weigh(score, calibration, config=config).discrepancy)
    if rule == "residual":
        return residual_errors(crowd, pred, score, calibration, agreement=agreement)
    if rule == "density":
        return residual_density(crowd, pred, score, calibration, agreement=agreement)
    if rule != "missed":
        raise ValueError(f"rule: expected one of {list(PRIORITIES)}, got {rule!r}")
    cfg = config or LSMConfig()
    named, prob, _ = _finding_probabilities(crowd, pred, score, calibration, agreement)
    severities = np.concatenate(
        [_weighted_severities(score, calibration), prob[named == NoiseType.MISSED.value]]
    )
    return aggregate(severities, cfg.aggregation, temperature=cfg.temperature, sum_scale=cfg.sum_scale)


def calibrated_verdict(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    agreement: np.ndarray | None = None,
    config: LSMConfig | None = None,
) -> ImageScore:
    """The LSM's verdict on one image as a calibrated project shows it (the backend's ``/predict`` and
    export): the grades and actions of the calibrated rules (``regrade``) and the weighted discrepancy
    (``weigh``; ``image_priority`` by the ``discrepancy`` rule), the noise score; the order experts work in
    is ``image_priority`` by ``DEFAULT_PRIORITY``.

    Example:
        >>> import numpy as np
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[10, 10, 30, 30]]), np.array([0]), score=np.array([0.9]))
        >>> s = score_image(crowd, pred)
        >>> cal = Calibration(rules={"missed": TypeRule("missed", False, "thin", n_examples=18, n_errors=4)})
        >>> v = calibrated_verdict(crowd, pred, s, cal)
        >>> v.discrepancy == image_priority(crowd, pred, s, cal, rule="discrepancy")
        True
        >>> v.instances.action.tolist() == regrade(crowd, pred, s, cal).instances.action.tolist()
        True
    """
    regraded = regrade(crowd, pred, score, calibration, agreement=agreement)
    return weigh(regraded, calibration, config=config)


def expected_decisions(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    agreement: np.ndarray | None = None,
) -> float:
    """Expected instance decisions of re-annotating one image (``bench.cost.instance_decisions``): one per
    crowd box (confirmed, moved or deleted) plus the deposits the expert would draw, each missed finding
    counted with its error probability (as in ``residual_errors``).

    Example:
        >>> import numpy as np
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[10, 10, 30, 30]]), np.array([0]), score=np.array([0.9]))
        >>> s = score_image(crowd, pred)
        >>> missed = TypeRule("missed", False, "thin", n_examples=18, n_errors=4)
        >>> round(expected_decisions(crowd, pred, s, Calibration(rules={"missed": missed})), 2)  # 1 + 0.3
        1.3
    """
    named, prob, _ = _finding_probabilities(crowd, pred, score, calibration, agreement)
    return _decisions(crowd, named, prob)


def residual_density(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    *,
    agreement: np.ndarray | None = None,
) -> float:
    """``residual_errors / (1 + expected_decisions)``, from one pass over the findings: the errors an expert's
    re-annotation would fix beyond the correction, per decision it costs (the one added keeps an image with
    nothing to decide finite).

    Example:
        >>> import numpy as np
        >>> from selection.lsm import score_image
        >>> crowd = Detections(np.array([[100, 100, 120, 120]]), np.array([0]))
        >>> pred = Detections(np.array([[10, 10, 30, 30]]), np.array([0]), score=np.array([0.9]))
        >>> s = score_image(crowd, pred)
        >>> missed = TypeRule("missed", False, "thin", n_examples=18, n_errors=4)
        >>> round(residual_density(crowd, pred, s, Calibration(rules={"missed": missed})), 3)  # 0.7 / 2.3
        0.304
    """
    named, prob, action = _finding_probabilities(crowd, pred, score, calibration, agreement)
    return _errors_left(prob, action) / (1.0 + _decisions(crowd, named, prob))


def _errors_left(prob: np.ndarray, action: np.ndarray) -> float:
    return float(np.where(action == Action.AUTO_FIX.value, 1.0 - prob, prob).sum())


def _decisions(crowd: Detections, named: np.ndarray, prob: np.ndarray) -> float:
    return float(len(crowd) + prob[named == NoiseType.MISSED.value].sum())


def _finding_probabilities(
    crowd: Detections,
    pred: Detections,
    score: ImageScore,
    calibration: Calibration,
    agreement: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The primary non-clean findings' types, their error probabilities (calibrated where a rule gives one,
    else ``Calibration.severity_weight``) and their calibrated actions."""
    f = score.instances
    named = f.noise_type.astype(str)
    rows = np.flatnonzero((f.parent < 0) & (named != NoiseType.CLEAN.value))
    if rows.size == 0:
        return np.zeros(0, dtype=str), np.zeros(0), np.zeros(0, dtype=str)
    calibrated = error_probability(crowd, pred, score, calibration, agreement=agreement)
    action = _regrade_with(score, calibration, calibrated).instances.action.astype(str)[rows]
    prob = calibrated[rows]
    for t in set(named[rows].tolist()):
        sel = (named[rows] == t) & np.isnan(prob)
        if sel.any():
            prob[sel] = calibration.severity_weight(t, f.severity[rows][sel])
    return named[rows], prob, action


def _with_grades(score: ImageScore, grade: np.ndarray, action: np.ndarray) -> ImageScore:
    """``score`` with new per-instance grades and actions (object arrays, changed here): box-in-box parts take
    their parent's, and the image grade is the worst instance grade."""
    f = score.instances
    part = np.flatnonzero(f.parent >= 0)
    if part.size:
        parent_row = f.parent[part]  # crowd instances come first, in crowd order
        grade[part] = grade[parent_row]
        action[part] = action[parent_row]
    grade = grade.astype(str)
    action = action.astype(str)
    worst = max((_GRADE_ORDER[g] for g in grade), default=0)
    findings = InstanceFindings(
        source=f.source,
        index=f.index,
        noise_type=f.noise_type,
        severity=f.severity,
        confidence=f.confidence,
        grade=grade,
        action=action,
        proposed_xyxy=f.proposed_xyxy,
        parent=f.parent,
    )
    return ImageScore(score.discrepancy, tuple(Grade)[worst], findings, score.n_crowd, score.n_pred)


def precision_recall_curve(
    prob: np.ndarray, target: np.ndarray, *, n_true: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of "probability >= t" for every distinct t, highest first.

    Args:
        prob: float (N,) scores of the findings.
        target: bool (N,) whether each is a true error.
        n_true: all true errors, found or not (recall's denominator); ``target.sum()`` when None.

    Returns:
        ``(precision, recall, threshold)``, float64 arrays of equal length (empty without findings).
    """
    prob = np.asarray(prob, np.float64)
    target = np.asarray(target, bool)
    keep = ~np.isnan(prob)
    prob, target = prob[keep], target[keep]
    total = int(target.sum()) if n_true is None else int(n_true)
    if prob.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-prob, kind="mergesort")
    hits = np.cumsum(target[order]).astype(np.float64)
    k = np.arange(1, prob.size + 1)
    last = np.r_[prob[order][1:] != prob[order][:-1], True]
    precision = (hits / k)[last]
    recall = (hits / total if total else np.full(prob.size, np.nan))[last]
    return precision, recall, prob[order][last]
