"""CLI: ``python -m synth --preset NAME --seed N --out DIR`` writes a simulated dataset, prints a summary."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from synth.config import PRESETS, get_preset
from synth.dataset import SPLITS, generate, with_overrides


def _out_problem(out: Path, document_root: Path | None) -> str | None:
    """Why the dataset cannot go to ``out`` with Label Studio URLs under ``document_root``; None if it can."""
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                where = "" if folder == out else f", so the folder {out} cannot be made"
                return f"--out: {folder} exists and is not a folder{where}"
            break
    if document_root is not None and not out.resolve().is_relative_to(document_root.resolve()):
        return (
            f"--ls-document-root: {document_root.resolve()} does not contain --out {out.resolve()}; pass the "
            "LOCAL_FILES_DOCUMENT_ROOT Label Studio serves, a folder at or above --out"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, write, print a summary; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m synth", description=__doc__)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-val", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument(
        "--ls-document-root",
        type=Path,
        default=None,
        help="Label Studio LOCAL_FILES_DOCUMENT_ROOT for task image URLs (default: the parent of --out)",
    )
    parser.add_argument("--ls-all-splits", action="store_true", help="Label Studio tasks for val/test too")
    parser.add_argument("--no-contact-sheet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING").upper())
    if args.seed < 0:
        parser.error(f"--seed: expected a non-negative integer, got {args.seed}")
    try:
        preset = get_preset(args.preset)
        config = with_overrides(preset, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
    except ValueError as exc:
        parser.error(str(exc))
    # Checked before generating: the writer would otherwise fail half-way, after some files are written.
    if sum(config.splits.values()) == 0:
        parser.error("--n-train, --n-val, --n-test: expected at least one image in all, got 0")
    if config.n_train == 0 and not args.no_contact_sheet:
        parser.error("--n-train 0: the contact sheet draws train images; add --no-contact-sheet")
    problem = _out_problem(args.out, args.ls_document_root)
    if problem:
        parser.error(problem)
    start = time.perf_counter()
    dataset = generate(config, args.seed, render=False)
    dataset = dataset.write(
        args.out,
        document_root=args.ls_document_root,
        label_studio_splits=SPLITS if args.ls_all_splits else ("train",),
        contact_sheet=not args.no_contact_sheet,
    )
    seconds = time.perf_counter() - start
    counts = {s: len(dataset.split(s)) for s in SPLITS}
    n_exp = sum(len(im.expert) for im in dataset.images)
    n_crowd = sum(len(im.crowd) for im in dataset.images)
    rates = dataset.noise_rates()
    train = dataset.noise_rates(("train",))
    print(f"synth: preset {config.name}, seed {args.seed}, {config.image_size} px -> {dataset.root}")
    print("  images: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    print(f"  boxes: expert {n_exp}, crowd {n_crowd}, clusters {rates.n_clusters}")
    print("  noise (all splits | train):  configured")
    cfg = config.noise
    for name, value, train_value, want in (
        ("missed", rates.missed, train.missed, cfg.missed_rate),
        ("localization", rates.localization, train.localization, cfg.localization_rate),
        ("background", rates.background, train.background, cfg.background_rate),
        ("box_in_box", rates.box_in_box, train.box_in_box, cfg.bib_rate),
    ):
        print(f"    {name:<13} {value:.3f} | {train_value:.3f}   {want:.3f}")
    print(f"  took {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
