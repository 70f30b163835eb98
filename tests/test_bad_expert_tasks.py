"""One malformed expert task (a rotated rectangle, an image that cannot be loaded, no image field) is left out
of an expert training with its reason, never fails the training of the others; with none left, the error
names them all."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, data_uri, disc_image

from backend.images import ImageLoader
from backend.labelconfig import parse_label_config
from backend.service import ModelService
from backend.settings import ExpertPolicy, Settings
from backend.training import TrainingManager, training_items

SCHEMA = parse_label_config(LABEL_CONFIG)
GOOD_IMAGE = data_uri(disc_image(40, [(20, 20, 6)]))


def _region(**value: Any) -> dict[str, Any]:
    box = {"x": 25.0, "y": 25.0, "width": 30.0, "height": 30.0, "rectanglelabels": ["deposit"], **value}
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "value": box}


def _task(tid: int, image: str | None = GOOD_IMAGE, **region: Any) -> dict[str, Any]:
    data = {} if image is None else {"image": image}
    annotation = {"id": 200 + tid, "result": [_region(**region)], "completed_by": 1}
    return {"id": tid, "data": data, "annotations": [annotation]}


ROTATED = _task(2, rotation=45)
UNDECODABLE = _task(3, "data:image/png;base64,AAAA")
NO_IMAGE = _task(4, None)
UNREACHABLE = _task(5, "http://127.0.0.1:9/x.png")
BAD = [ROTATED, UNDECODABLE, NO_IMAGE, UNREACHABLE]


def _items(tasks: list[dict[str, Any]], tmp_path: Path) -> Any:
    return training_items(
        tasks,
        schema=SCHEMA,
        names=["deposit"],
        policy=ExpertPolicy(),
        loader=ImageLoader(),
        image_dir=tmp_path / "images",
    )


def test_bad_expert_tasks_are_left_out_with_their_reasons(tmp_path, caplog):
    not_expert = {"id": 6, "data": {"image": "http://127.0.0.1:9/y.png"}, "annotations": []}
    with caplog.at_level(logging.WARNING, logger="backend.training"):
        expert_set = _items([_task(1), *BAD, not_expert], tmp_path)
    assert len(expert_set.items) == 1 and expert_set.task_ids == [1]
    assert expert_set.items[0].xyxy.tolist() == [[10, 10, 22, 22]]
    skipped = expert_set.skipped
    assert list(skipped) == ["2", "3", "4", "5"]
    assert skipped["2"] == "annotation 202: region 0: rotated rectangles are not supported"
    assert skipped["3"].startswith("image 'data:image/png")
    assert skipped["4"] == "no data.image (the image URL)"
    assert "cannot be fetched" in skipped["5"]
    assert (
        "task 2: skipped for training (annotation 202: region 0: rotated rectangles are not supported)"
        in caplog.messages
    )


def test_no_usable_expert_task_is_an_error_naming_them(tmp_path):
    with pytest.raises(ValueError) as info:
        _items(BAD, tmp_path)
    message = str(info.value)
    assert message.startswith(
        "none of the 4 expert-annotated tasks can be trained on: "
        "task 2: annotation 202: region 0: rotated rectangles are not supported; task 3: image 'data:"
    )
    assert "task 4: no data.image" in message and "task 5: image 'http://127.0.0.1:9/x.png'" in message
    many = [_task(t, rotation=10) for t in range(10, 17)]
    with pytest.raises(ValueError, match=r"none of the 7 .* task 14: .*; and 2 more \(see the log\)$"):
        _items(many, tmp_path)


class _Source:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self._tasks = tasks

    def label_config(self, project: int | None) -> str:
        return LABEL_CONFIG

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return self._tasks

    def publish(self, scored: Any) -> None:
        raise AssertionError("nothing is published in these tests")


def _trainer(tmp_path: Path, tasks: list[dict[str, Any]]) -> TrainingManager:
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu"})
    service = ModelService(settings, loader=ImageLoader())
    return TrainingManager(settings, service, source=_Source(tasks))


def test_the_training_job_trains_on_the_rest_and_records_what_it_left_out(tmp_path, monkeypatch):
    import backend.training

    jobs: list[dict[str, Any]] = []

    def fake_run(job_dir: Path, job: dict[str, Any], **_: Any) -> str:
        jobs.append(job)
        raise RuntimeError("stopped after the job was written")

    monkeypatch.setattr(backend.training, "run_train_job", fake_run)
    trainer = _trainer(tmp_path, [_task(1), ROTATED, _task(7), UNREACHABLE])
    with pytest.raises(RuntimeError, match="stopped after the job"):
        trainer.train_once(1)
    (job,) = jobs
    assert len(job["train"]) == 2
    # Only the tasks it trains on become meta["trained_on"]: the skipped ones stay calibration examples.
    assert job["task_ids"] == [1, 7]
    assert list(job["skipped"]) == ["2", "5"] and "rotated rectangles" in job["skipped"]["2"]


def test_a_training_with_no_usable_expert_task_fails_naming_them(tmp_path, monkeypatch):
    import backend.training

    monkeypatch.setattr(backend.training, "run_train_job", lambda *a, **k: pytest.fail("no job expected"))
    trainer = _trainer(tmp_path, [ROTATED, UNREACHABLE])
    with pytest.raises(ValueError, match=r"none of the 2 expert-annotated tasks .* task 2: annotation 202"):
        trainer.train_once(1)
    trainer.request(1)
    assert trainer.wait(60)
    status = trainer.status()
    assert status["state"] == "failed" and "task 5: image 'http://127.0.0.1:9/x.png'" in status["last_error"]
