"""``backend.bootstrap``: the first model version from a project's crowd labels (CLI, and BOOTSTRAP=auto)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backend_helpers import data_uri, disc_image, random_scene
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.bootstrap import BOOTSTRAP_SOURCE, BootstrapError, crowd_training_items, prepare_bootstrap
from backend.bootstrap.__main__ import main, run_bootstrap
from backend.bootstrap.auto import AutoBootstrap
from backend.images import ImageLoader
from backend.labelconfig import parse_label_config
from backend.settings import Settings, SettingsError
from model.registry import ModelRegistry

CONFIG_XML = (
    '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
    '<Label value="Deposit"/><Label value="background"/></RectangleLabels></View>'
)
SCHEMA = parse_label_config(CONFIG_XML)


def _crowd(
    discs: list[tuple[float, float, float]], size: int, label: str = "deposit"
) -> list[dict[str, Any]]:
    return [
        {
            "x": (cx - r) / size * 100,
            "y": (cy - r) / size * 100,
            "width": 2 * r / size * 100,
            "height": 2 * r / size * 100,
            "label": label,
        }
        for cx, cy, r in discs
    ]


def _tasks(n: int, size: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        discs = random_scene(rng, size)
        out.append(
            {
                "id": i + 1,
                "data": {
                    "image": data_uri(disc_image(size, discs, seed=i)),
                    "crowd_labels": _crowd(discs, size),
                },
                "annotations": [],
            }
        )
    return out


class FakeSource:
    """A project's tasks and config (as ``LabelStudioSource`` gives them); records what is published."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self._tasks = tasks
        self.published: list[Any] = []

    def label_config(self, project: int | None) -> str:
        return CONFIG_XML

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return self._tasks

    def publish(self, scored: Any) -> None:
        self.published.extend(scored)


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "DEVICE": "cpu",
            "TRAIN_EPOCHS": "1",
            "TRAIN_IMGSZ": "64",
            "TRAIN_BATCH": "4",
            **env,
        }
    )


def test_crowd_items_map_labels_to_classes_and_keep_negatives(tmp_path):
    tasks = _tasks(2)
    tasks[0]["data"]["crowd_labels"].append({**tasks[0]["data"]["crowd_labels"][0], "label": "background"})
    tasks[1]["data"]["crowd_labels"] = []  # the crowd saw nothing: a negative image
    tasks.append({"id": 9, "data": {"image": tasks[0]["data"]["image"]}})  # no crowd field: not used
    items = crowd_training_items(
        tasks, schema=SCHEMA, names=["Deposit"], loader=ImageLoader(), image_dir=tmp_path / "img"
    )
    assert len(items) == 2
    n_crowd = len(tasks[0]["data"]["crowd_labels"]) - 1  # the "background" box trains nothing
    assert items[0].class_id.tolist() == [0] * n_crowd and items[1].xyxy.shape == (0, 4)
    assert all(it.path.is_file() and it.width == 64 for it in items)


def test_a_project_without_crowd_labels_is_refused(tmp_path):
    tasks = _tasks(2)
    for t in tasks:
        del t["data"]["crowd_labels"]
    with pytest.raises(
        BootstrapError, match=r"project 3: none of its 2 tasks has crowd labels .*backend\.ingest"
    ):
        prepare_bootstrap(
            _settings(tmp_path), FakeSource(tasks), 3, loader=ImageLoader(), job_dir=tmp_path / "job"
        )


@pytest.mark.parametrize("boxes", ["none", "background only"])
def test_crowd_labels_without_a_box_to_train_are_refused_as_such(tmp_path, boxes):
    """Every task has crowd labels, but no box survives: importing them again would not help."""
    tasks = _tasks(2)
    for t in tasks:
        crowd = t["data"]["crowd_labels"]
        t["data"]["crowd_labels"] = [] if boxes == "none" else [{**b, "label": "background"} for b in crowd]
    with pytest.raises(BootstrapError) as caught:
        prepare_bootstrap(
            _settings(tmp_path), FakeSource(tasks), 3, loader=ImageLoader(), job_dir=tmp_path / "job"
        )
    message = str(caught.value)
    assert message.startswith(
        "project 3: the crowd labels (data.crowd_labels) of its 2 labelled tasks hold no box of a class to "
        "train (Deposit): no box at all, or only boxes of deletion labels such as background"
    )
    assert "none of its" not in message and "backend.ingest" not in message


def test_a_config_of_deletion_labels_only_is_refused(tmp_path):
    class OnlyBackground(FakeSource):
        def label_config(self, project: int | None) -> str:
            return CONFIG_XML.replace('<Label value="Deposit"/>', "")

    tasks = _tasks(1)
    tasks[0]["data"]["crowd_labels"] = []
    with pytest.raises(BootstrapError, match=r"labels \['background'\] are all deletion labels"):
        prepare_bootstrap(
            _settings(tmp_path), OnlyBackground(tasks), 3, loader=ImageLoader(), job_dir=tmp_path / "j"
        )


class Unreachable(FakeSource):
    """Label Studio failing while the tasks are listed."""

    def __init__(self, error: Exception) -> None:
        super().__init__([])
        self.error = error

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        raise self.error


def _api_error() -> Exception:
    from label_studio_sdk.core.api_error import ApiError

    return ApiError(status_code=500, body={"detail": "database is locked"})


def test_label_studio_failing_to_list_the_tasks_is_a_source_error(tmp_path):
    import requests

    from backend.bootstrap import BootstrapSourceError

    cases = [
        (_api_error(), "HTTP 500: database is locked"),
        (requests.ConnectionError("connection refused"), "ConnectionError: connection refused"),
    ]
    for error, why in cases:
        with pytest.raises(BootstrapSourceError) as caught:
            prepare_bootstrap(
                _settings(tmp_path), Unreachable(error), 3, loader=ImageLoader(), job_dir=tmp_path / "j"
            )
        assert str(caught.value) == f"project 3: its tasks cannot be listed: {why}"


def test_cli_label_studio_failures_exit_1_with_one_line(tmp_path, monkeypatch, capsys):
    for var in ("MODEL_WEIGHTS", "CROWD_SOURCE", "EXPERT_MODE", "WORK_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("backend.training.LabelStudioSource", lambda settings: Unreachable(_api_error()))
    argv = ["--project", "3", "--no-progress", "--model-dir", str(tmp_path / "m")]
    assert main([*argv, "--url", LS["LABEL_STUDIO_URL"], "--api-key", LS["LABEL_STUDIO_API_KEY"]]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip().splitlines()[-1]
        == "error: project 3: its tasks cannot be listed: HTTP 500: database is locked"
    )


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("image", "status", "why"),
    [
        ("/data/local-files/?d=nope/a.png", 2, "no such file under LOCAL_FILES_DOCUMENT_ROOT"),
        ("data:image/png;base64,aGVsbG8=", 2, "not a readable image"),
        ("ftp://host/a.png", 2, "expected an http(s) URL"),
        ("http://127.0.0.1:{port}/a.png", 1, "cannot be fetched (ConnectionError)"),
    ],
)
def test_cli_image_load_failures_exit_2_for_the_users_input_1_for_a_failing_host(
    tmp_path, monkeypatch, capsys, image, status, why
):
    """An image that is not there or not an image is the user's to fix (2); a host that does not answer may
    answer next time (1). Either way one line naming the task and the image, nothing published."""
    for var in ("MODEL_WEIGHTS", "CROWD_SOURCE", "EXPERT_MODE", "WORK_DIR", "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    tasks = _tasks(2)
    url = image.format(port=_closed_port())
    tasks[1]["data"]["image"] = url
    monkeypatch.setattr("backend.training.LabelStudioSource", lambda settings: FakeSource(tasks))
    argv = [
        "--project",
        "3",
        "--no-progress",
        "--model-dir",
        str(tmp_path / "m"),
        "--document-root",
        str(tmp_path),
    ]
    assert main([*argv, "--url", LS["LABEL_STUDIO_URL"], "--api-key", LS["LABEL_STUDIO_API_KEY"]]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: task 2: image {url!r}: ") and why in line, line
    assert ModelRegistry(tmp_path / "m").latest() is None


@pytest.mark.parametrize(
    ("cause", "error"),
    [
        ("http_status", "BootstrapSourceError"),
        ("unreachable", "BootstrapSourceError"),
        ("too_large", "BootstrapError"),
    ],
)
def test_image_failures_of_a_host_are_source_errors(tmp_path, cause, error):
    from backend.bootstrap import BootstrapSourceError
    from backend.images import ImageLoadError

    class Failing(ImageLoader):
        def decode(self, url: str, *, task: str = "?") -> Any:
            raise ImageLoadError(f"task {task}: image 'http://host/a.png': HTTP 503", cause=cause)

    with pytest.raises(BootstrapError) as caught:
        crowd_training_items(
            _tasks(1), schema=SCHEMA, names=["Deposit"], loader=Failing(), image_dir=tmp_path
        )
    assert isinstance(caught.value, BootstrapSourceError) == (error == "BootstrapSourceError")
    assert str(caught.value) == "task 1: image 'http://host/a.png': HTTP 503"


def test_bootstrap_errors_name_what_to_fix(tmp_path):
    bad = _tasks(1)
    bad[0]["data"]["crowd_labels"][0]["label"] = "cat"
    with pytest.raises(BootstrapError, match=r"task 1: label 'cat': not in the labelling config"):
        prepare_bootstrap(
            _settings(tmp_path), FakeSource(bad), 3, loader=ImageLoader(), job_dir=tmp_path / "j"
        )
    with pytest.raises(BootstrapError, match="--init: "):
        prepare_bootstrap(
            _settings(tmp_path),
            FakeSource(_tasks(1)),
            3,
            loader=ImageLoader(),
            job_dir=tmp_path / "j",
            init=str(tmp_path / "missing.pt"),
        )
    registry = ModelRegistry(tmp_path / "models")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    registry.publish(weights, {"family": "yolo"})
    with pytest.raises(BootstrapError, match=r"already holds v0001.*--force"):
        run_bootstrap(_settings(tmp_path), project=3, source=FakeSource(_tasks(1)), progress=False)


def test_bootstrap_setting(tmp_path):
    assert _settings(tmp_path).bootstrap == "auto"
    assert _settings(tmp_path, BOOTSTRAP="OFF").bootstrap == "off"
    with pytest.raises(SettingsError, match="BOOTSTRAP: expected auto or off, got 'sometimes'"):
        _settings(tmp_path, BOOTSTRAP="sometimes")


class _Trainer:
    def __init__(self) -> None:
        self.requests: list[tuple[int | None, str]] = []

    def request(self, project: int | None, *, kind: str = "expert") -> str:
        self.requests.append((project, kind))
        return "training queued"


class _Service:
    def __init__(self, latest: str | None) -> None:
        self.latest = latest

    def latest_version(self) -> str | None:
        return self.latest


LS = {"LABEL_STUDIO_URL": "http://127.0.0.1:1", "LABEL_STUDIO_API_KEY": "k" * 40}


@pytest.mark.parametrize(
    ("env", "latest", "queued"),
    [
        (LS, None, True),
        ({**LS, "BOOTSTRAP": "off"}, None, False),
        ({}, None, False),  # no Label Studio to read crowd labels from
        (LS, "v0001-20261128T000000", False),  # a version exists
    ],
)
def test_auto_bootstrap_acts_only_on_an_empty_registry(tmp_path, env, latest, queued):
    trainer = _Trainer()
    auto = AutoBootstrap(_settings(tmp_path, **env), _Service(latest), trainer)  # type: ignore[arg-type]
    assert auto.maybe_start(4) is queued
    assert auto.maybe_start(4) is False  # once per project
    assert trainer.requests == ([(4, "bootstrap")] if queued else [])


def test_auto_bootstrap_needs_weights_unset(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    trainer = _Trainer()
    auto = AutoBootstrap(_settings(tmp_path, MODEL_WEIGHTS=str(weights), **LS), _Service(None), trainer)  # type: ignore[arg-type]
    assert auto.maybe_start(4) is False and not trainer.requests


def test_setup_on_an_empty_backend_starts_the_bootstrap_and_health_reports_it(tmp_path):
    tasks = _tasks(2)
    for t in tasks:
        t["data"]["crowd_labels"] = []  # nothing to train on: fails at once, with the reason in /health
    app = create_app(_settings(tmp_path, **LS), source=FakeSource(tasks))
    client = TestClient(app)
    assert client.post("/setup", json={"project": "7.1732780000", "schema": CONFIG_XML}).json() == {
        "model_version": "untrained"
    }
    assert app.state.trainer.wait(30)
    training = client.get("/health").json()["training"]
    assert training["state"] == "failed" and training["kind"] == "bootstrap"
    assert (
        "project 7: the crowd labels (data.crowd_labels) of its 2 labelled tasks hold no box"
        in training["last_error"]
    )
    resp = client.post("/predict", json={"tasks": [tasks[0]], "label_config": CONFIG_XML, "project": "7.1"})
    assert resp.status_code == 503 and "trained on the crowd labels" in resp.json()["detail"]


@pytest.mark.slow
def test_bootstrap_publishes_a_version_from_crowd_labels(tmp_path):
    settings = _settings(tmp_path)
    meta = run_bootstrap(settings, project=5, source=FakeSource(_tasks(6)), progress=False)
    assert meta["source"] == BOOTSTRAP_SOURCE and meta["project"] == 5
    assert meta["names"] == ["Deposit"] and meta["n_train"] == 6 and meta["epochs"] == 1
    latest = ModelRegistry(settings.model_dir).latest()
    assert latest is not None and latest.version == meta["version"] and latest.weights.is_file()
    progress = json.loads(next(settings.scratch_dir.glob("bootstrap-*/progress.json")).read_text())
    assert progress == {"epoch": 1, "epochs": 1}


@pytest.mark.slow
def test_auto_bootstrap_in_the_backend_publishes_serves_and_scores(tmp_path):
    source = FakeSource(_tasks(4, seed=1))
    app = create_app(_settings(tmp_path, **LS), source=source)
    client = TestClient(app)
    client.post("/setup", json={"project": "7.1732780000", "schema": CONFIG_XML})
    assert app.state.trainer.wait(300)
    health = client.get("/health").json()
    assert health["training"]["state"] == "idle", health
    assert health["training"]["kind"] == "bootstrap" and health["model_version"] == health["latest_version"]
    assert ModelRegistry(tmp_path / "models").latest().meta["source"] == BOOTSTRAP_SOURCE  # type: ignore[union-attr]
    assert len(source.published) == 4  # every task scored by the new version
    resp = client.post("/predict", json={"tasks": [source.tasks(7)[0]], "label_config": CONFIG_XML})
    assert resp.status_code == 200 and resp.json()["results"][0]["model_version"] == health["latest_version"]


def test_cli_errors(tmp_path, monkeypatch, capsys):
    for var in ("MODEL_DIR", "MODEL_WEIGHTS", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["--project", "3"]) == 2
    assert "configuration error: MODEL_DIR: required" in capsys.readouterr().err
    assert main(["--project", "3", "--model-dir", str(tmp_path), "--no-progress"]) == 2
    assert (
        "error: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --url and --api-key)" in capsys.readouterr().err
    )


def test_a_failing_job_names_its_error_and_log(tmp_path):
    from backend.training import read_job_progress, run_train_job

    seen: list[dict[str, Any]] = []
    job = {
        "work_dir": str(tmp_path),
        "model_dir": str(tmp_path / "m"),
        "names": ["a"],
        "train": [],
        "val": [],
    }
    job |= {"family": "no-such-family", "epochs": 1, "batch": 1}
    with pytest.raises(
        RuntimeError, match=r"training job exited with 1: ValueError: family: .*log .*train\.log"
    ):
        run_train_job(tmp_path, job, on_progress=seen.append)
    assert read_job_progress(tmp_path) == {}  # no epoch ended
    assert not (tmp_path / "m").exists()


def test_crowd_from_annotations_trains_on_the_fused_annotator_boxes(tmp_path):
    """CROWD_SOURCE=annotations: two crowd users' annotations, fused as the backend scores them."""
    from backend.crowd import CrowdReader

    settings = _settings(tmp_path, CROWD_SOURCE="annotations", EXPERT_MODE="emails:expert@lab.org")
    reader = CrowdReader(settings.crowd, settings.expert, users=None)
    tasks = _tasks(2)
    for t in tasks:
        boxes = t["data"].pop("crowd_labels")
        region = [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "rectanglelabels",
                "original_width": 64,
                "original_height": 64,
                "value": {**{k: b[k] for k in ("x", "y", "width", "height")}, "rectanglelabels": ["Deposit"]},
            }
            for b in boxes
        ]
        t["annotations"] = [
            {"id": 10 * t["id"] + i, "completed_by_email": email, "result": region}
            for i, email in enumerate(("a@crowd.org", "b@crowd.org"))
        ]
    tasks.append({"id": 9, "data": {"image": tasks[0]["data"]["image"]}, "annotations": []})
    items = crowd_training_items(
        tasks, schema=SCHEMA, names=["Deposit"], loader=ImageLoader(), image_dir=tmp_path / "i", reader=reader
    )
    assert len(items) == 2  # the task nobody of the crowd annotated is not a training image
    assert [len(it.class_id) for it in items] == [len(t["annotations"][0]["result"]) for t in tasks[:2]]
    with pytest.raises(BootstrapError, match=r"none of its 1 tasks has crowd labels \(annotations of crowd"):
        prepare_bootstrap(settings, FakeSource(tasks[2:]), 3, loader=ImageLoader(), job_dir=tmp_path / "j")
