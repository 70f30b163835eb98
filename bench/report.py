"""Renders a finished ``bench.simulate`` run again from its ``results.json``, with the current code.

    python -m bench.report .work/simulate/quick/results.json            # rewrite summary, results.md, plots
    python -m bench.report --check .work/simulate/check-5-6-7/results.json   # only: is it finished and fresh?

``results.json`` keeps every seed's raw figures (``runs``) and the run's settings (``meta``); its ``summary``
(means, paired differences, the verdict against the method's targets) and ``results.md`` are computed from
them. When that computation changes (a target read more strictly, a table that says more), this recomputes
them, and the plots, with ``bench.simulate.write_results``: the files are those ``bench.simulate`` would
write at the end of the same run today, byte for byte. ``meta`` and ``runs`` are kept as they are.

A ``results.json`` is refused (one line on stderr, exit 2) when it is not a finished run's: no ``meta`` or
``summary`` (the partial record an older ``bench.simulate`` wrote while a ``--jobs 1`` run was under way),
or older than the newest invocation record in its folder's ``.invocations/`` (the run was started again
after it was written and has not finished: the file is the previous result, or none of the new one).
``make publish-check`` and every publishing target check this before they replace anything, and render
what they publish with this command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.simulate import PARTIAL, write_results
from bench.wallclock import LEDGER


class NotFinishedError(ValueError):
    """A ``results.json`` that is not a finished run's (the message says why, in one line)."""


def load_finished(path: Path) -> dict[str, Any]:
    """A finished run's ``results.json``.

    Args:
        path: the file, or the run folder holding it.

    Returns:
        The parsed file (``meta``, ``summary`` and ``runs``).

    Raises:
        NotFinishedError: the file is missing, not JSON, lacks ``meta``, ``summary`` or ``runs``, or is
            older than the newest record in the folder's ``.invocations/``.
    """
    path = path / "results.json" if path.is_dir() else path
    folder = path.parent
    if not path.is_file():
        partial = folder / PARTIAL
        hint = f" ({PARTIAL} is there: the run has not finished)" if partial.is_file() else ""
        raise NotFinishedError(f"{path}: no such file{hint}; finish the run with bench.simulate first")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise NotFinishedError(f"{path}: not JSON ({err})") from None
    if not isinstance(results, dict) or not {"meta", "summary", "runs"} <= set(results):
        raise NotFinishedError(
            f"{path}: no meta and summary, the partial record of a run that has not finished; finish the run "
            "with bench.simulate first"
        )
    records = [p for p in (folder / LEDGER).glob("*.json") if p.is_file()]
    if records:
        newest = max(records, key=lambda p: p.stat().st_mtime_ns)
        if newest.stat().st_mtime_ns > path.stat().st_mtime_ns:
            raise NotFinishedError(
                f"{path}: older than the run's last invocation ({LEDGER}/{newest.name}): the run was started "
                "again and has not finished, this is an earlier result; finish the run (the same command "
                "resumes it) first"
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Recompute a finished bench.simulate run's summary, verdict, results.md and plots from "
        "its results.json with the current code (no training).",
    )
    parser.add_argument("results", type=Path, help="a bench.simulate results.json, or its run folder")
    parser.add_argument(
        "--check", action="store_true", help="only check that it is a finished run's, fresh; write nothing"
    )
    parser.add_argument("--no-plots", action="store_true", help="leave the PNG plots as they are")
    args = parser.parse_args(argv)
    try:
        results = load_finished(args.results)
    except NotFinishedError as err:
        print(f"bench.report: {err}", file=sys.stderr)
        return 2
    path = args.results / "results.json" if args.results.is_dir() else args.results
    if args.check:
        print(f"{path}: a finished run ({len(results['runs'])} seeds)")
        return 0
    write_results(path.parent, results["meta"], results["runs"], plots=not args.no_plots)
    verdict = json.loads(path.read_text())["summary"]["acceptance"]
    met = sum(c["met"] is True for c in verdict)
    print(
        f"{path}: summary, results.md{'' if args.no_plots else ' and plots'} rendered with the current code "
        f"({len(results['runs'])} seeds; {met} of {len(verdict)} targets met)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
