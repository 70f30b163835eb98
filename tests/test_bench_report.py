"""bench.report: a finished run rendered again from its results.json; what bench.simulate writes meanwhile."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import report
from bench import simulate as sim

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted((REPO / "docs" / "results").glob("*/results.json"))
SESSION = REPO / "docs" / "results" / "session"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench.report ARGS``, in this process (the module's entry point, without the start-up)."""
    code = report.main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["bench.report", *args], code, out, err)


@pytest.mark.parametrize(
    ("values", "stored", "shown"),
    [
        ([0.5, 0.7], (0.6, np.std([0.5, 0.7], ddof=1)), "0.60 ± 0.14"),
        ([0.5, math.nan, 0.7], (0.6, np.std([0.5, 0.7], ddof=1), 2, 3), "0.60 ± 0.14 (2 of 3 seeds)"),
        ([math.nan, 0.83, math.nan], (0.83, 0.0, 1, 3), "0.83 (1 of 3 seeds)"),
        ([math.nan, math.nan], (math.nan, math.nan, 0, 2), "n/a"),
    ],
)
def test_a_figure_some_seeds_lack_says_over_how_many_it_is(values, stored, shown) -> None:
    got = sim._mean_std(values)
    assert len(got) == len(stored)
    assert np.allclose(got, stored, equal_nan=True)
    assert sim._fmt(got, 1, 2) == shown
    assert sim._fmt(json.loads(json.dumps(got)), 1, 2) == shown  # as results.json gives it back


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.parent.name for p in PUBLISHED])
def test_the_published_results_are_what_the_current_code_renders(path: Path, tmp_path: Path) -> None:
    """A change to a summary, a verdict or a table must be published with it: make republish."""
    stored = json.loads(path.read_text())
    sim.write_results(tmp_path, stored["meta"], stored["runs"], plots=False)
    assert (tmp_path / "results.json").read_text() == path.read_text(), "run: make republish"
    assert (tmp_path / "results.md").read_text() == (path.parent / "results.md").read_text(), (
        "run: make republish"
    )


def test_report_renders_a_stored_run_as_bench_simulate_writes_it(tmp_path: Path, capsys) -> None:
    stale = json.loads((SESSION / "results.json").read_text())
    stale["summary"] = {"acceptance": []}  # what older code computed
    (tmp_path / "results.json").write_text(json.dumps(stale))
    (tmp_path / "results.md").write_text("old\n")
    (tmp_path / sim.PARTIAL).write_text("{}")
    proc = _cli(capsys, "--no-plots", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "rendered with the current code (5 seeds;" in proc.stdout
    assert (tmp_path / "results.json").read_text() == (SESSION / "results.json").read_text()
    assert (tmp_path / "results.md").read_text() == (SESSION / "results.md").read_text()
    assert not (tmp_path / sim.PARTIAL).exists()
    entry = subprocess.run(
        [sys.executable, "-m", "bench.report", "--check", str(tmp_path / "results.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert entry.returncode == 0 and "a finished run (5 seeds)" in entry.stdout, entry.stderr


def test_report_refuses_what_is_not_a_finished_runs_in_one_line(tmp_path: Path, capsys) -> None:
    runs = json.loads((SESSION / "results.json").read_text())["runs"]
    partial = tmp_path / "partial" / "results.json"
    partial.parent.mkdir()
    partial.write_text(json.dumps({"runs": runs[:2]}))  # what an older --jobs 1 run left while running
    stale = tmp_path / "stale"
    stale.mkdir()
    shutil.copy(SESSION / "results.json", stale / "results.json")
    record = stale / ".invocations" / "20261201T000000000000Z-1-abcdef.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"command": "x", "seconds": 60.0, "finished": False}))
    later = (stale / "results.json").stat().st_mtime_ns + 1_000_000_000
    os.utime(record, ns=(later, later))  # the run was started again after its results.json was written
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / sim.PARTIAL).write_text(json.dumps({"runs": runs[:1]}))

    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    before = files()
    for path, message in (
        (partial, "no meta and summary"),
        (stale / "results.json", "older than the run's last invocation (.invocations/20261201T"),
        (unfinished, f"no such file ({sim.PARTIAL} is there"),
    ):
        for args in (("--check", str(path)), (str(path),)):
            proc = _cli(capsys, *args)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("bench.report: ")
    assert files() == before  # nothing written
    # Once the run writes its results after that invocation, it is fresh.
    os.utime(stale / "results.json", ns=(later + 1, later + 1))
    proc = _cli(capsys, "--check", str(stale / "results.json"))
    assert proc.returncode == 0 and "a finished run (5 seeds)" in proc.stdout


def test_a_run_under_way_keeps_its_seeds_in_the_partial_file_not_in_results_json(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(sim, "_one_seed", lambda seed, **_: {"seed": seed})
    args = argparse.Namespace(jobs=1, out=tmp_path, preset="tiny", data=None, noise=[], threads=None)
    runs = sim._run_seeds(args, [3, 4], spec=sim.TRAIN_SPECS["tiny"], lsm=None, settings=None)  # type: ignore[arg-type]
    assert runs == [{"seed": 3}, {"seed": 4}]
    assert json.loads((tmp_path / sim.PARTIAL).read_text()) == {"runs": runs}
    assert not (tmp_path / "results.json").exists()


def test_the_plots_error_bars_are_the_tables_standard_deviation(tmp_path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    bars: list[np.ndarray] = []
    original = Axes.errorbar

    def record(self, x, y, *args, yerr=None, **kwargs):
        bars.append(np.asarray(yerr))
        return original(self, x, y, *args, yerr=yerr, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", record)
    stored = json.loads((SESSION / "results.json").read_text())
    sim.write_plots(tmp_path, stored["runs"], stored["summary"])
    strategies = list(stored["runs"][0]["rounds"])
    assert len(bars) == len(strategies)
    for strategy, yerr in zip(strategies, bars, strict=True):
        ys = np.array([[r["cleaning_ap50"] for r in run["rounds"][strategy]] for run in stored["runs"]])
        assert np.allclose(yerr, ys.std(0, ddof=1) * 100)
