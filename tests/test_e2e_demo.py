"""End to end: ``python -m demo --no-wait`` twice in one work folder, with a real Label Studio 1.23.

The smallest demo: the ``tiny`` preset (24 images), no pre-training, 1 fine-tuning epoch at 64 px. The first
run builds everything and scores every task without an expert annotation; the second reuses the dataset, the
model, the project and the scores. Both exit 0 and leave no server running. A run with another seed is then
refused before it starts anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_fixtures import REPO, _label_studio_data, _require_label_studio

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO_ARGS = [
    "--preset", "tiny", "--seed", "5", "--pretrain-epochs", "0", "--epochs", "1", "--imgsz", "64",
    "--batch", "8", "--device", "cpu", "--threads", "1", "--no-wait",
]  # fmt: skip


def _run_demo(work: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DEVICE", None)
    return subprocess.run(
        [sys.executable, "-m", "demo", "--work", str(work), *DEMO_ARGS, *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _check_run(run: subprocess.CompletedProcess[str]) -> str:
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "Most suspicious tasks now:" in out, out[-4000:]
    assert re.search(r"^\s+task\s+\d+\s+priority \d", out, re.M), out[-4000:]
    pids = [int(p) for p in re.findall(r"started pid (\d+)", out)]
    assert len(pids) == 2, out[-4000:]  # Label Studio and the backend, each in its own process group
    assert not [p for p in pids if _group_exists(p)], f"children still running: {pids}"
    return out


def test_demo_runs_twice_in_one_folder(tmp_path: Path) -> None:
    _require_label_studio()
    work = tmp_path / "demo"
    _label_studio_data(work / "labelstudio", work)  # an initialised database: skips ~40 s of set-up

    first = _check_run(_run_demo(work))
    scored = re.search(r"scores: (\d+) tasks scored, (\d+) already scored", first)
    assert scored is not None and int(scored[1]) > 0, first[-4000:]
    assert "tasks imported" in first

    second = _check_run(_run_demo(work))
    assert "dataset: reusing" in second and "reusing it" in second
    again = re.search(r"scores: (\d+) tasks scored, (\d+) already scored", second)
    assert again is not None and int(again[1]) == 0 and int(again[2]) == int(scored[1]), second[-4000:]
    assert "tasks imported" not in second  # nothing was missing from the reused project

    other = _run_demo(work, "--seed", "6", timeout=120)
    assert other.returncode == 2 and "make clean" in other.stdout + other.stderr
    assert "started pid" not in other.stdout + other.stderr
