"""Project calibration (``backend.calibrate``) and the project report (``backend.report``), in-process.

A fake detector (the ``model.detector.Detector`` interface: ``names``, ``predict``) predicts the one real
object of every image. Each task's crowd labels hold that
object and one more box the model does not see: on half the tasks a small box on background (a true crowd
error), on the other half a large real object the expert also drew (the model missed it, so the LSM's
``background`` finding is wrong). The box size separates the two, so a calibration can learn it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, data_uri

from backend.app import create_app
from backend.calibration import type_table
from backend.service import CALIBRATION_FILE
from backend.settings import Settings
from formats.labelstudio import detections_to_regions
from selection.detections import Detections

SIZE = 64
REAL = [10.0, 10.0, 30.0, 30.0]
SMALL = [40.0, 40.0, 46.0, 46.0]  # background: a true crowd error
LARGE = [34.0, 34.0, 60.0, 60.0]  # a real object the model misses: not an error


def _pct(box: list[float]) -> dict[str, Any]:
    x1, y1, x2, y2 = box
    return {
        "x": 100 * x1 / SIZE,
        "y": 100 * y1 / SIZE,
        "width": 100 * (x2 - x1) / SIZE,
        "height": 100 * (y2 - y1) / SIZE,
        "label": "deposit",
    }


def _image(tid: int) -> str:
    return data_uri(np.full((SIZE, SIZE, 3), tid, np.uint8))


def _task(tid: int, extra: list[float], *, expert: bool) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": tid,
        "data": {"image": _image(tid), "crowd_labels": [_pct(REAL), _pct(extra)]},
        "annotations": [],
    }
    if expert:
        truth = [REAL] + ([extra] if extra is LARGE else [])
        dets = Detections(np.array(truth, np.float32), np.zeros(len(truth), np.int64))
        result = detections_to_regions(
            dets, width=SIZE, height=SIZE, labels=["deposit"], from_name="label", to_name="image"
        )
        task["annotations"] = [{"id": 1000 + tid, "result": result, "completed_by": 1}]
    return task


class FakeDetector:
    """Predicts the real object of every image (score .9), never the large one."""

    names = ("deposit",)

    def predict(self, images: list[np.ndarray], *, conf: float, batch: int) -> list[Detections]:
        assert all(image.shape == (SIZE, SIZE, 3) for image in images)
        one = Detections(np.array([REAL], np.float32), np.zeros(1, np.int64), np.array([0.9]))
        return [one for _ in images]


class FakeSource:
    """A project in memory (the ``backend.training.TaskSource`` interface)."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self._tasks = tasks
        self.published: list[Any] = []

    def label_config(self, project: int | None) -> str:
        return LABEL_CONFIG

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return self._tasks

    def publish(self, scored: Any) -> None:
        self.published.extend(scored)


def _project() -> list[dict[str, Any]]:
    expert = [_task(t, SMALL if t % 2 else LARGE, expert=True) for t in range(1, 49)]
    crowd_only = [_task(t, SMALL if t % 2 else LARGE, expert=False) for t in range(101, 105)]
    crowd_only[0]["data"]["noise_grade"] = "major"
    return expert + crowd_only


@pytest.fixture
def app_for(tmp_path, monkeypatch):
    import model.detector
    from model.registry import ModelRegistry

    monkeypatch.setattr(model.detector, "load_detector", lambda mv, **_: FakeDetector())
    weights = tmp_path / "fake.pt"
    weights.write_bytes(b"not read: the detector is faked")

    def build(*trained_on: list[int], extra: list[dict[str, Any]] = ()) -> tuple[TestClient, Any]:
        """Versions trained on these task ids, oldest first; the last one serves. ``extra``: tasks added to
        the project."""
        settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu"})
        for ids in trained_on:
            ModelRegistry(settings.model_dir).publish(weights, {"family": "yolo", "trained_on": ids})
        app = create_app(settings, source=FakeSource(_project() + list(extra)))
        return TestClient(app), app

    return build


def _task_score(client: TestClient, task: dict[str, Any]) -> float:
    body = {"tasks": [task], "label_config": LABEL_CONFIG}
    return float(client.post("/predict", json=body).json()["results"][0]["score"])


def _meta_of(client: TestClient, task: dict[str, Any], region_id: str) -> str:
    body = {"tasks": [task], "label_config": LABEL_CONFIG}
    result = client.post("/predict", json=body).json()["results"][0]["result"]
    texts = [r["meta"]["text"][0] for r in result if r["id"] == region_id]
    assert texts, [r["id"] for r in result]
    return texts[0]


def test_calibration_fits_on_untrained_expert_tasks_and_predict_regrades(app_for):
    client, app = app_for(list(range(1, 9)))
    probe = _task(150, LARGE, expert=False)  # a real object the model misses, drawn by the crowd
    assert "background · major" in _meta_of(client, probe, "drop-crowd1")  # the LSM's constant grade
    raw = _task_score(client, probe)

    answer = client.post("/calibrate?project=1").json()
    assert answer["n_tasks"] == 40 and answer["n_excluded"] == 8  # tasks 1..8 were trained on
    assert answer["sources"] == {app.state.service.latest_version(): 40}
    assert answer["fitted_types"] == ["background"]
    row = {r["noise_type"]: r for r in answer["types"]}["background"]
    assert row["examples"] == 40 and row["errors"] == 20 and row["fitted"]
    assert row["precision_before"] == pytest.approx(0.5) and row["precision"] == pytest.approx(1.0)
    assert row["recall"] == pytest.approx(1.0)
    assert not {r["noise_type"]: r for r in answer["types"]}["missed"]["fitted"]
    assert row["weight"] == pytest.approx(22 / 42)  # 20 true errors of 40, two pseudo-errors

    version = app.state.service.latest_version()
    stored = Path(app.state.settings.model_dir) / "versions" / version / CALIBRATION_FILE
    assert stored.is_file()
    # The large box is kept now; a small stray box is still fixed.
    assert "background · clean · keep" in _meta_of(client, probe, "crowd1-background")
    small = _task(151, SMALL, expert=False)
    assert "background · major · drop" in _meta_of(client, small, "drop-crowd1")
    # The task's priority (the prediction's score) is now the type-weighted discrepancy: the probe's one
    # finding, a background box, counts 22/42 of its severity (sum aggregation: -log(1 - score) is linear).
    weighted = _task_score(client, probe)
    assert np.log1p(-weighted) / np.log1p(-raw) == pytest.approx(22 / 42, rel=2e-3)


def test_priority_counts_the_likely_missed_objects_once_the_version_is_calibrated(app_for):
    """The ``priority`` field (and the prediction's score) orders the tasks as the benchmark's LSM loop buys:
    the discrepancy until the version is calibrated, then ``image_priority`` by ``DEFAULT_PRIORITY``. A task
    whose crowd left out the object the model sees holds a missed finding, which the priority counts again."""
    from backend.labelconfig import parse_label_config
    from selection.calibration import DEFAULT_PRIORITY, image_priority
    from selection.lsm import score_image

    client, app = app_for(list(range(1, 9)))
    service = app.state.service
    schema = parse_label_config(LABEL_CONFIG)
    task = _task(160, SMALL, expert=False)
    task["data"]["crowd_labels"] = [_pct(SMALL)]  # the real object is missed, a stray box is drawn
    (before,) = service.score_tasks([task], schema)
    assert before.fields.priority == before.fields.discrepancy
    assert before.prediction["score"] == pytest.approx(before.fields.priority, abs=1e-4)

    assert client.post("/calibrate?project=1").status_code == 200
    (after,) = service.score_tasks([task], schema)
    version = service.latest_version()
    calibration = service.calibration(version)
    assert calibration is not None
    crowd = Detections(np.array([SMALL], np.float32), np.zeros(1, np.int64))
    pred = FakeDetector().predict([np.zeros((SIZE, SIZE, 3))], conf=0.0, batch=1)[0]
    score = score_image(crowd, pred, config=app.state.settings.lsm)
    assert "missed" in score.instances.noise_type.tolist()
    want = image_priority(
        crowd, pred, score, calibration, rule=DEFAULT_PRIORITY, config=app.state.settings.lsm
    )
    assert after.fields.priority == pytest.approx(want, abs=1e-6)
    assert after.prediction["score"] == pytest.approx(want, abs=1e-4)
    assert DEFAULT_PRIORITY == "missed"  # the rule this test is about; another default needs its own test
    assert after.fields.priority > after.fields.discrepancy
    assert after.fields.as_data()["priority"] == round(after.fields.priority, 4)


def test_a_task_the_crowd_labelled_empty_teaches_the_calibration_and_an_unlabelled_one_does_not(app_for):
    """Two more expert tasks: on one the crowd drew nothing (``crowd_labels: []``), and its one finding, the
    model's box the crowd left out, is an example of ``missed`` that the expert confirms; the other has no
    crowd labels at all (never sent to the crowd), and gives no example."""
    empty = _task(60, SMALL, expert=True)
    empty["data"]["crowd_labels"] = []
    never = _task(61, SMALL, expert=True)
    del never["data"]["crowd_labels"]
    client, _ = app_for(list(range(1, 9)), extra=[empty, never])
    answer = client.post("/calibrate?project=1").json()
    assert answer["n_tasks"] == 41  # the 40 untrained expert tasks of the project, and the empty one
    # Every other task's crowd drew the object the model sees: the one missed example is the empty task's.
    missed = {r["noise_type"]: r for r in answer["types"]}["missed"]
    assert missed["examples"] == 1 and missed["errors"] == 1


def test_calibration_says_so_when_the_version_trained_on_every_expert_task(app_for):
    client, app = app_for(list(range(1, 49)))
    answer = client.post("/calibrate?project=1").json()
    assert answer["n_tasks"] == 0 and answer["n_excluded"] == 48 and answer["calibration"] is None
    assert "did not train on" in answer["message"]
    version = app.state.service.latest_version()
    assert not (Path(app.state.settings.model_dir) / "versions" / version / CALIBRATION_FILE).exists()


UNREADABLE = "data:image/png;base64,AAAA"  # not an image: the task cannot be read (as an unreachable one)


def test_unreadable_expert_tasks_never_discard_the_stored_calibration(app_for):
    client, app = app_for(list(range(1, 9)))
    assert client.post("/calibrate?project=1").json()["fitted_types"] == ["background"]
    version = app.state.service.latest_version()
    stored = Path(app.state.settings.model_dir) / "versions" / version / CALIBRATION_FILE
    fitted = stored.read_bytes()

    tasks = app.state.calibrator.source().tasks(1)
    for task in tasks:  # e.g. the image storage is down: no expert task can be read
        task["data"]["image"] = UNREADABLE
    answer = client.post("/calibrate?project=1").json()
    assert stored.read_bytes() == fitted
    assert answer["calibration"] is None and answer["n_tasks"] == 0
    assert answer["message"].startswith(
        "nothing refitted: 40 of the 48 expert tasks could not be read (task 9: image 'data:image/png"
    )
    assert "8 trained on by every version" in answer["message"]
    assert answer["message"].endswith(f"the calibration of {version} stored before is kept")
    assert len(answer["skipped"]) == 40

    tasks.clear()  # an empty (or wrong) project
    answer = client.post("/calibrate?project=1").json()
    assert stored.read_bytes() == fitted
    assert answer["calibration"] is None and answer["skipped"] == {}
    assert answer["message"] == (
        "nothing refitted: no expert-annotated task in the project (EXPERT_MODE=all); "
        f"the calibration of {version} stored before is kept"
    )


def test_calibration_names_the_expert_tasks_it_could_not_read(app_for):
    client, app = app_for(list(range(1, 9)))
    tasks = app.state.calibrator.source().tasks(1)
    for task in tasks[8:10]:  # tasks 9 and 10: two of the 40 the serving version did not train on
        task["data"]["image"] = UNREADABLE
    answer = client.post("/calibrate?project=1").json()
    assert answer["n_tasks"] == 38 and answer["fitted_types"] == ["background"]
    assert "2 left out: could not be read (task 9: image 'data:image/png" in answer["message"]
    assert list(answer["skipped"]) == ["9", "10"] and "data:image/png" in answer["skipped"]["9"]


def test_a_stored_calibration_goes_when_the_version_trained_on_every_readable_expert_task(app_for):
    extra = [_task(t, SMALL if t % 2 else LARGE, expert=True) for t in range(60, 64)]
    client, app = app_for(list(range(1, 49)), extra=extra)
    assert client.post("/calibrate?project=1").json()["n_tasks"] == 4  # the 4 tasks added since
    version = app.state.service.latest_version()
    stored = Path(app.state.settings.model_dir) / "versions" / version / CALIBRATION_FILE
    assert stored.is_file()
    tasks = app.state.calibrator.source().tasks(1)
    del tasks[-4:]  # the experts' newest annotations are gone: nothing left to learn from
    answer = client.post("/calibrate?project=1").json()
    assert answer["calibration"] is None and "did not train on" in answer["message"]
    assert not stored.exists()


def test_calibration_takes_examples_from_the_newest_version_not_trained_on_each_task(app_for):
    client, app = app_for([], list(range(1, 9)), list(range(1, 49)))  # v3 trained on every expert task
    first, second, third = app.state.service.versions()
    answer = client.post("/calibrate?project=1").json()
    assert answer["version"] == third and answer["n_excluded"] == 0
    assert answer["sources"] == {first: 8, second: 40}
    assert answer["fitted_types"] == ["background"]
    assert (Path(app.state.settings.model_dir) / "versions" / third / CALIBRATION_FILE).is_file()
    older = client.post(f"/calibrate?project=1&version={first}")
    assert older.status_code == 200 and older.json()["sources"] == {first: 48}
    unknown = client.post("/calibrate?project=1&version=v9999-20260101T000000")
    assert unknown.status_code == 404 and "v9999" in unknown.json()["detail"]


def test_report_json_and_html(app_for):
    client, _ = app_for(list(range(1, 9)))
    before = client.get("/report?project=1").json()
    assert before["calibration"] is None
    assert set(before["errors_remaining"]["basis"].values()) == {"severity"}
    client.post("/calibrate?project=1")
    report = client.get("/report?project=1").json()
    assert report["expert_tasks"] == {"done": 48, "total": 52}
    assert report["tasks_by_grade"]["major"] == 1 and report["tasks_by_grade"]["unscored"] == 3
    errors = report["errors_remaining"]
    assert errors["tasks"] == 4 and errors["basis"] == {"background": "calibrated"}
    # Two small stray boxes (p ~ 1) and two large real ones (p ~ 0) remain.
    assert errors["expected"] == pytest.approx(2.0, abs=0.3)
    (version,) = report["versions"]
    assert version["trained_on"] == 8 and version["tasks"] == 40 and version["calibrated"]
    assert 0.4 < version["ap50"] < 1.0  # finds every real object, misses the large ones
    assert report["calibration"]["types"][0]["noise_type"] == "background"

    page = client.get("/report?project=1&format=html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("data:image/png;base64,") == 3 and "Estimated label errors remaining" in page.text
    assert client.get("/report?project=1&format=pdf").status_code == 400


def test_type_table_without_examples():
    rows = type_table({}, {})
    assert [r["noise_type"] for r in rows] == ["background", "localization", "box_in_box", "missed"]
    assert all(r["examples"] == 0 and r["precision"] is None and not r["fitted"] for r in rows)


def test_report_and_calibrate_before_any_version(app_for):
    client, _ = app_for()  # nothing published
    report = client.get("/report?project=1").json()
    assert report["serving_version"] is None and report["errors_remaining"] is None
    assert report["versions"] == [] and report["expert_tasks"] == {"done": 48, "total": 52}
    assert "data:image/png;base64," in client.get("/report?project=1&format=html").text
    assert client.post("/calibrate?project=1").status_code == 503


def test_format_table_shows_each_types_weight_in_the_discrepancy():
    from backend.calibrate import format_table

    target = np.array([True] * 3 + [False] * 7)
    stats = {"background": {"target": target, "before": np.ones(10, bool), "after": target}}
    rows = type_table({"background": {"fitted": False, "reason": "10 examples, fewer than 20"}}, stats)
    text = format_table(rows)
    head, background, localization = text.splitlines()[:3]
    assert head.split()[-2:] == ["weight", "fitted"]
    assert "0.42" in background.split()  # (3 + 2) / (10 + 2)
    assert localization.split()[:3] == ["localization", "0", "0"] and "1.00" in localization.split()


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    """``python -m backend.calibrate``'s environment: a tasks file (no Label Studio) and an empty registry."""
    import model.detector

    monkeypatch.setattr(model.detector, "load_detector", lambda mv, **_: FakeDetector())
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps({"label_config": LABEL_CONFIG, "tasks": _project()}))
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_WEIGHTS", "REDIS_URL", "BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TASKS_FILE", str(tasks_file))
    monkeypatch.setenv("DEVICE", "cpu")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "publish", "error"),
    [
        ([], False, "error: no model version published yet"),
        (["--version", "v9999-20260101T000000"], True, "error: version: no complete model version 'v9999"),
        (["--version", "v9999-20260101T000000"], False, "error: version: no complete model version 'v9999"),
    ],
)
def test_calibrate_command_bad_input_is_one_error_line_and_status_2(cli_env, capsys, argv, publish, error):
    """As ``POST /calibrate`` answers 404 (unknown version) or 503 (no model), the command says so in one
    line on stderr and exits 2 (bad input, as the other backend commands), without a traceback."""
    from backend.calibrate import main
    from model.registry import ModelRegistry

    if publish:
        weights = cli_env / "fake.pt"
        weights.write_bytes(b"not read: the detector is faked")
        ModelRegistry(cli_env / "models").publish(weights, {"family": "yolo", "trained_on": []})
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(error) and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_calibrate_command_fits_from_a_tasks_file(cli_env, capsys):
    from backend.calibrate import main
    from model.registry import ModelRegistry

    weights = cli_env / "fake.pt"
    weights.write_bytes(b"not read: the detector is faked")
    version = ModelRegistry(cli_env / "models").publish(weights, {"family": "yolo", "trained_on": []}).version
    assert main(["--json", "--version", version]) == 0
    assert json.loads(capsys.readouterr().out)["fitted_types"] == ["background"]
