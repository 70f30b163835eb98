"""The active label cleaning loop: seed set, cleaning model, score, select, expert, ..., correct."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.workbench import TrainedModel, Workbench
from metrics.f1 import label_f1
from selection import (
    ImageScore,
    LSMConfig,
    Strategy,
    correct_labels,
    image_features,
    match_boxes,
    model_uncertainty,
    score_images,
    select,
)
from selection.detections import Detections

log = logging.getLogger(__name__)

# Crowd noise types (as the simulator records them) that are label errors; "bib_inner" boxes are correct.
ERROR_TYPES = ("background", "localization", "box_in_box")
MOVE_IOU = 0.8  # a matched crowd box below this IoU with the expert box counts as one the expert moved


def is_noisy(record) -> bool:
    """True when the image has at least one crowd label error (a wrong box or a missed deposit)."""
    return bool(len(record.missed)) or bool(np.isin(record.crowd_noise, ERROR_TYPES).any())


def boxes_touched(crowd: Detections, expert: Detections) -> int:
    """Boxes an expert adds, deletes or moves to turn ``crowd`` into ``expert`` on one image."""
    m = match_boxes(crowd, expert, iou_threshold=0.5)
    moved = int(np.sum(m.iou < MOVE_IOU))
    return int(len(m.unmatched_crowd) + len(m.unmatched_pred) + moved)


@dataclass(frozen=True)
class LoopConfig:
    """One run of the loop.

    Attributes:
        strategy: how the images for the experts are picked after the random seed set.
        budget: share of the training images the experts re-annotate in total (seed set included).
        seed_fraction: share of the training images in the random seed set.
        rounds: selection rounds after the seed set.
    """

    strategy: Strategy
    budget: float = 0.25
    seed_fraction: float = 0.1
    rounds: int = 3


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


def _budget_counts(n: int, cfg: LoopConfig) -> tuple[int, list[int]]:
    total = max(1, min(n, round(cfg.budget * n)))
    first = max(1, min(total, round(cfg.seed_fraction * n)))
    rest = total - first
    rounds = max(cfg.rounds, 0)
    per = [rest // rounds + (1 if k < rest % rounds else 0) for k in range(rounds)] if rounds else []
    return first, [p for p in per if p > 0]


def run_loop(
    bench: Workbench,
    cfg: LoopConfig,
    rng: np.random.Generator,
    *,
    lsm: LSMConfig,
    name: str,
    init: Path | None = None,
) -> LoopResult:
    """Run stage 1 (active learning with the LSM or a baseline strategy) on the training split.

    Args:
        init: weights the first cleaning model starts from (default: ``bench.spec.init``, from scratch).
    """
    records = bench.records
    train_ids = list(bench.train_ids)
    n = len(train_ids)
    noisy_total = sum(is_noisy(records[i]) for i in train_ids)
    first, per_round = _budget_counts(n, cfg)
    expert: list[str] = [train_ids[k] for k in rng.choice(n, size=first, replace=False)]
    reports: list[RoundReport] = []

    def report(round_no: int, model: TrainedModel) -> None:
        chosen = set(expert)
        working = [records[i].expert if i in chosen else records[i].crowd for i in train_ids]
        f1 = label_f1([records[i].expert for i in train_ids], working).f1
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
            )
        )
        log.info("%s round %d: %d expert images, cleaning AP50 %.3f", name, round_no, len(expert), model.ap50)

    model = bench.train(
        f"{name}-r0", {i: records[i].expert for i in expert}, epochs=bench.spec.cleaning_epochs, init=init
    )
    report(0, model)
    for round_no, batch in enumerate(per_round, start=1):
        remaining = [i for i in train_ids if i not in set(expert)]
        preds = bench.predict(model.weights, remaining)
        picked = _pick(bench, cfg.strategy, remaining, preds, batch, rng, lsm)
        expert.extend(picked)
        model = bench.train(
            f"{name}-r{round_no}",
            {i: records[i].expert for i in expert},
            epochs=bench.spec.warm_epochs,
            init=model.weights,
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
    return LoopResult(cfg, expert, model, reports, remaining, preds, scores)


def _pick(
    bench: Workbench,
    strategy: Strategy,
    ids: Sequence[str],
    preds: Mapping[str, Detections],
    budget: int,
    rng: np.random.Generator,
    lsm: LSMConfig,
) -> list[str]:
    records = bench.records
    crowds = [records[i].crowd for i in ids]
    scores = score_images(crowds, [preds[i] for i in ids], config=lsm)
    discrepancy = np.array([s.discrepancy for s in scores])
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
    return [ids[k] for k in idx]


def corrected_labels(
    bench: Workbench,
    loop: LoopResult,
    *,
    lsm: LSMConfig,
    consensus: Mapping[str, Detections] | None = None,
) -> tuple[dict[str, Detections], dict[str, int]]:
    """Stage 2: expert labels on the re-annotated images, noise-graded corrections on the rest."""
    records = bench.records
    labels = {i: records[i].expert for i in loop.expert_ids}
    totals: dict[str, int] = {}
    for i in loop.remaining_ids:
        fix = correct_labels(
            records[i].crowd,
            loop.preds[i],
            loop.scores[i],
            consensus=None if consensus is None else consensus[i],
            config=lsm,
        )
        labels[i] = fix.labels
        for key, value in fix.counts.items():
            totals[key] = totals.get(key, 0) + int(value)
    return labels, totals


def uncorrected_labels(bench: Workbench, loop: LoopResult) -> dict[str, Detections]:
    """Expert labels on the re-annotated images, the crowd's on the rest."""
    records = bench.records
    labels = {i: records[i].expert for i in loop.expert_ids}
    labels.update({i: records[i].crowd for i in loop.remaining_ids})
    return labels
