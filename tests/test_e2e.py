"""End to end: a real Label Studio 1.23.2, the real backend process, real HTTP, real files.

The tests run in file order and share one session (see tests/e2e_fixtures.py): connect, predict and rank,
then annotate (which retrains through Label Studio's webhook), then bad input straight to the backend.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from e2e_fixtures import CONTROL_IMAGE_ID, E2EEnv, backend_versions, e2e, wait_for_new_version

from demo import labelstudio as lsh
from formats.labelstudio import detections_to_regions
from model.registry import is_version_name

__all__ = ["e2e"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e
GRADES = ("clean", "minor", "major", "uncertain")


def _health(env: E2EEnv) -> dict:
    resp = requests.get(f"{env.backend.url}/health", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _suspicious_tab_ids(e2e: E2EEnv) -> list[int]:
    """Task ids in the order of the demo's "Most suspicious first" tab (created if missing)."""
    view = lsh.ensure_suspicious_view(e2e.ls, e2e.project)
    resp = requests.get(
        f"{e2e.ls.url}/api/tasks",
        params={"project": e2e.project, "view": view, "page_size": 100},
        headers=e2e.ls.headers,
        timeout=30,
    )
    resp.raise_for_status()
    return [t["id"] for t in resp.json()["tasks"]]


def test_backend_is_connected_in_label_studio(e2e: E2EEnv) -> None:
    states = lsh.backend_state(e2e.ls, e2e.project)
    assert [s["id"] for s in states] == [e2e.ml_id]
    assert states[0]["state"] == "CO", states[0]
    assert states[0]["model_version"] == _health(e2e)["model_version"]
    # Label Studio registered <backend>/webhook for the project when the backend was connected.
    hooks = e2e.client.webhooks.list(project=str(e2e.project))
    assert any(h.url == f"{e2e.backend.url}/webhook" for h in hooks), [h.url for h in hooks]


def test_retrieve_predictions_scores_every_task(e2e: E2EEnv) -> None:
    version = _health(e2e)["model_version"]
    reply = lsh.retrieve_predictions(e2e.ls, e2e.project)
    tasks = lsh.wait_for_scores(e2e.ls, e2e.project, model_version=version, timeout=60)
    assert reply["processed_items"] == len(tasks) == sum(r.split == "train" for r in e2e.dataset.images) + 1
    texts: list[str] = []
    for task in tasks:
        ours = [p for p in lsh.task_predictions(e2e.ls, task["id"]) if p["model_version"] == version]
        assert len(ours) == 1, (
            task["id"],
            [p["model_version"] for p in lsh.task_predictions(e2e.ls, task["id"])],
        )
        pred = ours[0]
        assert 0.0 <= pred["score"] <= 1.0
        data = task["data"]
        # The backend wrote its findings into the task and kept the crowd labels.
        assert 0.0 <= data["discrepancy"] <= 1.0
        # Not calibrated yet (no version trained on expert tasks): the order is the LSM's discrepancy.
        assert data["priority"] == data["discrepancy"]
        assert pred["score"] == pytest.approx(data["priority"], abs=1e-3)
        assert data["noise_grade"] in GRADES
        assert isinstance(data["noise_types"], str)
        assert data["model_version"] == version
        assert "crowd_labels" in data and "image" in data
        for region in pred["result"]:
            assert region["type"] == "rectanglelabels"
            assert region["value"]["rectanglelabels"] == ["deposit"]
            texts += region.get("meta", {}).get("text", [])
    # Regions carry their noise type and grade as text the editor shows.
    assert texts, "no region carried meta text"
    assert all(any(g in t for g in GRADES) for t in texts), texts[:5]


def test_ordering_by_priority_puts_most_suspicious_first(e2e: E2EEnv) -> None:
    ranked = lsh.list_tasks(e2e.ls, e2e.project)  # -tasks:data.priority
    values = [t["data"]["priority"] for t in ranked]
    assert values == sorted(values, reverse=True)
    assert values[0] > values[-1], "every task got the same priority"
    # The control task (no crowd labels: nothing to contradict) ranks last.
    assert ranked[-1]["data"]["image_id"] == CONTROL_IMAGE_ID, [t["data"]["image_id"] for t in ranked]
    # The Data Manager tab the demo creates gives the same order, without the tasks an expert annotated.
    not_annotated = [t["id"] for t in ranked if t["total_annotations"] == 0]
    assert _suspicious_tab_ids(e2e) == not_annotated
    assert len(not_annotated) >= 2
    # Ground truth of the simulator: the noisier half of the ranking holds at least as much true noise.
    truth = {r.key: int(np.sum(r.crowd_noise != "clean")) + len(r.missed) for r in e2e.dataset.images}
    noise = [truth.get(t["data"]["image_id"], 0) for t in ranked]
    print(f"true noise per task, most suspicious first: {noise}")
    assert noise[0] > 0 or max(noise) == 0, noise


def test_expert_annotations_trigger_training_and_new_version_serves(e2e: E2EEnv) -> None:
    before = backend_versions(e2e.backend)
    old_version = _health(e2e)["model_version"]
    records = {r.key: r for r in e2e.dataset.images}
    ranked = lsh.list_tasks(e2e.ls, e2e.project)
    task_id = ranked[-1]["id"]  # not annotated: re-scored after the training
    # A prediction from elsewhere (e.g. imported crowd labels) must survive the clean-up of superseded ones.
    e2e.client.predictions.create(task=task_id, result=[], score=0.0, model_version="crowd-import")
    for task in ranked[:2]:  # the expert reviews the most suspicious tasks
        record = records[task["data"]["image_id"]]
        result = detections_to_regions(
            record.expert,
            width=record.width,
            height=record.height,
            labels=["deposit"],
            from_name="label",
            to_name="image",
        )
        lsh.create_annotation(e2e.client, task["id"], result)
    new_version = wait_for_new_version(e2e.backend, before)
    assert new_version != old_version
    # Published at once; the serving model switches on the next request.
    assert _health(e2e)["latest_version"] == new_version
    deadline = time.monotonic() + 300
    while _health(e2e)["training"]["state"] == "running" or _health(e2e)["training"]["pending"]:
        assert time.monotonic() < deadline, _health(e2e)["training"]
        time.sleep(2)
    # The two annotations may have trained twice (a follow-up); after the re-scoring the task holds exactly
    # one prediction of this backend, of the latest version.
    new_version = _health(e2e)["latest_version"]
    stored = [p["model_version"] for p in lsh.task_predictions(e2e.ls, task_id)]
    assert "crowd-import" in stored, stored
    assert [v for v in stored if is_version_name(v)] == [new_version], stored
    lsh.retrieve_predictions(e2e.ls, e2e.project, [task_id])
    versions = {p["model_version"] for p in lsh.task_predictions(e2e.ls, task_id)}
    assert new_version in versions, versions
    assert _health(e2e)["model_version"] == new_version
    lsh.wait_for_scores(e2e.ls, e2e.project, timeout=60)
    assert e2e.client.tasks.get(id=task_id).data["model_version"] == new_version
    # The demo's tab leaves out what the expert annotated (it keeps its old priority), keeps the rest.
    listed = _suspicious_tab_ids(e2e)
    assert task_id in listed and not {t["id"] for t in ranked[:2]} & set(listed), listed


def test_train_button_starts_training(e2e: E2EEnv) -> None:
    before = backend_versions(e2e.backend)
    resp = requests.post(
        f"{e2e.ls.url}/api/ml/{e2e.ml_id}/train", json={}, headers=e2e.ls.headers, timeout=60
    )
    assert resp.status_code == 200, resp.text
    wait_for_new_version(e2e.backend, before)
    assert lsh.backend_state(e2e.ls, e2e.project)[0]["state"] in ("CO", "TR"), lsh.backend_state(
        e2e.ls, e2e.project
    )


def _predict_body(e2e: E2EEnv, image: str, *, label_config: str | None = None) -> dict:
    return {
        "tasks": [{"id": 999999, "data": {"image": image, "crowd_labels": []}}],
        "label_config": e2e.label_config if label_config is None else label_config,
        "project": f"{e2e.project}.0",
        "params": {},
    }


@pytest.mark.parametrize(
    ("case", "expected_status"),
    [
        ("malformed_json", range(400, 500)),
        ("no_tasks", range(400, 500)),
        ("no_rectanglelabels", range(400, 500)),
    ],
)
def test_bad_input_gets_4xx_and_server_keeps_serving(e2e: E2EEnv, case: str, expected_status: range) -> None:
    url = f"{e2e.backend.url}/predict"
    headers = {"Content-Type": "application/json"}
    if case == "malformed_json":
        resp = requests.post(url, data=b'{"tasks": [', headers=headers, timeout=30)
    elif case == "no_tasks":
        body = _predict_body(e2e, "/data/local-files/?d=x.png")
        body["tasks"] = []
        resp = requests.post(url, json=body, timeout=30)
    elif case == "no_rectanglelabels":
        config = (
            '<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
            '<Choice value="a"/></Choices></View>'
        )
        resp = requests.post(url, json=_predict_body(e2e, "/data/local-files/?d=x.png", label_config=config))
    assert resp.status_code in expected_status, (resp.status_code, resp.text)
    detail = resp.json()
    assert json.dumps(detail).strip("{}\"' ") != "", detail  # a message, not an empty body
    assert _health(e2e)["status"] == "UP"


@pytest.mark.parametrize("case", ["unreachable_image", "corrupt_image"])
def test_bad_image_fails_only_its_task(e2e: E2EEnv, case: str) -> None:
    """200, one entry per task: the bad task's entry has an error and no result (LS stores nothing for it)."""
    if case == "unreachable_image":
        image = "http://127.0.0.1:9/nothing.png"
    else:
        corrupt = e2e.data_dir / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
        image = f"/data/local-files/?d={corrupt.relative_to(e2e.document_root)}"
    good = lsh.list_tasks(e2e.ls, e2e.project)[0]
    body = _predict_body(e2e, image)
    body["tasks"].insert(0, {"id": good["id"], "data": good["data"]})
    resp = requests.post(f"{e2e.backend.url}/predict", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert len(results) == 2 and "result" in results[0]
    assert "result" not in results[1] and "task 999999: image" in results[1]["error"]
    assert _health(e2e)["status"] == "UP"
