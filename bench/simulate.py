"""Every arm of the paper's experiment, on simulated data, side by side.

    python -m bench.simulate --preset quick --seeds 3 --budget 0.25 --out DIR

Writes ``DIR/results.json``, ``DIR/results.md`` and two PNG plots (``ap50_vs_budget.png``,
``noisy_found.png``). Re-running with the same ``--out`` reuses finished trainings.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.loop import (
    LoopConfig,
    LoopResult,
    boxes_touched,
    corrected_labels,
    is_noisy,
    run_loop,
    uncorrected_labels,
)
from bench.noise_quality import auroc, average_precision, cleanlab_scores, instance_quality
from bench.workbench import TRAIN_SPECS, TrainSpec, Workbench
from metrics.f1 import label_f1
from selection import LSMConfig, Strategy
from selection.detections import Detections

log = logging.getLogger(__name__)

# name -> (label, how the experts' budget is spent)
ARMS: dict[str, str] = {
    "noisy": "Noisy (crowd labels)",
    "full_expert": "Full expert labels",
    "expert_budget": "Expert-only, budget images",
    "random_corrected": "Random selection + correction",
    "lsm_uncorrected": "LSM selection, no correction",
    "lsm_corrected": "LSM + correction (full method)",
    "lsm_consensus": "LSM + correction + consensus",
}


def _label_set_quality(bench: Workbench, labels: dict[str, Detections]) -> float:
    """Label F1 of a training label set against the expert labels of the same images."""
    ids = sorted(labels)
    return label_f1([bench.records[i].expert for i in ids], [labels[i] for i in ids]).f1


def run_seed(
    preset: str,
    seed: int,
    *,
    budget: float,
    out: Path,
    spec: TrainSpec,
    strategies: list[Strategy],
    lsm: LSMConfig,
    rounds: int,
    seed_fraction: float,
) -> dict[str, Any]:
    """All arms on one simulated dataset; returns a JSON-ready record."""
    import synth

    t0 = time.perf_counter()
    data_dir = out / f"seed{seed}" / "data"
    if not (data_dir / "manifest.json").exists():
        synth.generate(preset, seed).write(data_dir)
    dataset = synth.SynthDataset.load(data_dir)
    bench = Workbench(dataset.images, out / f"seed{seed}" / "runs", spec, seed=seed)
    records = bench.records
    train_ids = bench.train_ids
    n_train = len(train_ids)
    all_touched = sum(boxes_touched(records[i].crowd, records[i].expert) for i in train_ids)
    steps = tqdm(total=3 + len(strategies) + 4, desc=f"seed {seed}", unit="step")

    arms: dict[str, dict[str, Any]] = {}

    def arm(name: str, labels: dict[str, Detections], expert_ids: list[str], extra: dict | None = None):
        model = bench.train(name, labels)
        arms[name] = {
            "ap50": model.ap50,
            "ap50_95": model.ap50_95,
            "train_seconds": model.seconds,
            "expert_images": len(expert_ids),
            "expert_fraction": len(expert_ids) / n_train,
            "boxes_touched": sum(boxes_touched(records[i].crowd, records[i].expert) for i in expert_ids),
            "label_f1": _label_set_quality(bench, labels),
            **(extra or {}),
        }
        steps.update()
        return model

    noisy = arm("noisy", {i: records[i].crowd for i in train_ids}, [])
    arm("full_expert", {i: records[i].expert for i in train_ids}, list(train_ids))

    loops: dict[Strategy, LoopResult] = {}
    for strategy in strategies:
        cfg = LoopConfig(strategy=strategy, budget=budget, seed_fraction=seed_fraction, rounds=rounds)
        # The same generator seed for every strategy: they all start from the same random seed set.
        loops[strategy] = run_loop(
            bench,
            cfg,
            np.random.default_rng(seed),
            lsm=lsm,
            name=f"loop-{strategy.value}",
            init=noisy.weights if spec.cleaning_init == "noisy" else None,
        )
        steps.update()
    rand = loops[Strategy.RANDOM]
    lsm_loop = loops[Strategy.DISCREPANCY]

    arm("expert_budget", {i: records[i].expert for i in rand.expert_ids}, rand.expert_ids)
    labels, counts = corrected_labels(bench, rand, lsm=lsm)
    arm("random_corrected", labels, rand.expert_ids, {"corrections": counts})
    arm("lsm_uncorrected", uncorrected_labels(bench, lsm_loop), lsm_loop.expert_ids)
    labels, counts = corrected_labels(bench, lsm_loop, lsm=lsm)
    arm("lsm_corrected", labels, lsm_loop.expert_ids, {"corrections": counts})
    # The consensus model is trained independently of the cleaning model: on the crowd labels.
    consensus = bench.predict(noisy.weights, lsm_loop.remaining_ids)
    labels, counts = corrected_labels(bench, lsm_loop, lsm=lsm, consensus=consensus)
    arm("lsm_consensus", labels, lsm_loop.expert_ids, {"corrections": counts})
    steps.close()

    # Noise detection quality, on the images the LSM did not send to the experts, same predictions.
    ids = lsm_loop.remaining_ids
    positive = np.array([is_noisy(records[i]) for i in ids])
    ours = np.array([lsm_loop.scores[i].discrepancy for i in ids])
    crowds = [records[i].crowd for i in ids]
    preds = [lsm_loop.preds[i] for i in ids]
    peer = cleanlab_scores(crowds, preds)
    chance = np.random.default_rng(seed + 1).random(len(ids))
    detection: dict[str, Any] = {
        name: {"auroc": auroc(s, positive), "ap": average_precision(s, positive)}
        for name, s in (("lsm", ours), ("cleanlab", peer), ("random", chance))
    }
    detection["noisy_share"] = float(positive.mean()) if len(positive) else float("nan")
    types = instance_quality(
        [lsm_loop.scores[i] for i in ids],
        [records[i].crowd_noise for i in ids],
        [records[i].expert.subset(records[i].missed) for i in ids],
        preds,
    )
    return {
        "seed": seed,
        "n_train": n_train,
        "all_boxes_touched": all_touched,
        "arms": arms,
        "rounds": {s.value: [asdict(r) for r in loop.rounds] for s, loop in loops.items()},
        "detection": detection,
        "instance_types": [asdict(t) for t in types],
        "seconds": time.perf_counter() - t0,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.array([v for v in values if not math.isnan(v)], np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and standard deviations over seeds of every figure the table shows."""
    full = [r["arms"]["full_expert"]["ap50"] for r in runs]
    noisy = [r["arms"]["noisy"]["ap50"] for r in runs]
    arms = {}
    for name in ARMS:
        ap = [r["arms"][name]["ap50"] for r in runs]
        arms[name] = {
            "ap50": _mean_std(ap),
            "ap50_95": _mean_std([r["arms"][name]["ap50_95"] for r in runs]),
            "pct_of_full": _mean_std(
                [a / f * 100 if f > 0 else float("nan") for a, f in zip(ap, full, strict=True)]
            ),
            "delta_vs_noisy": _mean_std([(a - n) * 100 for a, n in zip(ap, noisy, strict=True)]),
            "expert_fraction": _mean_std([r["arms"][name]["expert_fraction"] for r in runs]),
            "boxes_touched_fraction": _mean_std(
                [r["arms"][name]["boxes_touched"] / max(r["all_boxes_touched"], 1) for r in runs]
            ),
            "label_f1": _mean_std([r["arms"][name]["label_f1"] for r in runs]),
        }
    detection = {
        k: {m: _mean_std([r["detection"][k][m] for r in runs]) for m in ("auroc", "ap")}
        for k in ("lsm", "cleanlab", "random")
    }
    types: dict[str, dict[str, tuple[float, float]]] = {}
    for t in runs[0]["instance_types"]:
        name = t["noise_type"]
        rows = [next(x for x in r["instance_types"] if x["noise_type"] == name) for r in runs]
        types[name] = {
            "precision": _mean_std([x["precision"] for x in rows]),
            "recall": _mean_std([x["recall"] for x in rows]),
            "support": _mean_std([float(x["support"]) for x in rows]),
        }
    return {"arms": arms, "detection": detection, "instance_types": types}


def _fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 1) -> str:
    m, s = ms
    if math.isnan(m):
        return "n/a"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def write_markdown(path: Path, summary: dict[str, Any], meta: dict[str, Any]) -> None:
    lines = [
        f"# Active label cleaning, simulated ({meta['preset']}, seeds {meta['seeds']}, "
        f"budget {meta['budget']:.0%})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Wall time: {meta['seconds'] / 60:.1f} min on {meta['device']}",
        "",
        "| arm | AP50 (%) | % of full expert | Δ vs noisy (AP50 pts) | expert cost (images) | "
        "expert cost (boxes touched) | label F1 of training labels |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in ARMS.items():
        a = summary["arms"][name]
        lines.append(
            f"| {label} | {_fmt(a['ap50'], 100)} | {_fmt(a['pct_of_full'])} | {_fmt(a['delta_vs_noisy'])} "
            f"| {_fmt(a['expert_fraction'], 100)} % | {_fmt(a['boxes_touched_fraction'], 100)} % "
            f"| {_fmt(a['label_f1'], 1, 3)} |"
        )
    lines += [
        "",
        "Noisy-image detection on the images not sent to experts (positive = at least one label error):",
        "",
        "| scorer | AUROC | AP |",
        "|---|---|---|",
    ]
    names = {
        "lsm": "LSM discrepancy",
        "cleanlab": "cleanlab ObjectLab (same predictions)",
        "random": "random",
    }
    for k, label in names.items():
        d = summary["detection"][k]
        lines.append(f"| {label} | {_fmt(d['auroc'], 1, 3)} | {_fmt(d['ap'], 1, 3)} |")
    lines += ["", "LSM instance findings against the simulator's truth:", ""]
    lines += ["| noise type | precision | recall | instances per seed |", "|---|---|---|---|"]
    for name, t in summary["instance_types"].items():
        lines.append(
            f"| {name} | {_fmt(t['precision'], 1, 3)} | {_fmt(t['recall'], 1, 3)} "
            f"| {_fmt(t['support'], 1, 0)} |"
        )
    path.write_text("\n".join(lines) + "\n")


def write_plots(out: Path, runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = list(runs[0]["rounds"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in strategies:
        xs = np.array([[r["expert_fraction"] for r in run["rounds"][s]] for run in runs]).mean(0)
        ys = np.array([[r["cleaning_ap50"] for r in run["rounds"][s]] for run in runs])
        ax.errorbar(
            xs * 100,
            ys.mean(0) * 100,
            yerr=ys.std(0) * 100,
            marker="o",
            capsize=3,
            label=f"cleaning model, {s}",
        )
    arms = summary["arms"]
    for name, marker in (("lsm_corrected", "*"), ("random_corrected", "s"), ("expert_budget", "^")):
        ax.plot(
            arms[name]["expert_fraction"][0] * 100,
            arms[name]["ap50"][0] * 100,
            marker,
            ms=11,
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
    ax.legend(fontsize=7, loc="lower right")
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
    ax.plot(grid * 100, np.minimum(1, grid / noisy_share) * 100, "k--", label="oracle")
    ax.set_xlabel("expert budget spent (% of training images)")
    ax.set_ylabel("noisy images re-annotated (% of all noisy images)")
    ax.set_title("Noisy images found vs budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "noisy_found.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=sorted(TRAIN_SPECS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..K-1)")
    parser.add_argument("--budget", type=float, default=0.25, help="expert budget, share of train images")
    parser.add_argument("--seed-fraction", type=float, default=0.1, help="random seed set, share")
    parser.add_argument("--rounds", type=int, default=3, help="selection rounds after the seed set")
    parser.add_argument(
        "--strategies",
        default="discrepancy,random,uncertainty,hybrid",
        help="comma-separated; discrepancy and random are always run",
    )
    parser.add_argument("--epochs", type=int, help="override the final detectors' epochs")
    parser.add_argument(
        "--cleaning-init",
        choices=("noisy", "scratch"),
        help="first cleaning model: fine-tune the crowd-trained detector, or train from scratch",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not 0 < args.budget <= 1 or not 0 < args.seed_fraction <= args.budget:
        parser.error("need 0 < --seed-fraction <= --budget <= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        wanted = [Strategy(s.strip()) for s in args.strategies.split(",") if s.strip()]
    except ValueError as exc:
        parser.error(f"--strategies: {exc}; choose from {[s.value for s in Strategy]}")
    strategies = [Strategy.DISCREPANCY, Strategy.RANDOM] + [
        s for s in wanted if s not in (Strategy.DISCREPANCY, Strategy.RANDOM)
    ]
    spec = replace(TRAIN_SPECS[args.preset], device=args.device)
    if args.epochs:
        spec = replace(spec, epochs=args.epochs, cleaning_epochs=args.epochs)
    if args.cleaning_init:
        spec = replace(spec, cleaning_init=args.cleaning_init)
    lsm = LSMConfig()
    args.out.mkdir(parents=True, exist_ok=True)
    from model.device import resolve_device

    t0 = time.perf_counter()
    runs = []
    for seed in range(args.seeds):
        runs.append(
            run_seed(
                args.preset,
                seed,
                budget=args.budget,
                out=args.out,
                spec=spec,
                strategies=strategies,
                lsm=lsm,
                rounds=args.rounds,
                seed_fraction=args.seed_fraction,
            )
        )
        (args.out / "results.json").write_text(json.dumps({"runs": runs}, indent=1, default=str))
    summary = summarize(runs)
    meta = {
        "preset": args.preset,
        "seeds": args.seeds,
        "budget": args.budget,
        "rounds": args.rounds,
        "seed_fraction": args.seed_fraction,
        "train_spec": asdict(spec),
        "lsm": asdict(lsm),
        "device": resolve_device(args.device),
        "seconds": time.perf_counter() - t0,
        "command": "python -m bench.simulate "
        + f"--preset {args.preset} --seeds {args.seeds} --budget {args.budget} --out {args.out}",
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1, default=str)
    )
    write_markdown(args.out / "results.md", summary, meta)
    write_plots(args.out, runs, summary)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
