"""The in-process training queue under concurrent requests, and what a training reads and writes after it ran.

Each race is forced with events (and, for the worker's exit, a trace hook that holds the worker thread after
its last decision), so every test is deterministic; no test trains a model (``train_once`` or
``run_train_job`` is faked).
"""

from __future__ import annotations

import copy
import json
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, data_uri, disc_image

from backend.images import ImageLoader
from backend.service import ModelService
from backend.settings import Settings
from backend.training import TrainingManager
from model.registry import ModelRegistry

IMAGE = data_uri(disc_image(40, [(20, 20, 6)]))
WAIT_S = 20


def _region() -> dict[str, Any]:
    box = {"x": 25.0, "y": 25.0, "width": 30.0, "height": 30.0, "rectanglelabels": ["deposit"]}
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": box}


def _annotation(task_id: int) -> dict[str, Any]:
    return {"id": 200 + task_id, "task": task_id, "result": [_region()], "completed_by": 1}


class _Source:
    """A project held in memory; every listing is a copy of what it holds at that moment (as Label Studio's
    API answers)."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.now = tasks

    def label_config(self, project: int | None) -> str:
        return LABEL_CONFIG

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return copy.deepcopy(self.now)

    def publish(self, scored: Any) -> None:
        raise AssertionError("bulk scoring is faked in these tests")

    def task(self, task_id: int) -> dict[str, Any]:
        return next(t for t in self.now if t["id"] == task_id)


def _project() -> list[dict[str, Any]]:
    """Task 1 expert-annotated; tasks 2 and 3 crowd-labelled only."""
    crowd = [{"x": 10, "y": 10, "width": 20, "height": 20, "label": "deposit"}]
    return [
        {"id": 1, "project": 1, "data": {"image": IMAGE}, "annotations": [_annotation(1)], "predictions": []},
        {"id": 2, "project": 1, "data": {"image": IMAGE, "crowd_labels": crowd}, "annotations": []},
        {"id": 3, "project": 1, "data": {"image": IMAGE, "crowd_labels": crowd}, "annotations": []},
    ]


def _trainer(tmp_path: Path, tasks: list[dict[str, Any]] | None = None, **env: str) -> TrainingManager:
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu", **env})
    service = ModelService(settings, loader=ImageLoader())
    return TrainingManager(settings, service, source=_Source(tasks if tasks is not None else _project()))


class _Runs:
    """A fake ``train_once``: records (project, kind); the first call waits for ``gate`` when asked to;
    ``fail`` lists the calls (0-based) that raise."""

    def __init__(self, *, hold_first: bool = False, fail: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int | None, str]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        self.hold_first = hold_first
        self.fail = fail
        self.during_first: list[Any] = []  # called while the first job runs

    def __call__(self, project: int | None, *, kind: str = "expert") -> str:
        index = len(self.calls)
        self.calls.append((project, kind))
        if index == 0 and self.hold_first:
            self.started.set()
            assert self.gate.wait(WAIT_S)
        for action in self.during_first if index == 0 else ():
            action()
        if index in self.fail:
            raise RuntimeError(f"training {index} failed")
        return f"v{index + 1:04d}-20260101T000000"


# ------------------------------------------------------------------------------------------ the worker


def test_a_request_while_the_worker_exits_is_not_lost(tmp_path, monkeypatch):
    """The worker has found nothing pending and is leaving: a request then must start a new job, not be
    answered "pending" by a thread that will never look again."""
    trainer = _trainer(tmp_path)
    runs = _Runs()
    monkeypatch.setattr(trainer, "train_once", runs)
    leaving, go = threading.Event(), threading.Event()

    def on_return(frame: Any, event: str, arg: Any) -> Any:
        if event == "return" and not leaving.is_set():  # the worker's last decision is made: hold it here
            leaving.set()
            go.wait(WAIT_S)
        return on_return

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == "_worker" and not leaving.is_set():
            return on_return
        return None

    threading.settrace(tracer)
    try:
        assert trainer.request(1) == "training queued"
        first = trainer._thread
        assert leaving.wait(WAIT_S)  # the first job ran, the worker decided to exit, its thread is alive
        assert first is not None and first.is_alive()
        answer = trainer.request(1)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
        go.set()
    assert trainer.wait(WAIT_S)
    first.join(WAIT_S)
    assert answer == "training queued"
    assert runs.calls == [(1, "expert"), (1, "expert")]
    status = trainer.status()
    assert status["state"] == "idle" and status["pending"] is False


def test_pending_requests_keep_one_entry_per_project_in_arrival_order(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    runs = _Runs(hold_first=True)
    monkeypatch.setattr(trainer, "train_once", runs)
    assert trainer.request(1) == "training queued"
    assert runs.started.wait(WAIT_S)
    assert trainer.request(2, kind="bootstrap") == "pending"
    assert trainer.request(3) == "pending"
    assert trainer.request(2) == "pending"  # added to project 2's entry, after its bootstrap
    assert trainer.request(3) == "pending"  # already pending: nothing added
    assert trainer.request(4) == "pending"
    assert trainer.request(4, kind="bootstrap") == "pending"  # a bootstrap runs before the expert training
    assert trainer.status()["pending"] is True
    runs.gate.set()
    assert trainer.wait(WAIT_S)
    assert runs.calls == [
        (1, "expert"),
        (2, "bootstrap"),
        (2, "expert"),
        (3, "expert"),
        (4, "bootstrap"),
        (4, "expert"),
    ]
    assert trainer.status()["pending"] is False


def test_a_request_for_the_project_being_bootstrapped_joins_its_entry(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path)
    runs = _Runs(hold_first=True)
    monkeypatch.setattr(trainer, "train_once", runs)
    answers: list[str] = []
    runs.during_first.append(lambda: answers.append(trainer.request(5)))
    trainer.request(5, kind="bootstrap")
    assert runs.started.wait(WAIT_S)
    answers.append(trainer.request(5))  # while the bootstrap runs: one expert training after it
    runs.gate.set()
    assert trainer.wait(WAIT_S)
    assert answers == ["pending", "pending"]
    assert runs.calls == [(5, "bootstrap"), (5, "expert")]


def test_an_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"kind: expected one of \['bootstrap', 'expert'\], got 'crowd'"):
        _trainer(tmp_path).request(1, kind="crowd")


# ------------------------------------------------------------------------- counting expert annotations


def _expert_event(trainer: TrainingManager, project: int, task_id: int) -> str:
    return trainer.on_event(
        "ANNOTATION_CREATED", project=project, annotation={"id": 100 + task_id, "task": task_id}
    )


def test_a_failed_training_gives_its_annotations_back(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, TRAIN_MIN_ANNOTATIONS="2")
    runs = _Runs(fail=(0,))
    monkeypatch.setattr(trainer, "train_once", runs)
    assert _expert_event(trainer, 1, 11) == "not enough annotations (1/2)"
    assert _expert_event(trainer, 1, 12) == "training queued"
    assert trainer.wait(WAIT_S)
    status = trainer.status()
    assert status["state"] == "failed" and status["new_expert_tasks"] == 2
    # The retry comes with the next expert annotation, not after TRAIN_MIN_ANNOTATIONS new ones.
    assert _expert_event(trainer, 1, 13) == "training queued"
    assert trainer.wait(WAIT_S)
    assert runs.calls == [(1, "expert"), (1, "expert")]
    # The successful training consumed the count.
    assert trainer.status()["state"] == "idle" and trainer.status()["new_expert_tasks"] == 0
    assert _expert_event(trainer, 1, 14) == "not enough annotations (1/2)"
    assert trainer.status()["new_expert_tasks"] == 1


def test_annotation_counts_are_per_project(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, TRAIN_MIN_ANNOTATIONS="2")
    runs = _Runs()
    monkeypatch.setattr(trainer, "train_once", runs)
    assert _expert_event(trainer, 1, 11) == "not enough annotations (1/2)"
    assert _expert_event(trainer, 2, 21) == "not enough annotations (1/2)"  # project 1's task not counted
    assert trainer.status()["new_expert_tasks"] == 1  # the project last named: 2


def test_a_training_of_one_project_keeps_the_count_of_another(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, TRAIN_MIN_ANNOTATIONS="2")
    runs = _Runs()
    monkeypatch.setattr(trainer, "train_once", runs)
    assert _expert_event(trainer, 1, 11) == "not enough annotations (1/2)"
    assert trainer.on_event("START_TRAINING", project=2) == "training queued"
    assert trainer.wait(WAIT_S)
    assert _expert_event(trainer, 1, 12) == "training queued"
    assert trainer.wait(WAIT_S)
    assert runs.calls == [(2, "expert"), (1, "expert")]


def test_annotations_arriving_during_a_training_count_towards_the_next(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, TRAIN_MIN_ANNOTATIONS="2")
    runs = _Runs(hold_first=True)
    monkeypatch.setattr(trainer, "train_once", runs)
    assert _expert_event(trainer, 1, 11) == "not enough annotations (1/2)"
    assert _expert_event(trainer, 1, 12) == "training queued"
    assert runs.started.wait(WAIT_S)
    assert _expert_event(trainer, 1, 13) == "not enough annotations (1/2)"  # 11, 12: the running job's
    runs.gate.set()
    assert trainer.wait(WAIT_S)
    assert trainer.status()["new_expert_tasks"] == 1
    assert runs.calls == [(1, "expert")]


# --------------------------------------------------------------------- after the training: fresh tasks


@pytest.fixture
def after_training(monkeypatch):
    """Fakes the model switch, the calibration and the bulk scoring; records what each was given."""
    import backend.bulk
    import backend.training

    seen: dict[str, Any] = {"switched": [], "calibrated": [], "scored": []}

    def calibrate(service: Any, tasks: Any, schema: Any, *, version: str, project: int | None) -> None:
        seen["calibrated"].append({t["id"]: t for t in tasks})

    def bulk(*, project: int | None, source: Any, is_expert: Any, tasks: Any = None, **_: Any) -> Any:
        listed = list(tasks) if tasks is not None else source.tasks(project)
        seen["scored"].append({t["id"]: (is_expert(t), t) for t in listed})
        return SimpleNamespace(scored=sum(not is_expert(t) for t in listed))

    monkeypatch.setattr(backend.training, "calibrate_project", calibrate)
    monkeypatch.setattr(backend.bulk, "run_bulk_scoring", bulk)
    return seen


def _fake_switch(trainer: TrainingManager, seen: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def switch(version: str | None = None) -> str:
        seen["switched"].append(version)
        return str(version)

    monkeypatch.setattr(trainer.service, "switch", switch)


def test_rescoring_after_a_training_reads_the_tasks_as_they_are_then(tmp_path, monkeypatch, after_training):
    import backend.training

    trainer = _trainer(tmp_path)
    source = trainer.source()
    assert isinstance(source, _Source)
    new_crowd = [{"x": 50, "y": 50, "width": 10, "height": 10, "label": "deposit"}]
    late_prediction = {"id": 77, "model_version": "v0009-20260101T000000", "result": []}

    def train_meanwhile(job_dir: Path, job: dict[str, Any], **_: Any) -> str:
        # While the job trains (hours in real life) the project changes.
        source.task(2)["data"]["crowd_labels"] = new_crowd
        source.task(2)["data"]["score_error"] = "written by /predict"
        source.task(2)["predictions"] = [late_prediction]
        source.task(3)["annotations"] = [_annotation(3)]
        return "v0001-20260101T000000"

    monkeypatch.setattr(backend.training, "run_train_job", train_meanwhile)
    _fake_switch(trainer, after_training, monkeypatch)
    assert trainer.train_once(1) == "v0001-20260101T000000"
    assert after_training["switched"] == ["v0001-20260101T000000"]
    (scored,) = after_training["scored"]
    expert_2, task_2 = scored[2]
    assert not expert_2
    assert task_2["data"]["crowd_labels"] == new_crowd  # no write-back of the data listed before training
    assert task_2["data"]["score_error"] == "written by /predict"
    assert task_2["predictions"] == [late_prediction]
    assert scored[3][0] is True  # annotated by an expert during the training: not scored as crowd-labelled
    (calibrated,) = after_training["calibrated"]
    assert calibrated[3]["annotations"], "the calibration sees the expert annotation made during training"


def test_the_bootstrap_rescores_the_tasks_as_they_are_after_it(tmp_path, monkeypatch, after_training):
    import backend.bootstrap
    import backend.training

    trainer = _trainer(tmp_path)
    source = trainer.source()
    assert isinstance(source, _Source)
    before = source.tasks(1)

    def prepare(settings: Any, src: Any, project: Any, **_: Any) -> Any:
        return SimpleNamespace(job={"work_dir": "x"}, schema=None, tasks=before)

    def train_meanwhile(job_dir: Path, job: dict[str, Any], **_: Any) -> str:
        source.task(2)["data"]["crowd_labels"] = []
        return "v0001-20260101T000000"

    monkeypatch.setattr(backend.bootstrap, "prepare_bootstrap", prepare)
    monkeypatch.setattr(backend.bootstrap, "new_job_dir", lambda settings: tmp_path / "bootstrap-job")
    monkeypatch.setattr(backend.training, "run_train_job", train_meanwhile)
    _fake_switch(trainer, after_training, monkeypatch)
    assert trainer.train_once(1, kind="bootstrap") == "v0001-20260101T000000"
    (scored,) = after_training["scored"]
    assert scored[2][1]["data"]["crowd_labels"] == []


# ---------------------------------------------------------------- a job that dies after it published


def _publish_then_die(tmp_path: Path, job_id_of: Any) -> Any:
    def run(job_dir: Path, job: dict[str, Any], **_: Any) -> str:
        weights = tmp_path / "w.pt"
        weights.write_bytes(b"fake")
        ModelRegistry(tmp_path / "models").publish(weights, {"family": "yolo", "job_id": job_id_of(job)})
        raise RuntimeError("training job exited with -9: no result")

    return run


def test_a_job_killed_after_publishing_counts_as_succeeded(tmp_path, monkeypatch, after_training, caplog):
    import backend.training

    trainer = _trainer(tmp_path)
    monkeypatch.setattr(
        backend.training, "run_train_job", _publish_then_die(tmp_path, lambda j: j.get("job_id"))
    )
    _fake_switch(trainer, after_training, monkeypatch)
    with caplog.at_level("WARNING", logger="backend.training"):
        trainer.request(1)
        assert trainer.wait(WAIT_S)
    latest = trainer.service.registry.latest()
    assert latest is not None
    status = trainer.status()
    assert status["state"] == "idle" and status["last_error"] is None
    assert status["last_version"] == latest.version
    assert after_training["switched"] == [latest.version]
    assert len(after_training["calibrated"]) == 1 and len(after_training["scored"]) == 1
    assert f"published {latest.version} but then failed" in caplog.text


def test_a_failed_job_does_not_adopt_a_version_another_job_published(tmp_path, monkeypatch, after_training):
    import backend.training

    trainer = _trainer(tmp_path)
    monkeypatch.setattr(
        backend.training, "run_train_job", _publish_then_die(tmp_path, lambda j: "another job")
    )
    _fake_switch(trainer, after_training, monkeypatch)
    trainer.request(1)
    assert trainer.wait(WAIT_S)
    status = trainer.status()
    assert status["state"] == "failed" and "exited with -9" in status["last_error"]
    assert after_training["switched"] == [] and after_training["scored"] == []


def test_the_training_job_records_its_id_in_the_version_meta(tmp_path, monkeypatch):
    import model.detector as detector_module
    from backend.train_job import run_job
    from model.detector import TrainResult, register_family

    class _Family:
        name = "racefake"
        default_init = "scratch"

        def train(self, *, out_dir: Path, epochs: int, **_: Any) -> TrainResult:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "w.pt").write_bytes(b"fake")
            return TrainResult(weights=out_dir / "w.pt", seconds=0.0, epochs=epochs)

    register_family("racefake", _Family)
    try:
        item = {
            "path": str(tmp_path / "a.png"),
            "xyxy": [[1, 1, 5, 5]],
            "class_id": [0],
            "width": 8,
            "height": 8,
        }
        job = {
            "work_dir": str(tmp_path / "job"),
            "model_dir": str(tmp_path / "models"),
            "names": ["deposit"],
            "train": [item],
            "val": [item],
            "epochs": 1,
            "batch": 1,
            "family": "racefake",
            "job_id": "0123abcd",
        }
        version = run_job(json.loads(json.dumps(job)))
    finally:
        detector_module._FACTORIES.pop("racefake", None)
        detector_module._CACHE.pop("racefake", None)
    assert ModelRegistry(tmp_path / "models").get(version).meta["job_id"] == "0123abcd"
