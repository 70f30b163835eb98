"""Writes a ``bench.simulate`` run's results into the README, between its markers, so they are never typed.

    python -m bench.readme docs/results/quick/results.json README.md

The block holds the headline, every arm's figures, the paired per-seed differences and the verdict against the
method's targets (``bench.acceptance``), all read from the run's ``results.json``. Everything outside the
markers is left as it is; a README without them is left untouched and the command exits 2.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bench.acceptance import load_results
from bench.simulate import readme_block

BEGIN = "<!-- results:begin (written by python -m bench.readme; do not edit) -->"
END = "<!-- results:end -->"


def write_block(readme: Path, block: str) -> None:
    """Replace the text between the README's markers by ``block``.

    Raises:
        ValueError: the README lacks the markers, or has them more than once or out of order.
    """
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme}: expected one line {BEGIN!r}, later one line {END!r}, to write between")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{block}\n{END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.readme",
        description="Write a bench.simulate run's tables and verdict into a README between its markers.",
    )
    parser.add_argument("results", type=Path, help="a finished bench.simulate results.json")
    parser.add_argument("readme", type=Path, help=f"the markdown file holding the markers {BEGIN} ... {END}")
    args = parser.parse_args(argv)
    results = load_results(args.results, parser)
    try:
        write_block(args.readme, readme_block(results, str(args.results)))
    except (OSError, ValueError) as err:
        parser.error(str(err))
    print(f"{args.readme}: results of {args.results} written between the markers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
