"""Fit the grades on a project's expert annotations: ``python -m backend.calibrate --project N``.

Reads the settings from the environment like the backend (``MODEL_DIR``, ``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, ``EXPERT_MODE``, ``CROWD_*``, ... or ``TASKS_FILE``), fits the calibration of the
serving version (or ``--version``) with ``backend.calibration.calibrate_project``, stores it beside the
version (the backend uses it from its next ``/predict``) and prints the per-type table. The same as
``POST /calibrate?project=N``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m backend.calibrate --project N [--version V]``: fit, store, print the per-type table.

    Returns:
        0 done; 2 bad input, one ``error: ...`` line on stderr (settings, an unknown ``--version``, no
        published model, a bad labelling config or tasks file), as the other backend commands.
    """
    parser = argparse.ArgumentParser(prog="python -m backend.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=int, help="Label Studio project id (not needed with TASKS_FILE)")
    parser.add_argument("--version", help="model version to calibrate (default: the serving one)")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (what POST /calibrate answers)"
    )
    args = parser.parse_args(argv)
    from backend.app import create_app
    from backend.service import NoModelError
    from backend.settings import Settings, SettingsError

    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.project is None and settings.tasks_file is None:
        parser.error("--project: required unless TASKS_FILE is set")
    app = create_app(settings)
    if args.version is not None:
        try:  # an unknown name (404 from POST /calibrate)
            app.state.service.registry.get(args.version)
        except KeyError as exc:
            print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 2
    try:
        result = app.state.calibrator.calibrate(args.project, version=args.version)
    except (NoModelError, ValueError) as exc:  # nothing published (503), a bad config or tasks file (400)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(result.message)
        print(format_table(result.types))
    return 0


def format_table(types: Sequence[Mapping[str, Any]]) -> str:
    """The per-type rows of a calibration as a text table (precision/recall before (LSM) and after, and the
    type's weight in the discrepancy)."""

    from selection.calibration import fitted_label

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    head = ("type", "examples", "errors", "LSM prec", "recall", "precision", "recall", "weight")
    lines = [
        f"{head[0]:<13}{head[1]:>9}{head[2]:>7}  {head[3]:>8}{head[4]:>7}  {head[5]:>9}{head[6]:>7}"
        f"{head[7]:>8}  fitted"
    ]
    for row in types:
        fit = fitted_label(row["fitted"], row["reason"])
        lines.append(
            f"{row['noise_type']:<13}{row['examples']:>9}{row['errors']:>7}  "
            f"{num(row['precision_before']):>8}{num(row['recall_before']):>7}  "
            f"{num(row['precision']):>9}{num(row['recall']):>7}{num(row.get('weight')):>8}  {fit}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
