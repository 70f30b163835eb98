"""End to end: project calibration and the project report with a real Label Studio 1.23.2 and backend process.

A project of disc images with noisy crowd labels (``data.crowd_labels``: shifted boxes, boxes on background,
missed discs); most tasks also get an expert annotation with the true discs. The backend serves the tiny
initial YOLO (``MODEL_WEIGHTS``, trained on none of these tasks, so every expert task is an example):

* ``POST /calibrate?project=N`` fits on the expert tasks, reports every calibrated noise type and stores
  ``calibration.json`` beside the version; ``python -m backend.calibrate --project N`` does the same;
* ``GET /report?project=N`` answers the report's keys, ``&format=html`` a page with embedded PNG plots.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from backend_helpers import LABEL_CONFIG, disc_image, random_scene, tiny_weights
from e2e_fixtures import LabelStudioOnly, label_studio_only
from PIL import Image

from demo import labelstudio as lsh
from formats.labelstudio import detections_to_regions
from selection.detections import Detections

__all__ = ["label_studio_only"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e

SIZE = 96
N_TASKS = 30
N_EXPERT = 24
REPO = Path(__file__).resolve().parents[1]


def _crowd(discs: list[tuple[float, float, float]], rng: np.random.Generator) -> list[dict[str, Any]]:
    """Crowd boxes in percent: each disc kept, shifted or missed; sometimes a box on background."""
    out = []
    for cx, cy, r in discs:
        roll = rng.random()
        if roll < 0.15:
            continue  # missed
        if roll < 0.4:
            cx, cy = cx + rng.choice([-1, 1]) * 0.8 * r, cy + rng.choice([-1, 1]) * 0.6 * r
        out.append((cx - r, cy - r, 2 * r, 2 * r))
    if rng.random() < 0.4:
        x, y = rng.uniform(0, SIZE - 14, 2)
        out.append((x, y, 12.0, 12.0))
    return [
        {
            "x": 100 * max(0.0, x) / SIZE,
            "y": 100 * max(0.0, y) / SIZE,
            "width": 100 * w / SIZE,
            "height": 100 * h / SIZE,
            "label": "deposit",
        }
        for x, y, w, h in out
    ]


def _expert_regions(discs: list[tuple[float, float, float]]) -> list[dict[str, Any]]:
    boxes = np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs], np.float32).reshape(-1, 4)
    dets = Detections(boxes, np.zeros(len(boxes), np.int64))
    return detections_to_regions(
        dets, width=SIZE, height=SIZE, labels=["deposit"], from_name="label", to_name="image"
    )


def test_calibrate_and_report(label_studio_only: LabelStudioOnly, tmp_path: Path) -> None:
    env = label_studio_only
    client = env.client
    rng = np.random.default_rng(7)
    folder = env.document_root / "calib-e2e"
    folder.mkdir()
    scenes = [random_scene(rng, SIZE) for _ in range(N_TASKS)]
    tasks = []
    for i, discs in enumerate(scenes):
        Image.fromarray(disc_image(SIZE, discs, seed=i)).save(folder / f"{i}.png")
        tasks.append(
            {"data": {"image": f"/data/local-files/?d=calib-e2e/{i}.png", "crowd_labels": _crowd(discs, rng)}}
        )
    project = lsh.create_project(client, "calibration e2e", LABEL_CONFIG)
    lsh.add_local_storage(client, project, folder)
    ids = lsh.import_tasks(client, project, tasks)
    for tid, discs in list(zip(ids, scenes, strict=True))[:N_EXPERT]:
        client.annotations.create(id=tid, result=_expert_regions(discs))
    backend_env = {
        "LABEL_STUDIO_URL": env.ls.url,
        "LABEL_STUDIO_API_KEY": env.ls.token,
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_WEIGHTS": str(tiny_weights()),
        "DEVICE": "cpu",
        "LOCAL_FILES_DOCUMENT_ROOT": str(env.document_root),
        "LOG_LEVEL": "INFO",
    }
    with lsh.BackendProcess(None, backend_env, log_path=tmp_path / "backend.log") as backend:
        answer = requests.post(f"{backend.url}/calibrate?project={project}", timeout=300).json()
        assert answer["n_tasks"] == N_EXPERT and answer["n_excluded"] == 0, answer
        types = {row["noise_type"]: row for row in answer["types"]}
        assert set(types) == {"background", "localization", "box_in_box", "missed"}
        assert sum(row["examples"] for row in types.values()) > 0
        for row in types.values():
            assert row["fitted"] or row["reason"], row
        version = answer["version"]
        stored = tmp_path / "models" / "versions" / version / "calibration.json"
        assert stored.is_file()
        stored.unlink()

        report = requests.get(f"{backend.url}/report?project={project}", timeout=300).json()
        assert {"tasks_by_grade", "expert_tasks", "errors_remaining", "versions", "calibration"} <= set(
            report
        )
        assert report["expert_tasks"] == {"done": N_EXPERT, "total": N_TASKS}
        assert sum(report["tasks_by_grade"].values()) == N_TASKS - N_EXPERT
        assert report["errors_remaining"]["tasks"] == N_TASKS - N_EXPERT
        (row,) = report["versions"]
        assert row["version"] == version and row["tasks"] == N_EXPERT and row["ap50"] is not None
        assert report["calibration"] is None  # removed above
        page = requests.get(f"{backend.url}/report?project={project}&format=html", timeout=300)
        assert page.status_code == 200 and "data:image/png;base64," in page.text

    # The command line does the same as the endpoint (the backend is stopped: the registry is shared).
    cli = subprocess.run(
        [sys.executable, "-m", "backend.calibrate", "--project", str(project)],
        env={**os.environ, **backend_env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"{version}: {N_EXPERT} expert tasks" in cli.stdout and "localization" in cli.stdout
    assert stored.is_file()
