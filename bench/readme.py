"""Writes a ``bench.simulate`` run's results into the README, between its markers, so they are never typed.

    python -m bench.readme docs/results/quick/results.json README.md
    python -m bench.readme --block heldout docs/results/heldout/results.json README.md
    python -m bench.readme --block overview docs/results/quick/results.json OTHER/results.json... README.md

Five blocks, each between its own pair of markers:

- ``results`` (the reported run): the headline, every arm's figures, the paired per-seed differences and the
  verdict against the method's targets (``bench.acceptance``);
- ``heldout`` (the same protocol on seeds nothing was tuned on, ``make simulate-heldout``), ``session``
  (one training per arm on the reported seeds, the run that fits a working session, ``make
  simulate-session``), ``heldout-session`` (that protocol on the held-out seeds, ``make
  simulate-heldout-session``) and ``noise-session`` (that protocol on other seeds and another noise mix,
  ``make simulate-noise-session``): the full method and its three equal-cost comparisons seed by seed, each
  difference with the standard error its trainings give, and the verdict.

A sixth, ``overview``, is read from several runs' ``results.json`` (the reported run first): one row per run
with the figures the targets read (their means, and on how many seeds each comparison holds), then the same
figures pooled over every seed nothing was tuned on (the seeds of the other runs with the reported run's
settings, each seed once: see ``POOLED_ANYWAY``), so a reader sees at a glance which results hold beyond the
reported seeds (``make readme-overview`` lists every published run; each publishing target runs it).

Each other block is read from its run's ``results.json``. Everything outside the chosen block's markers is
left as it is; a README without them is left untouched and the command exits 2.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import acceptance
from bench.acceptance import load_results
from bench.simulate import readme_block

BEGIN = "<!-- results:begin (written by python -m bench.readme; do not edit) -->"
END = "<!-- results:end -->"
BLOCKS = ("results", "heldout", "session", "heldout-session", "noise-session", "overview")
# What a seed-by-seed block (every block but the reported run's) shows, in its first sentence.
_SEED_BLOCKS = {
    "heldout": "the reported protocol on seeds nothing was tuned on",
    "session": "the session-sized protocol (one training per arm) on the reported seeds",
    "heldout-session": "the session-sized protocol (one training per arm) on seeds nothing was tuned on",
    "noise-session": (
        "the session-sized protocol (one training per arm) on seeds and a noise mix nothing was tuned on"
    ),
}
# The held-out table's comparisons: (arm, column heading), each as the full method minus the arm.
_AGAINST = (
    ("finetune_lsm", "− `finetune_lsm`"),
    ("staged_lsm", "− `staged_lsm`"),
    ("finetune_random", "− `finetune_random`"),
    ("staged_random", "− `staged_random`"),
    ("random_corrected", "− random + correction"),
)
_PEERS = (("cleanlab", "AUROC − ObjectLab"), ("fiftyone", "AUROC − FiftyOne"))
# What the overview's pooled row lets differ between the runs it pools: every other setting results.json's
# ``meta`` records (preset, data, noise mix, budget, rounds, seed set, every ``settings`` field, the training
# spec and image size, the LSM's configuration) must equal the reported run's. These change how many
# trainings an arm's AP is the mean of, which arms are trained besides the compared ones, whether a second
# peer is scored, and how the trainings were scheduled, not what the method or an arm does.
POOLED_ANYWAY = {
    "settings": ("replicates", "compared_replicates", "verdict_only", "fiftyone"),
    "meta": ("threads", "jobs", "device"),
}
# LSM fields that only act between predictions or boxes of different classes: on the simulator's data (one
# class, ``meta["data"]`` None) they cannot change a figure, so a run recorded before one existed, or with
# another value, pools with the reported run there. On a user's data (``--data``) they must be equal.
ONE_CLASS_MOOT = ("class_aware", "duplicate_iou")
# Fields of ``meta`` that describe the invocation, not its settings.
_NOT_SETTINGS: tuple[str, ...] = ("dataset", "seeds", "n_seeds", "seconds", "seconds_all_invocations")
_NOT_SETTINGS += ("invocations", "train_threads", "command")


def markers(block: str = "results") -> tuple[str, str]:
    """The begin and end lines of a block (one of ``BLOCKS``)."""
    if block not in BLOCKS:
        raise ValueError(f"block: expected one of {BLOCKS}, got {block!r}")
    if block == "results":
        return BEGIN, END
    return f"<!-- {block}:begin (written by python -m bench.readme --block {block}; do not edit) -->", (
        f"<!-- {block}:end -->"
    )


def write_block(readme: Path, text: str, *, block: str = "results") -> None:
    """Replace the text between the README's markers of ``block`` by ``text``.

    Raises:
        ValueError: the README lacks the markers, or has them more than once or out of order.
    """
    begin, end = markers(block)
    doc = readme.read_text()
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise ValueError(f"{readme}: expected one line {begin!r}, later one line {end!r}, to write between")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    readme.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", doc))


def written_block(readme_text: str, block: str = "results") -> str | None:
    """What a README holds between ``block``'s markers (None where it has no such block)."""
    begin, end = markers(block)
    if begin not in readme_text or end not in readme_text:
        return None
    return readme_text[readme_text.index(begin) + len(begin) + 1 : readme_text.index(end) - 1]


def _replicates(arm: Mapping[str, Any]) -> list[float]:
    values = arm.get("ap50_replicates") or [arm["ap50"]]
    return [float(v) * 100 for v in values]


def _difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, float]:
    """AP50 of ``a`` minus ``b`` (points; each the mean of its trainings), and the difference's standard
    error from the spread of each arm's trainings (nan where an arm was trained once)."""
    xs, ys = _replicates(a), _replicates(b)
    diff = sum(xs) / len(xs) - sum(ys) / len(ys)
    if len(xs) < 2 or len(ys) < 2:
        return diff, math.nan
    return diff, math.sqrt(statistics.variance(xs) / len(xs) + statistics.variance(ys) / len(ys))


def _signed(value: float, se: float = math.nan, digits: int = 1) -> str:
    text = f"{value:+.{digits}f}".replace("-", "−")
    return text if math.isnan(se) else f"{text} ± {se:.{digits}f}"


def _percent_cell(runs: Sequence[Mapping[str, Any]], pct: Sequence[float]) -> str:
    """The full method's mean share of the reference target 1 reads (``acceptance.reference_arm``); where
    that is the one trained as long as the full method, the share of the 30-epoch reference after it."""
    text = f"{statistics.fmean(pct):.1f} %"
    if acceptance.reference_arm(runs) != acceptance.LONG_REFERENCE:
        return text
    ratio = statistics.fmean(acceptance.percent_of_reference(runs, reference="full_expert") or [math.nan])
    return f"{text} of the reference trained as long ({ratio:.1f} % of the 30-epoch one)"


def seed_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The full method and its equal-cost comparisons, one row per seed and a row of means.

    Args:
        runs: ``results.json``'s ``runs`` (one record per seed, each with ``arms`` and ``detection``).

    Returns:
        Markdown lines: AP50 of the full method, its share of the full-expert detector's, its cost (the larger
        share), its AP50 minus each comparison's (± the standard error of the trainings), and its noisy-image
        AUROC minus each peer's on the same predictions.
    """
    head = ["seed", "full method AP50", "% of full expert", "cost"]
    head += [h for _, h in _AGAINST] + [h for _, h in _PEERS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sums: dict[str, list[float]] = {}
    for run in runs:
        arms, det = acceptance.arms_of(run), run.get("detection", {})
        full = arms["full"]
        (pct,) = acceptance.percent_of_reference([run]) or [math.nan]
        cells = [str(run["seed"]), f"{float(full['ap50']) * 100:.1f}", _percent_cell([run], [pct])]
        cells.append(f"{float(full['cost_fraction']) * 100:.1f} %")
        sums.setdefault("ap", []).append(float(full["ap50"]) * 100)
        sums.setdefault("pct", []).append(pct)
        sums.setdefault("cost", []).append(float(full["cost_fraction"]) * 100)
        for arm, _ in _AGAINST:
            if arm in arms:
                diff, se = _difference(full, arms[arm])
                cells.append(_signed(diff, se))
                sums.setdefault(arm, []).append(diff)
            else:
                cells.append("n/a")
        for peer, _ in _PEERS:
            if peer in det and "lsm" in det:
                diff = float(det["lsm"]["auroc"]) - float(det[peer]["auroc"])
                cells.append(_signed(diff, digits=3))
                sums.setdefault(peer, []).append(diff)
            else:
                cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")

    def mean(key: str) -> float:
        values = sums.get(key, [])
        return sum(values) / len(values) if values else math.nan

    n = len(runs)
    cells = ["mean", f"{mean('ap'):.1f}", _percent_cell(runs, sums["pct"]), f"{mean('cost'):.1f} %"]
    for arm, _ in _AGAINST:
        values = sums.get(arm, [])
        cells.append(
            f"{_signed(mean(arm))} (better on {sum(v > 0 for v in values)} of {n})" if values else "n/a"
        )
    for peer, _ in _PEERS:
        values = sums.get(peer, [])
        cells.append(_signed(mean(peer), digits=3) if values else "n/a")
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def seed_block(results: Mapping[str, Any], source: str, block: str = "heldout") -> str:
    """A seed-by-seed README block: the run, its per-seed table and the verdict against the targets.

    Args:
        results: a finished run's ``results.json`` (``meta``, ``runs``).
        source: the path the results were read from, named in the block.
        block: one of ``BLOCKS`` but ``results`` (named in the block's first line).
    """
    if block not in _SEED_BLOCKS:
        raise ValueError(f"block: expected one of {tuple(_SEED_BLOCKS)}, got {block!r}")
    meta, runs = results["meta"], results["runs"]
    noise = meta.get("noise") or []
    mix = f"noise overrides {', '.join(f'`{n}`' for n in noise)}" if noise else "the default noise mix"
    hours = float(meta.get("seconds_all_invocations", meta.get("seconds", 0.0))) / 3600
    invocations = int(meta.get("invocations", 1))
    return "\n".join(
        [
            f"Generated by `python -m bench.readme --block {block} {source}` from {_SEED_BLOCKS[block]}, "
            f"the run `{meta.get('command', '?')}` (seeds {meta.get('seeds')}, {mix}; {hours:.1f} h over "
            f"{invocations} invocation{'s' if invocations != 1 else ''}). Differences in AP50 points, "
            "± the standard error of each arm's trainings where it was trained more than once; AUROC on the "
            "images not sent to experts, same predictions:",
            "",
            *seed_table(runs),
            "",
            "Against the method's targets (`bench.acceptance`; where a target reads two ways, the stricter; "
            f'"4 of 5 seeds" is {acceptance.needed(len(runs))} of {len(runs)} here):',
            "",
            acceptance.to_markdown(acceptance.check(runs, meta)),
        ]
    )


def _trainings(meta: Mapping[str, Any]) -> int:
    """How many times the run trained each compared arm."""
    settings = meta.get("settings", {}) or {}
    return int(settings.get("compared_replicates") or settings.get("replicates") or 1)


def _noise(meta: Mapping[str, Any]) -> str:
    noise = meta.get("noise") or []
    return ", ".join(f"`{n}`" for n in noise) if noise else "default"


def _row_figures(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The overview's figure cells for a set of seeds: % of full expert, cost, the three comparisons (mean,
    and on how many seeds each holds: by 2 points for the fine-tunes, at all for random + correction) and
    the AUROC margin over ObjectLab (mean, and on how many seeds it reaches 0.05), and the noise type whose
    calibrated grades are least precise at recall 0.5 (mean over the seeds)."""
    n = len(runs)
    pct = acceptance.percent_of_reference(runs) or [math.nan]
    cost = [100 * float(r["arms"]["full"]["cost_fraction"]) for r in runs]
    cells = [_percent_cell(runs, pct), f"{max(cost):.1f} %"]
    for arm, _ in _AGAINST:
        diffs = acceptance.full_minus(runs, arm)
        if diffs is None:
            cells.append("n/a")
            continue
        if arm == "random_corrected":
            held = f"better on {sum(d > 0 for d in diffs)} of {n}"
        else:
            held = f"≥ {acceptance.MARGIN:g} on {sum(d >= acceptance.MARGIN for d in diffs)} of {n}"
        cells.append(f"{_signed(statistics.fmean(diffs))} ({held})")
    margins = acceptance.auroc_margins(runs, "cleanlab")
    if margins is None:
        cells.append("n/a")
    else:
        k = sum(x >= acceptance.AUROC_MARGIN for x in margins)
        reach = f"≥ {acceptance.AUROC_MARGIN:g} on {k} of {n}"
        cells.append(f"{_signed(statistics.fmean(margins), digits=3)} ({reach})")
    by_type = acceptance.grade_precisions(runs)
    if by_type is None:
        cells.append("n/a")
    else:
        means = {t: statistics.fmean(v) for t, v in by_type.items()}
        # A type without a figure is the weakest (the verdict counts it as below the target): n/a.
        weakest = min(means, key=lambda t: (not math.isnan(means[t]), means[t]))
        shown = "n/a" if math.isnan(means[weakest]) else f"{means[weakest]:.2f}"
        cells.append(f"{weakest} {shown}")
    return cells


def protocol(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run the overview's pooled row requires to equal the reported run's: every setting
    ``meta`` records but those of ``POOLED_ANYWAY``, and on simulated data the LSM's ``ONE_CLASS_MOOT``
    fields (a setting a run does not record is ``None``)."""
    settings = {
        k: v for k, v in (meta.get("settings", {}) or {}).items() if k not in POOLED_ANYWAY["settings"]
    }
    other = {k: v for k, v in meta.items() if k not in (*_NOT_SETTINGS, *POOLED_ANYWAY["meta"], "settings")}
    other["noise"] = list(meta.get("noise") or [])
    if meta.get("data") is None and isinstance(other.get("lsm"), Mapping):
        other["lsm"] = {k: v for k, v in other["lsm"].items() if k not in ONE_CLASS_MOOT}
    return {**other, "settings": settings}


def overview_block(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Every published run in one table, and the seeds nothing was tuned on pooled.

    Args:
        results: (path, ``results.json``) of each run, the reported run first: its seeds are the reported
            ones, its settings (``protocol``) those the pooled row requires.

    Returns:
        The block's markdown: one row per run (trainings per compared arm, seeds, noise mix, the full
        method's share of full expert and its largest cost on any seed, its margins over the three equal-cost
        comparisons, the AUROC margin over ObjectLab, the verdict's count and the wall time), then the pooled
        row.
    """
    if not results:
        raise ValueError("overview: expected at least one results.json (the reported run first)")
    head = [
        "run",
        "trainings per compared arm",
        "seeds",
        "noise mix",
        "full method, % of full expert",
        "cost (largest)",
        *(h for _, h in _AGAINST),
        "AUROC − ObjectLab",
        "calibrated grades, weakest type",
        "targets met",
        "wall time",
    ]
    lines = [
        "Generated by `python -m bench.readme --block overview "
        + " ".join(path for path, _ in results)
        + " README.md` from those runs' `results.json` (the first is the reported run). Means over each "
        "run's seeds; in brackets, on how many seeds a comparison holds (by 2 points for the fine-tunes, at "
        "all for random + correction, by 0.05 for the AUROC); the grades' precision at recall 0.5 (target "
        "0.6); the last row pools every seed, other than the reported run's, that was run with its settings, "
        "each seed once (from the run that trained its arms most often, else the first):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    first_meta = results[0][1]["meta"]
    reported = {int(s) for s in first_meta.get("seeds", [])}
    required = protocol(first_meta)
    # seed -> (trainings per compared arm, folder, its run): the run that trained most, else the first
    pooled: dict[int, tuple[int, str, Mapping[str, Any]]] = {}
    for path, res in results:
        meta, runs = res["meta"], res["runs"]
        verdict = acceptance.check(runs, meta)
        hours = float(meta.get("seconds_all_invocations", meta.get("seconds", 0.0))) / 3600
        folder = Path(path).parent.name
        seeds = ", ".join(str(r["seed"]) for r in runs)
        # A check's folder also spells out its noise overrides, which the noise column shows: name it short.
        shown = folder
        if meta.get("noise") and folder.startswith("check-"):
            shown = "check-" + "-".join(str(r["seed"]) for r in runs) + "-noise"
            shown += "-session" if folder.endswith("-session") else ""
        cells = [f"[{shown}]({Path(path).parent.as_posix()}/results.md)", str(_trainings(meta)), seeds]
        cells += [_noise(meta), *_row_figures(runs)]
        invocations = int(meta.get("invocations", 1))
        wall = f"{hours:.1f} h" + (f" over {invocations} invocations" if invocations > 1 else "")
        cells += [f"{sum(c.met is True for c in verdict)} of {len(verdict)}", wall]
        lines.append("| " + " | ".join(cells) + " |")
        if protocol(meta) == required and path != results[0][0]:
            for r in runs:
                seed = int(r["seed"])
                if seed not in reported and (seed not in pooled or _trainings(meta) > pooled[seed][0]):
                    pooled[seed] = (_trainings(meta), folder, r)
    if pooled:
        runs = [pooled[s][2] for s in sorted(pooled)]
        used = {folder for _, folder, _ in pooled.values()}
        pooled_from = [f for f in (Path(path).parent.name for path, _ in results) if f in used]
        anyway = ", ".join(f"`{k}`" for k in (*POOLED_ANYWAY["settings"], *POOLED_ANYWAY["meta"]))
        folders = ", ".join(pooled_from)
        cells = [
            f"**pooled: seeds nothing was tuned on, the reported run's settings** ({folders}); "
            f"every setting alike but {anyway}"
            + (
                " (and, on the simulator's one class, the LSM's "
                + ", ".join(f"`{k}`" for k in ONE_CLASS_MOOT)
                + ")"
                if first_meta.get("data") is None
                else ""
            ),
            " or ".join(str(t) for t in sorted({t for t, _, _ in pooled.values()})),
            ", ".join(str(s) for s in sorted(pooled)),
            _noise(first_meta),
            *_row_figures(runs),
            "—",
            "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: Mapping[str, Any], source: str, block: str = "results") -> str:
    """The text of ``block`` for the run ``results`` read from ``source``."""
    if block in _SEED_BLOCKS:
        return seed_block(results, source, block)
    if block == "overview":
        return overview_block([(source, results)])
    markers(block)  # validates the name
    return readme_block(results, source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.readme",
        description="Write a bench.simulate run's tables and verdict into a README between its markers.",
    )
    parser.add_argument(
        "results",
        type=Path,
        nargs="+",
        help="a finished bench.simulate results.json (for --block overview: several, the reported run first)",
    )
    parser.add_argument("readme", type=Path, help="the markdown file holding the block's markers")
    parser.add_argument(
        "--block",
        choices=BLOCKS,
        default="results",
        help="results: the reported run's tables; heldout: a check on other seeds, seed by seed; session: "
        "the session-sized run, seed by seed; heldout-session, noise-session: that protocol on other seeds, "
        "and on another noise mix; overview: several runs, one row each, and the seeds nothing was tuned on "
        "pooled (each between its own markers, see the module's docstring)",
    )
    args = parser.parse_args(argv)
    if args.block != "overview" and len(args.results) != 1:
        parser.error(f"--block {args.block}: expected one results.json, got {len(args.results)}")
    loaded = [(str(path), load_results(path, parser)) for path in args.results]
    try:
        if args.block == "overview":
            text = overview_block(loaded)
        else:
            text = render(loaded[0][1], loaded[0][0], args.block)
        write_block(args.readme, text, block=args.block)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    sources = ", ".join(path for path, _ in loaded)
    print(f"{args.readme}: results of {sources} written between the {args.block} markers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
