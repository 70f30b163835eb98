"""Backend: a real tiny retraining through the TrainingManager (no Label Studio: the task list is injected),
and ``python -m backend`` as a real subprocess on a free port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, REPO, TEST_DEVICE, disc_image, png_bytes, random_scene, tiny_weights

from backend.images import ImageLoader
from backend.service import ModelService
from backend.settings import Settings
from backend.training import TrainingManager


class InjectedSource:
    """The expert-task list and score sink Label Studio would provide (the e2e tests use the real one)."""

    def __init__(self, tasks):
        self._tasks = tasks
        self.published = []

    def label_config(self, project):
        return LABEL_CONFIG

    def tasks(self, project):
        return self._tasks

    def publish(self, scored):
        self.published.extend(scored)


def _tasks(root: Path, n: int, n_expert: int) -> list[dict]:
    rng = np.random.default_rng(5)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(n):
        discs = random_scene(rng)
        (root / "imgs" / f"{i}.png").write_bytes(png_bytes(disc_image(96, discs, seed=100 + i)))
        regions = [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": 96,
                "original_height": 96,
                "value": {
                    "x": (cx - r) / 96 * 100,
                    "y": (cy - r) / 96 * 100,
                    "width": 2 * r / 96 * 100,
                    "height": 2 * r / 96 * 100,
                    "rotation": 0,
                    "rectanglelabels": ["deposit"],
                },
            }
            for cx, cy, r in discs
        ]
        annotations = [{"id": 100 + i, "result": regions, "completed_by": 1}] if i < n_expert else []
        crowd = [{"x": 10, "y": 10, "width": 20, "height": 20, "label": "deposit"}]
        tasks.append(
            {
                "id": i + 1,
                "data": {"image": f"/data/local-files/?d=imgs/{i}.png", "crowd_labels": crowd},
                "annotations": annotations,
            }
        )
    return tasks


@pytest.mark.slow
def test_training_publishes_switches_and_rescores(tmp_path):
    weights = tiny_weights()
    root = tmp_path / "files"
    tasks = _tasks(root, n=6, n_expert=4)
    settings = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "MODEL_WEIGHTS": str(weights),
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "DEVICE": TEST_DEVICE,
            "TRAIN_EPOCHS": "1",
            "TRAIN_IMGSZ": "96",
            "TRAIN_MIN_ANNOTATIONS": "1",
        }
    )
    service = ModelService(settings, loader=ImageLoader(document_root=root))
    service.publish_initial()
    first = service.latest_version()
    source = InjectedSource(tasks)
    trainer = TrainingManager(settings, service, source=source)
    assert trainer.on_event("START_TRAINING", project=1) == "training queued"
    assert trainer.on_event("START_TRAINING", project=1) == "pending"  # a burst coalesces into one more job
    assert trainer.wait(600)
    status = trainer.status()
    assert status["state"] == "idle", status
    assert status["last_error"] is None and not status["pending"]
    versions = [v.version for v in service.registry.versions()]
    # initial + the job (+ one re-run when the second request came after the job had started)
    assert len(versions) in (2, 3) and versions[0] == first
    assert service.loaded_version == versions[-1] == status["last_version"]
    # Trained and served on TEST_DEVICE: bf16 autocast on CUDA, full precision on the CPU.
    detector, _ = service.current()
    on_cuda = TEST_DEVICE.startswith("cuda")
    assert str(getattr(detector, "device", "")).startswith("cuda" if on_cuda else "cpu")
    run_args = [yaml.safe_load(p.read_text()) for p in (tmp_path / "models").rglob("args.yaml")]
    assert run_args and all(a["amp"] == ("bf16" if on_cuda else False) for a in run_args)
    meta = service.registry.latest().meta
    assert meta["n_train"] == 4 and meta["names"] == ["deposit"] and meta["trained_on"] == [1, 2, 3, 4]
    # Calibrated after publishing, on the expert tasks as the first version (which trained on none) saw them.
    stored = json.loads((service.registry.latest().weights.parent / "calibration.json").read_text())
    assert stored["version"] == versions[-1] and stored["sources"] == {first: 4}, stored["message"]
    assert meta["image_normalization"] == settings.image_normalization.as_dict()
    # Only the 2 non-expert tasks are re-scored (after each job), with the version serving at that time.
    rescored = [s.task_id for s in source.published]
    assert rescored == [5, 6] * (len(versions) - 1)
    assert source.published[-1].prediction["model_version"] == versions[-1]
    assert source.published[-1].fields.as_data()["model_version"] == versions[-1]


def test_training_failure_keeps_previous_model(tmp_path):
    weights = tiny_weights()
    root = tmp_path / "files"
    tasks = _tasks(root, n=2, n_expert=0)
    settings = Settings.from_env(
        {"MODEL_DIR": str(tmp_path / "models"), "MODEL_WEIGHTS": str(weights), "DEVICE": TEST_DEVICE}
    )
    service = ModelService(settings, loader=ImageLoader(document_root=root))
    service.publish_initial()
    trainer = TrainingManager(settings, service, source=InjectedSource(tasks))
    trainer.request(1)
    assert trainer.wait(60)
    status = trainer.status()
    assert status["state"] == "failed" and "no expert-annotated tasks" in status["last_error"]
    assert len(service.registry.versions()) == 1


def test_bulk_rescore_endpoint_scores_every_non_expert_task(tmp_path):
    from fastapi.testclient import TestClient

    from backend.app import create_app

    root = tmp_path / "files"
    tasks = _tasks(root, n=5, n_expert=2)
    tasks[3]["data"]["image"] = "/data/local-files/?d=imgs/missing.png"
    settings = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "MODEL_WEIGHTS": str(tiny_weights()),
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "DEVICE": TEST_DEVICE,
        }
    )
    source = InjectedSource(tasks)
    app = create_app(settings, source=source)
    client = TestClient(app)
    assert client.post("/rescore?project=1").json() == {"status": "re-scoring queued", "action": "RESCORE"}
    app.state.trainer._rescore_thread.join(120)
    assert [s.task_id for s in source.published] == [3, 4, 5]
    assert [s.ok for s in source.published] == [True, False, True]  # the missing image fails alone
    assert source.published[1].writeback() == {"score_error": source.published[1].error}
    assert "task 4: image" in str(source.published[1].error)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_backend_runs_as_a_process(tmp_path):
    weights = tiny_weights()
    root = tmp_path / "files"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.png").write_bytes(png_bytes(disc_image(96, [(40, 40, 12)], seed=1)))
    port = _free_port()
    env = {
        **os.environ,
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_WEIGHTS": str(weights),
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "DEVICE": TEST_DEVICE,
        "LOG_LEVEL": "INFO",
        "LABEL_STUDIO_API_KEY": "do-not-log-me",
        "YOLO_CONFIG_DIR": str(REPO / ".work" / "yolo-config"),
        "MPLCONFIGDIR": str(REPO / ".work" / "mpl"),
    }
    log = tmp_path / "backend.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
            assert proc.poll() is None, log.read_text()
        health = requests.get(f"{base}/health", timeout=5).json()
        assert health["status"] == "UP" and health["training"]["state"] == "idle"
        versions = requests.get(f"{base}/versions", timeout=5).json()["versions"]
        assert len(versions) == 1
        task = {"id": 1, "data": {"image": "/data/local-files/?d=imgs/a.png", "crowd_labels": []}}
        resp = requests.post(
            f"{base}/predict", json={"tasks": [task], "label_config": LABEL_CONFIG}, timeout=120
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["results"][0]["model_version"] == versions[0]
        bad = requests.post(
            f"{base}/predict", data=b"{oops", headers={"Content-Type": "application/json"}, timeout=5
        )
        assert bad.status_code == 422 and bad.json() == {"detail": "body: not valid JSON"}
        hook = requests.post(f"{base}/webhook", json={"action": "PROJECT_CREATED"}, timeout=5)
        assert hook.json()["status"] == "ignored"
        assert requests.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert "do-not-log-me" not in text
    assert "api_key=set" in text


def test_backend_refuses_bad_settings(tmp_path):
    env = {**os.environ, "MODEL_DIR": str(tmp_path), "DEVICE": "tpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "backend"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "DEVICE: expected auto" in proc.stderr
    # A value that parses but this machine cannot give stops the start too, not the first request.
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {**os.environ, "MODEL_DIR": str(blocker / "models"), "DEVICE": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "backend"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "configuration error: MODEL_DIR: " in proc.stderr, proc.stderr


@pytest.mark.parametrize(("nice", "idle"), [(0, False), (10, False), (19, True)])
def test_training_process_priority(nice, idle):
    """The training job lowers its own priority (in a child here: niceness cannot be raised back)."""
    code = (
        "import os; from backend.train_job import lower_priority; "
        f"base = os.nice(0); lower_priority({nice}); "
        "print(os.nice(0) - base, os.sched_getscheduler(0) == os.SCHED_IDLE)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    delta, sched_idle = out.stdout.split()
    assert int(delta) == min(nice, 19 - os.nice(0)) and sched_idle == str(idle)
