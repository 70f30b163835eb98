"""End to end: bulk scoring of a 500-task project, real Label Studio 1.23.2 and real backend processes.

500 tiny disc images (64-96 px) with noisy crowd boxes; 10 tasks carry an (expert) annotation and one names
a missing image. ``POST /rescore`` starts the job; the backend is killed (SIGKILL) mid-job and started again
on the same folders: it resumes by itself and finishes. Every non-expert task then holds exactly one
prediction of the serving version (none written twice by the resumed run) and its score fields; the missing
image is reported, not fatal. A second ``python -m backend.score`` run finds everything scored and skips it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from backend_helpers import disc_image, png_bytes, tiny_weights
from e2e_fixtures import REPO, LabelStudioOnly, label_studio_only

from demo import labelstudio as lsh

__all__ = ["label_studio_only"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e

N_TASKS, N_EXPERT, MISSING = 500, 10, 250
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image"><Label value="deposit"/></RectangleLabels>
</View>"""


def _tasks(folder: Path, rel: str) -> list[dict[str, Any]]:
    """Images on disk and their tasks: crowd boxes near the discs (some shifted, some missing)."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(N_TASKS):
        size = int(rng.choice([64, 80, 96]))
        discs = [
            (float(rng.uniform(14, size - 14)), float(rng.uniform(14, size - 14)), float(rng.uniform(6, 11)))
            for _ in range(int(rng.integers(1, 3)))
        ]
        (folder / f"{i}.png").write_bytes(png_bytes(disc_image(size, discs, seed=i)))
        crowd = [
            {
                "x": 100 * (cx - r + rng.normal(0, 2)) / size,
                "y": 100 * (cy - r) / size,
                "width": 200 * r / size,
                "height": 200 * r / size,
                "label": "deposit",
            }
            for cx, cy, r in discs
            if rng.random() > 0.2
        ]
        name = "missing.png" if i == MISSING else f"{i}.png"
        task: dict[str, Any] = {
            "data": {"image": f"/data/local-files/?d={rel}/{name}", "crowd_labels": crowd}
        }
        if i < N_EXPERT:
            task["annotations"] = [{"result": [], "ground_truth": True}]
        tasks.append(task)
    return tasks


def _progress(backend: lsh.BackendProcess, project: int) -> dict[str, Any] | None:
    health = requests.get(f"{backend.url}/health", timeout=10).json()
    entry = health["bulk_scoring"].get(str(project))
    return dict(entry) if entry else None


def _wait(backend: lsh.BackendProcess, project: int, until: Any, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = _progress(backend, project)
        if progress is not None and until(progress):
            return progress
        time.sleep(0.3)
    raise AssertionError(f"bulk scoring not there after {timeout:.0f} s: {_progress(backend, project)}")


def test_bulk_scoring_500_tasks_resumes_after_a_kill_and_skips_on_rerun(
    label_studio_only: LabelStudioOnly, tmp_path: Path
) -> None:
    ls, client, root = label_studio_only.ls, label_studio_only.client, label_studio_only.document_root
    images = root / "bulk"
    tasks = _tasks(images, "bulk")
    project = lsh.create_project(client, "bulk scoring e2e", LABEL_CONFIG)
    lsh.add_local_storage(client, project, images)
    for start in range(0, N_TASKS, 250):
        lsh.import_tasks(client, project, tasks[start : start + 250])
    env = {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_WEIGHTS": str(tiny_weights()),
        "DEVICE": "cpu",
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "PREDICT_BATCH": "16",
        "LOG_LEVEL": "INFO",
    }
    first = lsh.BackendProcess(None, env, log_path=tmp_path / "backend-1.log")
    with first:
        assert requests.post(f"{first.url}/rescore", params={"project": project}, timeout=30).json() == {
            "status": "re-scoring queued",
            "action": "RESCORE",
        }
        mid = _wait(first, project, lambda p: p["scored"] >= 60, timeout=240)
        assert mid["state"] == "running" and mid["total"] == N_TASKS and mid["done"] < N_TASKS, mid
        assert mid["tasks_per_s"] > 0 and mid["eta_s"] is not None, mid
        assert first.proc is not None
        os.killpg(first.proc.pid, signal.SIGKILL)  # no goodbye: as a crash or a lost machine
        first.proc.wait(10)

    second = lsh.BackendProcess(None, env, log_path=tmp_path / "backend-2.log")
    with second:  # same MODEL_DIR (and so WORK_DIR): the unfinished run is resumed at start
        final = _wait(second, project, lambda p: p["state"] != "running", timeout=300)
        assert final["state"] == "done", final
        assert final["total"] == N_TASKS and final["done"] == N_TASKS
        assert final["expert"] == N_EXPERT and final["failed"] == 1
        assert final["skipped"] >= mid["scored"] - 16  # what the killed run wrote is not scored again
        assert final["scored"] + final["skipped"] == N_TASKS - N_EXPERT - 1
        version = final["version"]

        listed = lsh.list_tasks(ls, project, ordering=("tasks:id",))
        assert len(listed) == N_TASKS
        for i, task in enumerate(listed):
            ours = [p for p in task["predictions"] if p["model_version"] == version]
            if i < N_EXPERT:
                assert not ours and "discrepancy" not in task["data"], task["id"]
            elif i == MISSING:
                assert not ours and "missing.png" in task["data"]["score_error"], task["data"]
            else:
                assert len(ours) == 1, (task["id"], task["predictions"])  # no duplicate after the resume
                data = task["data"]
                assert data["model_version"] == version and data["score_error"] == "", data
                assert data["noise_grade"] in ("clean", "minor", "major", "uncertain")
                assert ours[0]["score"] == pytest.approx(data["priority"], abs=1e-4)
                assert data["crowd_labels"] == tasks[i]["data"]["crowd_labels"]  # merged, not replaced

        cli = subprocess.run(
            [sys.executable, "-m", "backend.score", "--project", str(project), "--backend", second.url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr
        again = _progress(second, project)
        assert again is not None and again["state"] == "done", again
        assert again["scored"] == 0 and again["skipped"] == N_TASKS - N_EXPERT - 1, again
        assert again["failed"] == 1  # the missing image is tried again, and reported again
        assert f"project {project}: done, {N_TASKS}/{N_TASKS} tasks (scored 0" in cli.stdout, cli.stdout
