"""End to end: crowd labels from crowd users' annotations, with a real Label Studio 1.23.2 and backend.

Three crowd users and one expert are created through the users API; their annotations are made through the
SDK with ``completed_by``. The backend runs with ``CROWD_SOURCE=annotations`` and
``EXPERT_MODE=emails:<expert>``:

* "Retrieve predictions" scores the fused crowd boxes: task A (three crowd users, two objects and a stray box)
  gets exactly three crowd regions at the mean boxes, with ``3/3``, ``2/3`` and ``1/3 annotators`` in their
  meta text; task B (one crowd user) gets that user's boxes unchanged (no agreement shown);
* the crowd annotations' webhooks count no expert task and train nothing (``TRAIN_MIN_ANNOTATIONS=2`` is less
  than the crowd's three annotated tasks); the expert's first annotation counts one, the second trains a new
  version, whose re-scoring of the crowd tasks (from the task listing) again uses the fused boxes.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from backend_helpers import LABEL_CONFIG, disc_image, tiny_weights
from e2e_fixtures import LabelStudioOnly, backend_versions, label_studio_only, wait_for_new_version
from PIL import Image

from demo import labelstudio as lsh
from formats.labelstudio import detections_to_regions
from selection.detections import Detections

__all__ = ["label_studio_only"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e

SIZE = 96
EXPERT = "expert@lab.org"
CROWD = ("crowd1@lab.org", "crowd2@lab.org", "crowd3@lab.org")
# task -> image discs (cx, cy, r)
DISCS = {
    "a": [(30, 30, 10), (70, 62, 12)],
    "b": [(40, 40, 12)],
    "c": [(25, 60, 11), (70, 25, 10)],
    "d": [(48, 48, 13)],
}
# task -> annotator -> boxes (xyxy px)
CROWD_BOXES = {
    "a": {
        CROWD[0]: [[20, 20, 40, 40], [58, 50, 82, 74]],
        CROWD[1]: [[22, 20, 42, 40], [58, 52, 82, 76]],
        CROWD[2]: [[21, 22, 41, 42], [5, 70, 15, 85]],
    },
    "b": {CROWD[1]: [[28, 28, 52, 52], [60, 10, 70, 20]]},
    "c": {CROWD[2]: [[14, 49, 36, 71]]},
}
# The fused boxes of task A, in cluster order, with their votes.
FUSED_A = ([[21, 20 + 2 / 3, 41, 40 + 2 / 3], [58, 51, 82, 75], [5, 70, 15, 85]], [3, 2, 1])
_CROWD_REGION = re.compile(r"^(?:drop-)?crowd(\d+)")


def _regions(boxes: list[list[float]]) -> list[dict[str, Any]]:
    dets = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.zeros(len(boxes), np.int64))
    return detections_to_regions(
        dets, width=SIZE, height=SIZE, labels=["deposit"], from_name="label", to_name="image"
    )


def _crowd_regions(result: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Crowd-sourced regions of a prediction by crowd box index (each index once)."""
    out: dict[int, dict[str, Any]] = {}
    for region in result:
        match = _CROWD_REGION.match(str(region["id"]))
        if match:
            assert int(match.group(1)) not in out, f"crowd box {match.group(1)} shown twice"
            out[int(match.group(1))] = region
    return out


def _check_fused(result: list[dict[str, Any]], boxes: list[list[float]], votes: list[int], n: int) -> None:
    shown = _crowd_regions(result)
    assert sorted(shown) == list(range(len(boxes))), [r["id"] for r in result]
    for k, region in shown.items():
        text = region["meta"]["text"][0]
        if n > 1:  # the agreement is shown when several crowd users labelled the task
            assert text.endswith(f" · {votes[k]}/{n} annotators"), text
        else:
            assert "annotators" not in text, text
        if text.startswith("localization") and "auto_fix" in text:
            continue  # shown at the model's corrected box
        v = region["value"]
        xyxy = np.array([v["x"], v["y"], v["x"] + v["width"], v["y"] + v["height"]]) * SIZE / 100
        np.testing.assert_allclose(xyxy, boxes[k], atol=0.05, err_msg=region["id"])


def _training(backend: lsh.BackendProcess) -> dict[str, Any]:
    return dict(requests.get(f"{backend.url}/health", timeout=10).json()["training"])


def _prediction(client: Any, task: int, version: str) -> list[dict[str, Any]]:
    preds = [p for p in client.predictions.list(task=task) if p.model_version == version]
    assert len(preds) == 1, f"task {task}: {len(preds)} predictions of {version}"
    return list(preds[0].result)


def test_crowd_annotations_are_fused_scored_and_never_train(
    label_studio_only: LabelStudioOnly, tmp_path: Path
) -> None:
    env = label_studio_only
    client = env.client
    images = env.document_root / "crowd-e2e"
    images.mkdir()
    for key, discs in DISCS.items():
        Image.fromarray(disc_image(SIZE, discs, seed=len(key))).save(images / f"{key}.png")
    users = {
        email: int(client.users.create(username=email.split("@")[0], email=email, password="crowd-pass-1").id)
        for email in (*CROWD, EXPERT)
    }
    project = lsh.create_project(client, "crowd from annotations", LABEL_CONFIG)
    lsh.add_local_storage(client, project, images)
    ids = lsh.import_tasks(
        client,
        project,
        [{"data": {"image": f"/data/local-files/?d=crowd-e2e/{key}.png", "name": key}} for key in DISCS],
    )
    task = dict(zip(DISCS, ids, strict=True))
    backend_env = {
        "LABEL_STUDIO_URL": env.ls.url,
        "LABEL_STUDIO_API_KEY": env.ls.token,
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_WEIGHTS": str(tiny_weights()),
        "DEVICE": "cpu",
        "LOCAL_FILES_DOCUMENT_ROOT": str(env.document_root),
        "CROWD_SOURCE": "annotations",
        "EXPERT_MODE": f"emails:{EXPERT}",
        "TRAIN_MIN_ANNOTATIONS": "2",
        "TRAIN_EPOCHS": "1",
        "TRAIN_IMGSZ": str(SIZE),
        "TRAIN_BATCH": "4",
        "LOG_LEVEL": "DEBUG",
    }
    with lsh.BackendProcess(None, backend_env, log_path=tmp_path / "backend.log") as backend:
        lsh.connect_backend(client, project, backend.url, title="crowd e2e")
        known = backend_versions(backend)
        for key, by_user in CROWD_BOXES.items():
            for email, boxes in by_user.items():
                client.annotations.create(id=task[key], result=_regions(boxes), completed_by=users[email])
        time.sleep(2)  # webhooks are sent synchronously without Redis; a margin for a slow machine
        state = _training(backend)
        assert state["new_expert_tasks"] == 0 and state["state"] == "idle", state
        assert backend_versions(backend) == known

        lsh.retrieve_predictions(env.ls, project, [task["a"], task["b"]], timeout=300)
        _check_fused(_prediction(client, task["a"], known[-1]), FUSED_A[0], FUSED_A[1], 3)
        boxes_b = CROWD_BOXES["b"][CROWD[1]]
        _check_fused(_prediction(client, task["b"], known[-1]), boxes_b, [1, 1], 1)

        expert_boxes = {k: [[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in DISCS[k]] for k in ("c", "d")}
        client.annotations.create(
            id=task["c"], result=_regions(expert_boxes["c"]), completed_by=users[EXPERT]
        )
        deadline = time.monotonic() + 30
        while _training(backend)["new_expert_tasks"] != 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        state = _training(backend)
        assert state["new_expert_tasks"] == 1 and state["state"] == "idle", state
        client.annotations.create(
            id=task["d"], result=_regions(expert_boxes["d"]), completed_by=users[EXPERT]
        )
        version = wait_for_new_version(backend, known, timeout=300)
        deadline = time.monotonic() + 120
        while _training(backend)["last_version"] != version and time.monotonic() < deadline:
            time.sleep(1)  # the new version is published before the crowd tasks are re-scored
        assert _training(backend)["last_version"] == version, _training(backend)
        log = (tmp_path / "backend.log").read_text()
        assert "on 2 expert tasks" in log  # C and D: crowd-only tasks A and B are not training data
        _check_fused(_prediction(client, task["a"], version), FUSED_A[0], FUSED_A[1], 3)
