"""bench.workbench: a cached training is reused only while its start and its test split are unchanged.

The cache key names a warm start by its path and leaves the test split out (earlier runs' keys must stay
valid); each record carries the start file's sha256 and the test split's fingerprint, checked on a hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_detections

from bench.workbench import TRAIN_SPECS, Workbench
from model.detector import TrainResult, register_family
from selection.detections import Detections


class _Nothing:
    """A loaded fake detector: finds nothing (AP 0 on any test split with boxes)."""

    def __init__(self) -> None:
        self.names = ["deposit"]
        self.version = ""

    def predict(self, images, *, conf=0.0, batch=16):
        return [Detections.empty(with_score=True) for _ in images]


class _Family:
    """Trains in no time: the weights file is a digest of the file it started from and of its labels, so a
    model retrained on other labels rewrites its file with other bytes. ``trained`` lists each training."""

    name = "cachefake"
    default_init = "scratch"

    def __init__(self) -> None:
        self.trained: list[str] = []

    def check_init(self, init):
        pass

    def load(self, weights, *, device="auto", version="", max_det=300):
        return _Nothing()

    def train(self, *, train, out_dir, init=None, epochs, **_):
        out_dir.mkdir(parents=True, exist_ok=True)
        start = Path(init).read_bytes() if init is not None and Path(init).is_file() else b""
        labels = repr([image.labels.xyxy.tolist() for image in train]).encode()
        weights = out_dir / "w.pt"
        weights.write_bytes(hashlib.sha256(start + labels).digest())
        self.trained.append(out_dir.name)
        return TrainResult(weights=weights, seconds=0.0, epochs=epochs)


@pytest.fixture
def family():
    import model.detector as detector_module

    fake = _Family()
    register_family("cachefake", lambda: fake)
    yield fake
    detector_module._FACTORIES.pop("cachefake", None)
    detector_module._CACHE.pop("cachefake", None)


def _records(test_box: float = 10.0) -> list[SimpleNamespace]:
    def record(i: str, split: str, x: float) -> SimpleNamespace:
        expert = make_detections([[x, x, x + 20, x + 20]])
        crowd = make_detections([[x + 3, x, x + 23, x + 20]])
        return SimpleNamespace(
            id=i, split=split, path=f"/nowhere/{i}.png", width=64, height=64, expert=expert, crowd=crowd
        )

    train = [record(str(i), "train", 5.0 + i) for i in range(3)]
    return [*train, record("v", "val", 8.0), record("t", "test", test_box)]


def _bench(tmp_path: Path, records: list[SimpleNamespace]) -> Workbench:
    return Workbench(records, tmp_path, replace(TRAIN_SPECS["tiny"], family="cachefake"), seed=0)


def test_a_downstream_training_follows_its_retrained_upstream_and_the_test_split(family, tmp_path, caplog):
    records = _records()
    bench = _bench(tmp_path, records)
    crowd = {r.id: r.crowd for r in records if r.split == "train"}
    bought = {"0": records[0].expert}
    up = bench.train("noisy", crowd)
    bench.train("finetune", bought, init=up.weights)
    bench.train("finetune", bought, init=up.weights)  # nothing changed: reused
    assert family.trained == ["noisy", "finetune"]

    # Another noise mix under the same --out: the upstream's labels differ, its folder and weights path not.
    other = {i: make_detections(d.xyxy + 2) for i, d in crowd.items()}
    again = bench.train("noisy", other)
    assert again.weights == up.weights and family.trained[-1] == "noisy"
    with caplog.at_level(logging.INFO, logger="bench.workbench"):
        bench.train("finetune", bought, init=again.weights)  # same labels and key, but started elsewhere
    assert family.trained[-1] == "finetune" and len(family.trained) == 4
    assert "the weights it started from have changed since" in caplog.text

    # The same trainings scored on another test split: the cached AP50 is not that split's.
    caplog.clear()
    moved = _bench(tmp_path, _records(test_box=30.0))
    with caplog.at_level(logging.INFO, logger="bench.workbench"):
        moved.train("finetune", bought, init=again.weights)
    assert len(family.trained) == 5 and "the test split it was scored on has changed since" in caplog.text
    moved.train("finetune", bought, init=again.weights)
    assert len(family.trained) == 5  # and then reused


def test_a_record_from_before_the_checks_is_reused_on_its_key(family, tmp_path):
    records = _records()
    bench = _bench(tmp_path, records)
    crowd = {r.id: r.crowd for r in records if r.split == "train"}
    bought = {"0": records[0].expert}
    up = bench.train("noisy", crowd)
    down = bench.train("finetune", bought, init=up.weights)
    record = tmp_path / "finetune" / "result.json"
    stored = json.loads(record.read_text())
    assert stored["init_sha256"] == hashlib.sha256(up.weights.read_bytes()).hexdigest()
    assert stored["evaluated_on"] == bench.evaluated_on
    # What the code before the checks wrote: the key, no init_sha256, no evaluated_on.
    record.write_text(
        json.dumps({k: v for k, v in stored.items() if k not in ("init_sha256", "evaluated_on")})
    )
    bench.train("noisy", {i: make_detections(d.xyxy + 2) for i, d in crowd.items()})  # rewrites the start
    trained = len(family.trained)
    reused = bench.train("finetune", bought, init=up.weights)
    assert len(family.trained) == trained and reused.weights == down.weights and reused.ap50 == down.ap50
