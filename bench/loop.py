"""The active label cleaning loop: seed set, cleaning model, score, select, expert, ..., correct."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.cost import instance_decisions, review
from bench.workbench import TrainedModel, Workbench
from metrics.f1 import label_f1
from model.dataset import epoch_repeats
from selection import (
    ImageScore,
    LSMConfig,
    Strategy,
    correct_labels,
    image_features,
    model_uncertainty,
    score_images,
    select,
)
from selection.calibration import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    Calibration,
    CalibrationConfig,
    LabelledFindings,
    error_probability,
    fit_calibration,
    fix_findings,
    image_priority,
    label_findings,
    regrade,
)
from selection.correction import Correction
from selection.detections import Detections

log = logging.getLogger(__name__)

PURCHASES = (*PRIORITIES, "oracle")
"""What the ``discrepancy`` strategy buys by once a calibration is fitted (``LoopConfig.purchase``): a rule of
``selection.calibration.image_priority``, the backend's as well, or ``oracle``, a diagnostic that reads the
truth (``true_errors``), from the first round on."""
CALIBRATION_SAMPLES = ("bought", "random")
"""The findings the calibration handed on to the correction is fitted on (``LoopConfig.calibrate_on``)."""

# Crowd noise types (as the simulator records them) that are label errors; "bib_inner" boxes are correct.
ERROR_TYPES = ("background", "localization", "box_in_box")


def is_noisy(record) -> bool:
    """True when the image has at least one crowd label error (a wrong box or a missed deposit)."""
    return true_errors(record) > 0


def true_errors(record) -> int:
    """The crowd label errors of one image, read from the simulator's truth: wrong boxes plus missed deposits.

    Only the ``oracle`` purchase reads it before an image is bought: an upper bound on what ranking the
    images by their label noise can buy, never a method.
    """
    return len(record.missed) + int(np.isin(record.crowd_noise, ERROR_TYPES).sum())


def boxes_touched(crowd: Detections, expert: Detections) -> int:
    """Boxes an expert adds, deletes or moves to turn ``crowd`` into ``expert`` on one image."""
    return instance_decisions(crowd, expert).touched


def expert_decisions(record) -> int:
    """Instance decisions of re-annotating one image (see ``bench.cost``)."""
    return instance_decisions(record.crowd, record.expert).total


@dataclass(frozen=True)
class LoopConfig:
    """One run of the loop.

    Attributes:
        strategy: how the images for the experts are picked after the random seed set.
        budget: share of the training images the experts re-annotate in total (seed set included).
        seed_fraction: share of the training images in the random seed set.
        rounds: selection rounds after the seed set.
        cleaning_epoch_images: repeat the bought images so that each cleaning model's epoch holds about this
            many (``model.dataset.epoch_repeats``, the rule of the matched fine-tunes and of the backend's
            ``TRAIN_EPOCH_IMAGES``); 0: each bought image once per epoch.
        weigh: once a calibration is fitted (from the second selection round on), rank by the discrepancy
            weighted by each type's share of true errors on the images bought so far
            (``selection.calibration.weigh``), as the backend ranks a calibrated project's tasks.
        purchase: what the ``discrepancy`` strategy buys once a calibration is fitted, a rule of
            ``selection.calibration.image_priority`` (the backend orders tasks by the default one):
            ``discrepancy`` (the images ranked first by the discrepancy, weighted when ``weigh``) or
            ``missed`` (the weighted severities plus the expected missed objects, aggregated: the errors
            only a re-annotation fixes count twice) or ``residual`` (the images with
            the most expected errors the calibrated correction would leave,
            ``selection.calibration.residual_errors``) or ``density`` (those errors per expected instance
            decision of re-annotating the image, ``selection.calibration.residual_density``: the decisions
            the purchase leaves for reviews count too), or ``oracle``, a diagnostic that reads the truth:
            from the first round on, the images with the most true label errors (``true_errors``; ties by the
            discrepancy). It bounds what ranking by label noise can buy; its loop is not leak-free.
    """

    strategy: Strategy
    budget: float = 0.25
    seed_fraction: float = 0.1
    rounds: int = 3
    cleaning_epoch_images: int = 0
    weigh: bool = True
    purchase: str = DEFAULT_PRIORITY
    calibrate_on: str = "bought"

    def __post_init__(self) -> None:
        if self.purchase not in PURCHASES:
            raise ValueError(f"purchase: expected one of {list(PURCHASES)}, got {self.purchase!r}")
        if self.calibrate_on not in CALIBRATION_SAMPLES:
            raise ValueError(
                f"calibrate_on: expected one of {list(CALIBRATION_SAMPLES)}, got {self.calibrate_on!r}"
            )


@dataclass(frozen=True)
class RoundReport:
    """What one round of the loop had spent and reached."""

    round: int
    strategy: str
    expert_images: int
    expert_fraction: float
    boxes_touched: int
    cleaning_ap50: float
    noisy_found: int
    noisy_total: int
    working_f1: float
    expert_decisions: int = 0
    labelled_findings: int = 0
    calibrated_types: int = 0


@dataclass
class LoopResult:
    """The loop's end state: who was re-annotated, the last cleaning model and its view of the rest."""

    config: LoopConfig
    expert_ids: list[str]
    cleaning: TrainedModel
    rounds: list[RoundReport]
    remaining_ids: list[str]
    preds: dict[str, Detections] = field(repr=False)
    scores: dict[str, ImageScore] = field(repr=False)
    examples: LabelledFindings = field(default_factory=LabelledFindings.empty, repr=False)
    calibration: Calibration | None = field(default=None, repr=False)


def _budget_counts(n: int, cfg: LoopConfig) -> tuple[int, list[int]]:
    total = max(1, min(n, round(cfg.budget * n)))
    first = max(1, min(total, round(cfg.seed_fraction * n)))
    rest = total - first
    rounds = max(cfg.rounds, 0)
    per = [rest // rounds + (1 if k < rest % rounds else 0) for k in range(rounds)] if rounds else []
    return first, [p for p in per if p > 0]


def _labelled(
    records: Mapping[str, Any],
    ids: Sequence[str],
    preds: Mapping[str, Detections],
    scores: Sequence[ImageScore],
    calibration: CalibrationConfig | None,
    lsm: LSMConfig,
) -> list[LabelledFindings]:
    """The labelled findings of images just bought: their expert boxes label what ``preds`` found there."""
    return [
        label_findings(
            records[i].crowd, preds[i], s, records[i].expert, config=calibration, class_aware=lsm.class_aware
        )
        for i, s in zip(ids, scores, strict=True)
    ]


def run_loop(
    bench: Workbench,
    cfg: LoopConfig,
    rng: np.random.Generator,
    *,
    lsm: LSMConfig,
    name: str,
    init: Path | None = None,
    calibration: CalibrationConfig | None = None,
) -> LoopResult:
    """Run stage 1 (active learning with the LSM or a baseline strategy) on the training split.

    Each image bought after the seed set was scored by a cleaning model that had not seen its expert boxes;
    those findings, labelled by the expert's boxes, are the calibration examples (``selection.calibration``).
    The calibration is refitted after every round on all examples so far; the last one is returned.
    Nothing reads the expert boxes of an image before it is bought.

    Args:
        init: weights the first cleaning model starts from (default: ``bench.spec.init``, from scratch).
        calibration: settings of the grade calibration; ``CalibrationConfig()`` when None.
    """
    records = bench.records
    train_ids = list(bench.train_ids)
    n = len(train_ids)
    noisy_total = sum(is_noisy(records[i]) for i in train_ids)
    first, per_round = _budget_counts(n, cfg)
    expert: list[str] = [train_ids[k] for k in rng.choice(n, size=first, replace=False)]
    reports: list[RoundReport] = []
    examples: list[LabelledFindings] = []
    fitted: Calibration | None = None

    def report(round_no: int, model: TrainedModel) -> None:
        chosen = set(expert)
        working = [records[i].expert if i in chosen else records[i].crowd for i in train_ids]
        f1 = label_f1([records[i].expert for i in train_ids], working).f1
        n_examples = sum(len(e) for e in examples)
        reports.append(
            RoundReport(
                round=round_no,
                strategy=cfg.strategy.value,
                expert_images=len(expert),
                expert_fraction=len(expert) / n,
                boxes_touched=sum(boxes_touched(records[i].crowd, records[i].expert) for i in expert),
                cleaning_ap50=model.ap50,
                noisy_found=sum(is_noisy(records[i]) for i in expert),
                noisy_total=noisy_total,
                working_f1=f1,
                expert_decisions=sum(expert_decisions(records[i]) for i in expert),
                labelled_findings=n_examples,
                calibrated_types=0 if fitted is None else len(fitted.fitted_types),
            )
        )
        log.info("%s round %d: %d expert images, cleaning AP50 %.3f", name, round_no, len(expert), model.ap50)

    def repeats() -> dict[str, int] | None:
        return _repeats(expert, cfg.cleaning_epoch_images)

    model = bench.train(
        f"{name}-r0",
        {i: records[i].expert for i in expert},
        epochs=bench.spec.cleaning_epochs,
        init=init,
        repeats=repeats(),
    )
    report(0, model)
    for round_no, batch in enumerate(per_round, start=1):
        remaining = [i for i in train_ids if i not in set(expert)]
        preds = bench.predict(model.weights, remaining)
        picked, picked_scores = _pick(
            bench,
            cfg.strategy,
            remaining,
            preds,
            batch,
            rng,
            lsm,
            fitted if cfg.weigh or cfg.purchase != "discrepancy" else None,
            purchase=cfg.purchase,
        )
        expert.extend(picked)
        # Bought now: their expert boxes label the findings that the model had on them.
        examples.extend(_labelled(records, picked, preds, picked_scores, calibration, lsm))
        fitted = fit_calibration(LabelledFindings.concat(examples), config=calibration)
        model = bench.train(
            f"{name}-r{round_no}",
            {i: records[i].expert for i in expert},
            epochs=bench.spec.warm_epochs,
            init=model.weights,
            repeats=repeats(),
        )
        report(round_no, model)

    remaining = [i for i in train_ids if i not in set(expert)]
    preds = bench.predict(model.weights, remaining)
    scores = dict(
        zip(
            remaining,
            score_images([records[i].crowd for i in remaining], [preds[i] for i in remaining], config=lsm),
            strict=True,
        )
    )
    all_examples = LabelledFindings.concat(examples)
    if cfg.calibrate_on == "random" and cfg.strategy != Strategy.RANDOM:
        sample = _crossfit_examples(
            bench,
            expert,
            expert[:first],
            name=name,
            init=init,
            lsm=lsm,
            calibration=calibration,
            epoch_images=cfg.cleaning_epoch_images,
        )
        fitted = fit_calibration(sample, config=calibration)
    elif fitted is None:
        fitted = fit_calibration(all_examples, config=calibration)
    return LoopResult(cfg, expert, model, reports, remaining, preds, scores, all_examples, fitted)


def _repeats(ids: Sequence[str], epoch_images: int) -> dict[str, int] | None:
    k = epoch_repeats(len(ids), epoch_images)
    return {i: k for i in ids} if k > 1 else None


def _crossfit_examples(
    bench: Workbench,
    bought: Sequence[str],
    seed_set: Sequence[str],
    *,
    name: str,
    init: Path | None,
    lsm: LSMConfig,
    calibration: CalibrationConfig | None,
    epoch_images: int,
) -> LabelledFindings:
    """Labelled findings of the random seed set, each half scored by a cleaning model trained like the first
    one (``cleaning_epochs`` from ``init``) on every bought image except that half."""
    records = bench.records
    halves = [list(seed_set[0::2]), list(seed_set[1::2])]
    parts: list[LabelledFindings] = []
    for k, half in enumerate(halves):
        if not half:
            continue
        held = set(half)
        train = [i for i in bought if i not in held]
        model = bench.train(
            f"{name}-crossfit{k}",
            {i: records[i].expert for i in train},
            epochs=bench.spec.cleaning_epochs,
            init=init,
            repeats=_repeats(train, epoch_images),
        )
        preds = bench.predict(model.weights, half)
        scores = score_images([records[i].crowd for i in half], [preds[i] for i in half], config=lsm)
        parts.extend(_labelled(records, half, preds, scores, calibration, lsm))
    return LabelledFindings.concat(parts)


def _pick(
    bench: Workbench,
    strategy: Strategy,
    ids: Sequence[str],
    preds: Mapping[str, Detections],
    budget: int,
    rng: np.random.Generator,
    lsm: LSMConfig,
    calibration: Calibration | None = None,
    *,
    purchase: str = DEFAULT_PRIORITY,
) -> tuple[list[str], list[ImageScore]]:
    """The images to buy next, and the LSM's findings on them (with the LSM's own discrepancy: the
    calibration examples read the findings only). ``calibration``: rank by the weighted discrepancy, or with
    ``purchase="missed"`` by the weighted severities plus the expected missed objects, ``"residual"`` by the
    expected errors the calibrated correction would leave (``"density"``: per expected decision;
    ``"oracle"``: by the true label errors, whatever the calibration)."""
    records = bench.records
    crowds = [records[i].crowd for i in ids]
    scores = score_images(crowds, [preds[i] for i in ids], config=lsm)
    if purchase == "oracle":
        plain = np.array([s.discrepancy for s in scores])
        # Ties (many images hold as many errors) go to the larger discrepancy: the added term is below 1.
        errors = np.array([true_errors(records[i]) for i in ids], dtype=float)
        discrepancy = errors + plain / (1.0 + plain.max(initial=0.0))
    elif calibration is None:
        discrepancy = np.array([s.discrepancy for s in scores])
    else:
        discrepancy = np.array(
            [
                image_priority(records[i].crowd, preds[i], s, calibration, rule=purchase, config=lsm)
                for i, s in zip(ids, scores, strict=True)
            ]
        )
    uncertainty = np.array([model_uncertainty(preds[i]) for i in ids])
    features = np.stack(
        [image_features(records[i].crowd, preds[i], records[i].width, records[i].height) for i in ids]
    )
    idx = select(
        strategy,
        budget=budget,
        discrepancy=discrepancy,
        uncertainty=uncertainty,
        features=features,
        rng=rng,
    )
    return [ids[k] for k in idx], [scores[k] for k in idx]


UNANSWERED = ("keep", "likelier")
"""What becomes of an instance sent to review that the budget leaves unanswered (``corrected_labels``)."""

REVIEW_ORDERS = ("likely", "uncertain", "random")
"""Which instances sent to review a limited budget answers first (``corrected_labels``)."""


def corrected_labels(
    bench: Workbench,
    loop: LoopResult,
    *,
    lsm: LSMConfig,
    consensus: Mapping[str, Detections] | None = None,
    calibration: Calibration | None = None,
    reviews: bool = True,
    review_budget: int | None = None,
    unanswered: str = "keep",
    review_order: str = "likely",
) -> tuple[dict[str, Detections], dict[str, int]]:
    """Stage 2: expert labels on the re-annotated images, noise-graded corrections on the rest.

    Args:
        consensus: per remaining image, a second model's predictions that must agree with each fix.
        calibration: when given, the findings are regraded by it first (``selection.calibration.regrade``).
        reviews: answer the instances sent to review from the expert's boxes (``bench.cost.review``) and
            charge them; when False they are left unchanged and not charged.
        review_budget: the most instance decisions the reviews may cost (None: no limit). The instances sent
            to review are answered most-likely-error first (calibrated error probability where a rule is
            fitted, else the LSM's severity) until the next would go over it; the rest are not charged.
        review_order: which instances a limited budget answers first: ``likely`` (the most likely errors:
            calibrated error probability, else severity), ``uncertain`` (probability closest to 0.5) or
            ``random`` (a fixed-seed shuffle).
        unanswered: what the instances the budget leaves unanswered become: ``keep`` (as the crowd drew
            them) or ``likelier`` (fixed when their calibrated error probability is at least 0.5, the likelier
            label; kept otherwise, and where no rule gives a probability).

    Returns:
        The labels of every training image, and the summed counts: ``correct_labels``' (kept, moved,
        dropped, split, added, flagged, vetoed) and, with reviews, ``reviewed``, ``review_replaced``,
        ``review_deleted``, ``review_split``, ``review_added``, ``review_decisions``, ``review_skipped``
        (sent to review, not answered for lack of budget, left as the crowd drew them) and ``likelier_fixed``
        (not answered, fixed as the likelier label instead; counted in the edits too).
    """
    if review_budget is not None and review_budget < 0:
        raise ValueError(f"review_budget: expected >= 0 decisions or None, got {review_budget}")
    if unanswered not in UNANSWERED:
        raise ValueError(f"unanswered: expected one of {list(UNANSWERED)}, got {unanswered!r}")
    if review_order not in REVIEW_ORDERS:
        raise ValueError(f"review_order: expected one of {list(REVIEW_ORDERS)}, got {review_order!r}")
    shuffle = np.random.default_rng(0)
    records = bench.records
    labels = {i: records[i].expert for i in loop.expert_ids}
    totals: dict[str, int] = {}

    def add(key: str, value: int) -> None:
        totals[key] = totals.get(key, 0) + int(value)

    graded: dict[str, ImageScore] = {}
    fixes: dict[str, Correction] = {}
    priority: dict[str, np.ndarray] = {}
    probs: dict[str, np.ndarray] = {}

    def correct(i: str, score: ImageScore) -> Correction:
        return correct_labels(
            records[i].crowd,
            loop.preds[i],
            score,
            consensus=None if consensus is None else consensus[i],
            config=lsm,
        )

    for i in loop.remaining_ids:
        crowd, pred, own = records[i].crowd, loop.preds[i], loop.scores[i]
        score = own if calibration is None else regrade(crowd, pred, own, calibration)
        graded[i] = score
        fixes[i] = fix = correct(i, score)
        labels[i] = fix.labels
        if reviews and len(fix.flagged):
            prob = (
                error_probability(crowd, pred, own, calibration)
                if calibration is not None
                else np.full(len(score.instances), np.nan)
            )
            probs[i] = prob
            rows = fix.flagged_rows
            severity = fix.flagged.score if fix.flagged.score is not None else np.zeros(len(rows))
            chance = np.where(np.isnan(prob[rows]), severity, prob[rows])
            if review_order == "uncertain":
                priority[i] = -np.abs(chance - 0.5)
            elif review_order == "random":
                priority[i] = shuffle.random(len(rows))
            else:
                priority[i] = chance
    if not reviews:
        for fix in fixes.values():
            for key, value in fix.counts.items():
                add(key, value)
        return labels, totals

    def settle(answered: Mapping[str, np.ndarray]) -> dict[str, tuple[Correction, np.ndarray, int]]:
        """Per image: its correction once the unanswered instances are settled, the answered flags of that
        correction's flagged instances, and how many instances were fixed as the likelier label."""
        out = {}
        for i, fix in fixes.items():
            chosen = answered.get(i, np.zeros(len(fix.flagged), bool))
            if unanswered == "likelier" and i in probs and (~chosen).any():
                rows = fix.flagged_rows[~chosen]
                p = probs[i][rows]
                likely = rows[~np.isnan(p) & (p >= 0.5)]
                if likely.size:
                    settled = correct(i, fix_findings(graded[i], likely))
                    kept = np.isin(settled.flagged_rows, fix.flagged_rows[chosen])
                    out[i] = (settled, kept, int(likely.size))
                    continue
            out[i] = (fix, chosen, 0)
        return out

    # Settling can change what an answered review costs (a split box's parts, say): shrink the budget until
    # the answered reviews fit it on the settled labels.
    limit = review_budget
    while True:
        answered = _reviews_within(fixes, priority, records, limit)
        settled = settle(answered)
        outcomes = {
            i: review(fix.labels, fix.flagged.subset(chosen), records[i].expert)
            for i, (fix, chosen, _) in settled.items()
            if chosen.any()
        }
        cost = sum(outcome.decisions for _, outcome in outcomes.values())
        if review_budget is None or limit is None or cost <= review_budget or limit == 0:
            break
        limit = max(0, limit - (cost - review_budget))
    for key in ("reviewed", "review_decisions", "review_skipped", "likelier_fixed"):
        add(key, 0)
    for i, (fix, chosen, likely) in settled.items():
        for key, value in fix.counts.items():
            add(key, value)
        add("likelier_fixed", likely)
        labels[i] = fix.labels
        if i not in outcomes:
            add("review_skipped", len(fix.flagged))
            continue
        labels[i], outcome = outcomes[i]
        for key in ("replaced", "deleted", "split", "added"):
            add(f"review_{key}", getattr(outcome, key))
        add("reviewed", outcome.reviewed)
        add("review_decisions", outcome.decisions)
        add("review_skipped", int((~chosen).sum()))
    return labels, totals


def _reviews_within(
    fixes: Mapping[str, Correction],
    priority: Mapping[str, np.ndarray],
    records: Mapping,
    budget: int | None,
) -> dict[str, np.ndarray]:
    """Per image, which flagged instances are answered: all of them, or the most likely errors that fit.

    A reviewed box-in-box box may cost more than one decision (its extra parts are drawn), so the choice is
    checked against the oracle's real cost and shortened until it fits.
    """
    if budget is None:
        return {i: np.ones(len(p), bool) for i, p in priority.items()}
    order = sorted(
        ((float(p[j]), i, j) for i, p in priority.items() for j in range(len(p))),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    k = min(len(order), budget)
    while True:
        chosen = {i: np.zeros(len(p), bool) for i, p in priority.items()}
        for _, i, j in order[:k]:
            chosen[i][j] = True
        cost = 0
        for i, mask in chosen.items():
            if mask.any():
                cost += review(fixes[i].labels, fixes[i].flagged.subset(mask), records[i].expert)[1].decisions
        if cost <= budget or k == 0:
            return chosen
        k = max(0, k - (cost - budget))


def uncorrected_labels(bench: Workbench, loop: LoopResult) -> dict[str, Detections]:
    """Expert labels on the re-annotated images, the crowd's on the rest."""
    records = bench.records
    labels = {i: records[i].expert for i in loop.expert_ids}
    labels.update({i: records[i].crowd for i in loop.remaining_ids})
    return labels
