"""``python -m backend.export --train-final``: the full method's last step, a real (tiny) YOLO training on the
exported labels, warm-started from the serving version, published to the export's own registry."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from test_bootstrap import SCHEMA, FakeSource, _settings, _tasks

from backend.bootstrap.__main__ import run_bootstrap
from backend.export import FINAL_SOURCE, ExportFormat, main, run_export
from formats.labelstudio import crowd_labels_to_detections, detections_to_regions
from model.registry import ModelRegistry

pytestmark = pytest.mark.slow


def _with_expert(tasks: list[dict[str, Any]], ids: set[int], size: int = 64) -> list[dict[str, Any]]:
    """The tasks, where ``ids`` got an expert annotation: the crowd's boxes, the first one dropped."""
    out = []
    for task in tasks:
        task = json.loads(json.dumps(task))
        if task["id"] in ids:
            crowd = crowd_labels_to_detections(
                task["data"]["crowd_labels"], width=size, height=size, label_to_id=SCHEMA.label_ids
            )
            expert = crowd.subset(np.arange(len(crowd)) > 0)
            regions = detections_to_regions(
                expert, width=size, height=size, labels=SCHEMA.labels, from_name="label", to_name="image"
            )
            task["annotations"] = [{"id": 900 + task["id"], "completed_by": 1, "result": regions}]
        out.append(task)
    return out


def test_train_final_trains_on_the_export_from_the_serving_version(tmp_path, capsys, monkeypatch):
    settings = _settings(tmp_path)
    run_bootstrap(settings, project=5, source=FakeSource(_tasks(6)), progress=False)
    registry = ModelRegistry(settings.model_dir)
    serving = registry.latest()
    assert serving is not None
    tasks = _with_expert(_tasks(6), {1, 2})
    out = tmp_path / "export"
    manifest = run_export(
        settings,
        project=5,
        fmt=ExportFormat.YOLO,
        out=out,
        source=FakeSource(tasks),
        progress=False,
        final=True,
    )
    final = manifest["final_model"]
    assert final["init"] == str(serving.weights)
    assert final["n_train"] == 6 and final["n_val"] == 2 and not final["val_held_out"]
    assert (out / final["weights"]).is_file()
    published = ModelRegistry(out / "model").get(final["version"])
    assert published.meta["source"] == FINAL_SOURCE and published.meta["names"] == ["Deposit"]
    assert published.meta["n_train"] == 6 and published.meta["project"] == 5
    # The serving registry is untouched: the final detector never scores the tasks it was trained on.
    assert [v.version for v in registry.versions()] == [serving.version]
    assert json.loads((out / "manifest.json").read_text())["final_model"] == final
    # The job trained on what the export wrote: on task 1, the expert's boxes (the first crowd box dropped).
    job = json.loads(next(settings.scratch_dir.glob("final-*/job.json")).read_text())
    (first,) = [t for t in job["train"] if t["path"] == str(out / "images" / "task1.png")]
    crowd_1 = crowd_labels_to_detections(
        tasks[0]["data"]["crowd_labels"], width=64, height=64, label_to_id=SCHEMA.label_ids
    )
    assert len(crowd_1) >= 2 and len(first["xyxy"]) == len(crowd_1) - 1
    # The very boxes the expert kept (every crowd box but the first), not merely as many (rows sorted: the
    # YOLO label file's order is the export's).
    got = np.asarray(first["xyxy"], np.float64).reshape(-1, 4)
    want = crowd_1.xyxy[1:].astype(np.float64)
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])], atol=0.05)


def test_train_final_command_line(tmp_path, capsys, monkeypatch):
    settings = _settings(tmp_path)
    run_bootstrap(settings, project=5, source=FakeSource(_tasks(4)), progress=False)
    tasks = _with_expert(_tasks(4), {1})
    monkeypatch.setattr("backend.training.LabelStudioSource", lambda s: FakeSource(tasks))
    env = {
        "MODEL_DIR": str(settings.model_dir),
        "LABEL_STUDIO_URL": "http://127.0.0.1:9",
        "LABEL_STUDIO_API_KEY": "unused",
        "DEVICE": "cpu",
        "TRAIN_EPOCHS": "1",
        "TRAIN_IMGSZ": "64",
        "TRAIN_BATCH": "4",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "cli"
    assert (
        main(["--project", "5", "--format", "coco", "--out", str(out), "--train-final", "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    assert "final detector v" in printed and str(out / "model" / "versions") in printed
    assert "on 1 images it also trained on" in printed

    # metrics.ap scores both detectors on a labelled image set: here the export itself.
    from metrics.ap import main as ap_main

    final = json.loads((out / "manifest.json").read_text())["final_model"]
    serving = ModelRegistry(settings.model_dir).latest()
    assert serving is not None
    code = ap_main(
        [
            "--truth",
            str(out / "annotations.json"),
            "--images",
            str(out / "images"),
            str(out / final["weights"]),
            str(serving.weights),
        ]
    )
    assert code == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("truth: ") and "on 4 images (Deposit)" in rows[0]
    assert [r.split()[0] for r in rows[2:]] == [final["version"], serving.version]
    assert all(0.0 <= float(v) <= 1.0 for r in rows[2:] for v in r.split()[1:])
    bad = ap_main(["--truth", str(out / "annotations.json"), "--images", str(tmp_path), str(serving.weights)])
    assert bad == 2 and "4 images not found under" in capsys.readouterr().err
