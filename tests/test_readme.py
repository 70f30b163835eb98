"""bench.readme: a run's tables and verdict written into the README between its markers, nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import readme

REPO = Path(__file__).resolve().parents[1]
REPORTED = REPO / "docs" / "results" / "quick" / "results.json"


def test_the_block_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# Title\n\nbefore\n{readme.BEGIN}\nold\n{readme.END}\nafter\n")
    readme.write_block(doc, "new")
    assert doc.read_text() == f"# Title\n\nbefore\n{readme.BEGIN}\nnew\n{readme.END}\nafter\n"
    readme.write_block(doc, "newer")  # again: still one block
    assert doc.read_text().count(readme.BEGIN) == 1 and "newer" in doc.read_text()


@pytest.mark.parametrize(
    "text",
    ["no markers\n", f"{readme.END}\n{readme.BEGIN}\n", f"{readme.BEGIN}\n{readme.END}\n{readme.BEGIN}\n"],
    ids=["missing", "out of order", "twice"],
)
def test_a_readme_without_one_pair_of_markers_is_left_untouched(tmp_path: Path, text: str) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(text)
    with pytest.raises(ValueError, match="expected one line"):
        readme.write_block(doc, "x")
    assert doc.read_text() == text


def test_cli_writes_the_reported_runs_tables_and_verdict(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"intro\n\n{readme.BEGIN}\n{readme.END}\n\noutro\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.readme", str(REPORTED), str(doc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    text = doc.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\noutro\n")
    results = json.loads(REPORTED.read_text())
    pct = results["summary"]["arms"]["full"]["pct_of_full"][0]
    assert (
        f"**Headline: the full method reaches {pct:.1f} ± " in text
    )  # the run's own figure, not a typed one
    assert "| LSM + correction (full method) |" in text and "Paired per-seed differences" in text
    assert "targets met." in text and results["meta"]["command"] in text


def test_cli_leaves_the_readme_as_it_was_on_bad_input(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text("no markers\n")
    bad = tmp_path / "results.json"
    bad.write_text("[]")
    for args, message in (
        ([str(REPORTED), str(doc)], "expected one line"),
        ([str(bad), str(doc)], "finished"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.readme", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and message in proc.stderr
        assert doc.read_text() == "no markers\n"


def test_the_readmes_block_is_what_the_committed_results_give() -> None:
    """A hand edit of the README's generated block, or results.json changed without rewriting it, fails."""
    text = (REPO / "README.md").read_text()
    written = text[text.index(readme.BEGIN) + len(readme.BEGIN) + 1 : text.index(readme.END) - 1]
    expected = readme.readme_block(json.loads(REPORTED.read_text()), "docs/results/quick/results.json")
    assert written == expected, "run: python -m bench.readme docs/results/quick/results.json README.md"
