"""End to end: ``python -m backend.ingest`` against a real Label Studio 1.23.2 (one server for the module).

The same tiny dataset (three 64 x 48 images, two labels, crowd boxes from two annotators, expert boxes on two
images) is written as COCO, YOLO and a Label Studio export; each is imported into its own project and read
back through the API: task count, crowd labels equal to the input within rounding, the crowd prediction,
ground-truth annotations for the expert labels. Then: a re-run adds nothing, a second run fills in expert
labels, and malformed input (or a project whose config lacks a label) imports nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from e2e_fixtures import LabelStudioOnly, label_studio_only
from PIL import Image

from backend.ingest.__main__ import main
from backend.labelconfig import parse_label_config
from backend.lsproject import find_project, iter_project_tasks, label_config_for
from formats.coco import CocoImage, to_coco
from formats.labelstudio import crowd_labels_to_detections, detections_to_regions, regions_to_detections
from formats.yolo import write_yolo_labels
from selection.detections import Detections

__all__ = ["label_studio_only"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e

W, H = 64, 48
NAMES = ("cat", "dog")
# image key -> (boxes xyxy px, class ids, annotators)
CROWD = {
    "a": ([[4, 4, 20, 16], [30, 10, 60, 40]], [0, 1], ["u1", "u2"]),
    "b": ([[10.5, 10, 30, 30.25]], [1], ["u2"]),
    "sub/c": ([], [], []),
}
EXPERT = {"a": ([[5, 4, 21, 17]], [0]), "sub/c": ([[1, 1, 10, 10]], [1])}
FORMATS = ("coco", "yolo", "ls")


def _dets(boxes: list[list[float]], classes: list[int]) -> Detections:
    return Detections(xyxy=np.array(boxes, np.float32).reshape(-1, 4), class_id=np.array(classes, np.int64))


def _write_dataset(root: Path) -> Path:
    """``root/lab/{images,coco,yolo,ls}``: the same labels in the three formats; returns ``root/lab``."""
    lab = root / "lab"
    for key in CROWD:
        (lab / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (60, 60, 60)).save(lab / "images" / f"{key}.png")
    # COCO: image ids 1..3; crowd annotations carry their annotator.
    (lab / "coco").mkdir()
    ids = {key: i + 1 for i, key in enumerate(CROWD)}
    for role, labels in (("crowd", CROWD), ("expert", EXPERT)):
        images = [
            CocoImage(
                id=ids[key],
                file_name=f"{key}.png",
                width=W,
                height=H,
                detections=_dets(v[0], v[1]),
                extra=tuple({"annotator": a} for a in v[2]) if role == "crowd" else None,
            )
            for key, v in labels.items()
        ]
        (lab / "coco" / f"{role}.json").write_text(json.dumps(to_coco(images, categories=NAMES)))
    # YOLO: label folders mirroring the images; class names in the parent folder's classes.txt.
    for role, labels in (("crowd", CROWD), ("expert", EXPERT)):
        for key, v in labels.items():
            write_yolo_labels(lab / "yolo" / role / f"{key}.txt", _dets(v[0], v[1]), W, H)
    (lab / "yolo" / "classes.txt").write_text("\n".join(NAMES) + "\n")
    # Label Studio export: uploaded images, one annotation per crowd annotator; the expert's as ground truth.
    (lab / "ls").mkdir()
    for role in ("crowd", "expert"):
        tasks = []
        for n, key in enumerate(CROWD):
            boxes, classes, who = CROWD[key] if role == "crowd" else (*EXPERT.get(key, ([], [])), None)
            annotations = []
            for annotator in dict.fromkeys(who) if who is not None else ([None] if key in EXPERT else []):
                keep = [i for i in range(len(classes)) if who is None or who[i] == annotator]
                result = detections_to_regions(
                    _dets([boxes[i] for i in keep], [classes[i] for i in keep]),
                    width=W,
                    height=H,
                    labels=NAMES,
                    from_name="label",
                    to_name="image",
                )
                annotations.append(
                    {
                        "id": 100 + n,
                        "completed_by": {"email": f"{annotator or 'expert'}@lab.org"},
                        "result": result,
                    }
                )
            if role == "expert" and annotations:
                annotations[0]["ground_truth"] = True
            name = Path(key).name
            tasks.append(
                {
                    "id": n + 1,
                    "data": {"image": f"/data/upload/1/0123abcd-{name}.png"},
                    "annotations": annotations,
                }
            )
        (lab / "ls" / f"{role}.json").write_text(json.dumps(tasks))
    return lab


@pytest.fixture(scope="module")
def lab(label_studio_only: LabelStudioOnly) -> Path:
    return _write_dataset(label_studio_only.document_root)


def _inputs(lab: Path, fmt: str, *, expert: bool = True) -> list[str]:
    ext = {"coco": ".json", "yolo": "", "ls": ".json"}[fmt]
    args = ["--crowd", str(lab / fmt / f"crowd{ext}"), "--crowd-format", fmt]
    return [*args, "--expert", str(lab / fmt / f"expert{ext}")] if expert else args


def _ingest(env: LabelStudioOnly, lab: Path, *args: str, progress: bool = False) -> int:
    argv = [
        "--images",
        str(lab / "images"),
        "--document-root",
        str(env.document_root),
        "--url",
        env.ls.url,
        "--api-key",
        env.ls.token,
        *args,
    ]
    return main(argv if progress else [*argv, "--no-progress"])


def _tasks(env: LabelStudioOnly, project: int) -> list[Any]:
    return list(env.client.tasks.list(project=project, fields="all"))


def _ground_truth(task: Any) -> list[dict[str, Any]]:
    return [a for a in task.annotations if a["ground_truth"]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_each_format(
    label_studio_only: LabelStudioOnly, lab: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = label_studio_only
    title = f"ingest {fmt}"
    assert _ingest(env, lab, "--title", title, *_inputs(lab, fmt), progress=fmt == "coco") == 0
    out = capsys.readouterr().out
    print(out)
    assert "tasks: 3 created (2 with an expert annotation), 0 already in the project" in out
    project = find_project(env.client, title)
    assert project is not None
    schema = parse_label_config(env.client.projects.get(id=project).label_config)
    assert set(schema.labels) == set(NAMES)
    tasks = _tasks(env, project)
    assert sorted(t.data["image_id"] for t in tasks) == sorted(CROWD)
    for task in tasks:
        key, data = task.data["image_id"], task.data
        boxes, classes, who = CROWD[key]
        assert (data["width"], data["height"]) == (W, H)
        assert data["image"] == f"/data/local-files/?d=lab/images/{key}.png"
        crowd = crowd_labels_to_detections(
            data["crowd_labels"], width=W, height=H, label_to_id=schema.label_ids
        )
        np.testing.assert_allclose(crowd.xyxy, np.array(boxes).reshape(-1, 4), atol=0.01)
        assert [schema.labels[c] for c in crowd.class_id] == [NAMES[c] for c in classes]
        if fmt != "yolo":  # YOLO files do not say who drew a box
            expected = [f"{w}@lab.org" for w in who] if fmt == "ls" else who
            assert [r.get("annotator") for r in data["crowd_labels"]] == expected
        # The crowd prediction shows the same boxes as regions.
        (prediction,) = task.predictions
        assert prediction.model_version == "crowd"
        shown = regions_to_detections(prediction.result, label_to_id=schema.label_ids)
        np.testing.assert_allclose(shown.xyxy, crowd.xyxy, atol=0.01)
        # Expert labels became a ground-truth annotation, only where an expert labelled the image.
        truth = _ground_truth(task)
        assert len(truth) == (key in EXPERT) == len(task.annotations)
        if truth:
            expert = regions_to_detections(truth[0]["result"], label_to_id=schema.label_ids)
            np.testing.assert_allclose(expert.xyxy, np.array(EXPERT[key][0]), atol=0.01)
            assert [schema.labels[c] for c in expert.class_id] == [NAMES[c] for c in EXPERT[key][1]]
    # The Local Files storage serves the images at the task URLs.
    resp = requests.get(f"{env.ls.url}{tasks[0].data['image']}", headers=env.ls.headers, timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("image/"), resp.status_code


def test_rerun_adds_no_duplicates_and_fills_expert_labels(
    label_studio_only: LabelStudioOnly, lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = label_studio_only
    title = "ingest rerun"
    assert _ingest(env, lab, "--title", title, *_inputs(lab, "coco", expert=False)) == 0
    project = find_project(env.client, title)
    assert project is not None
    first = {t.data["image_id"]: t.id for t in _tasks(env, project)}
    capsys.readouterr()
    # A dry run reads the project and says what a real run would do.
    assert _ingest(env, lab, "--title", title, *_inputs(lab, "coco"), "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"project {project} 'ingest rerun': exists" in out
    assert "tasks: 0 would be created, 3 already in the project (skipped)" in out
    assert "expert annotations on existing tasks: 2 would be added, 0 already had one (kept)" in out
    # Same command again: nothing new.
    assert _ingest(env, lab, "--project", str(project), *_inputs(lab, "coco", expert=False)) == 0
    assert "tasks: 0 created, 3 already in the project (skipped)" in capsys.readouterr().out
    # With the expert labels now: they go onto the existing tasks, once.
    for expected in ("2 added, 0 already had one", "0 added, 2 already had one"):
        assert _ingest(env, lab, "--title", title, *_inputs(lab, "coco")) == 0
        out = capsys.readouterr().out
        assert "tasks: 0 created, 3 already in the project" in out and expected in out, out
    tasks = _tasks(env, project)
    assert {t.data["image_id"]: t.id for t in tasks} == first
    assert {t.data["image_id"]: len(_ground_truth(t)) for t in tasks} == {"a": 1, "b": 0, "sub/c": 1}
    assert all(len(t.predictions) == 1 for t in tasks)
    # The importer's task listing pages through the project (here 2 tasks a page).
    listed = list(iter_project_tasks(env.client, project, page_size=2))
    assert sorted(t.id for t in listed) == sorted(first.values())
    assert {t.data["image_id"]: t.has_ground_truth for t in listed} == {"a": True, "b": False, "sub/c": True}


def test_malformed_input_imports_nothing(
    label_studio_only: LabelStudioOnly, lab: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = label_studio_only
    projects_before = len(list(env.client.projects.list()))
    # A COCO file whose last annotation has a three-number bbox; everything before it is fine.
    coco = json.loads((lab / "coco" / "crowd.json").read_text())
    coco["annotations"][-1]["bbox"] = [1, 2, 3]
    bad = tmp_path / "crowd.json"
    bad.write_text(json.dumps(coco))
    assert (
        _ingest(env, lab, "--title", "ingest malformed", "--crowd", str(bad), "--crowd-format", "coco") == 2
    )
    err = capsys.readouterr().err
    last = len(coco["annotations"]) - 1
    assert f"error: {bad}: annotations[{last}] (id {coco['annotations'][-1]['id']}): bbox" in err, err
    assert "nothing was imported" in err
    assert find_project(env.client, "ingest malformed") is None
    assert len(list(env.client.projects.list())) == projects_before
    # Into an existing project: a bad YOLO line, then labels the project's config lacks: no task appears.
    project = env.client.projects.create(title="ingest existing", label_config=label_config_for(["cat"])).id
    yolo = tmp_path / "yolo"
    (yolo / "sub").mkdir(parents=True)
    (yolo / "classes.txt").write_text("cat\ndog\n")
    (yolo / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "sub" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    assert _ingest(env, lab, "--project", str(project), "--crowd", str(yolo), "--crowd-format", "yolo") == 2
    assert f"error: {yolo / 'sub' / 'c.txt'}:2: expected 'class cx cy w h [score]'" in capsys.readouterr().err
    (yolo / "sub" / "c.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert _ingest(env, lab, "--project", str(project), "--crowd", str(yolo), "--crowd-format", "yolo") == 2
    assert "its labelling config has no label 'dog'" in capsys.readouterr().err
    assert _tasks(env, project) == []
    assert list(env.client.import_storage.local.list(project=project)) == []


def test_wrong_document_root_leaves_nothing(
    label_studio_only: LabelStudioOnly, lab: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --document-root above Label Studio's own: storage accepted, images 404; the project goes again."""
    env = label_studio_only
    projects_before = len(list(env.client.projects.list()))
    # The later --document-root wins over the one _ingest passes.
    args = [
        "--title",
        "ingest wrong root",
        *_inputs(lab, "coco"),
        "--document-root",
        str(env.document_root.parent),
    ]
    assert _ingest(env, lab, *args) == 2
    err = capsys.readouterr().err
    assert "Label Studio does not serve /data/local-files/?d=root/lab/images/a.png (HTTP 404)" in err, err
    assert find_project(env.client, "ingest wrong root") is None
    assert len(list(env.client.projects.list())) == projects_before


def test_label_studio_export_of_an_imported_project_round_trips(
    label_studio_only: LabelStudioOnly, lab: Path, tmp_path: Path
) -> None:
    """Label Studio's own JSON export of an imported project, imported again: the same tasks come back."""
    env = label_studio_only
    assert _ingest(env, lab, "--title", "ingest export source", *_inputs(lab, "coco")) == 0
    source = find_project(env.client, "ingest export source")
    assert source is not None
    export = tmp_path / "export.json"
    export.write_bytes(
        b"".join(
            env.client.projects.exports.download_sync(source, export_type="JSON", download_all_tasks=True)
        )
    )
    args = ["--crowd", str(export), "--crowd-format", "ls", "--expert", str(export)]
    assert _ingest(env, lab, "--title", "ingest export copy", *args) == 0
    copy = find_project(env.client, "ingest export copy")
    assert copy is not None
    schema = parse_label_config(env.client.projects.get(id=copy).label_config)

    def read(project: int) -> dict[str, tuple[Any, ...]]:
        out = {}
        for task in _tasks(env, project):
            crowd = crowd_labels_to_detections(
                task.data["crowd_labels"], width=W, height=H, label_to_id=schema.label_ids
            )
            truth = [
                regions_to_detections(a["result"], label_to_id=schema.label_ids) for a in _ground_truth(task)
            ]
            who = [r.get("annotator") for r in task.data["crowd_labels"]]
            out[task.data["image_id"]] = (crowd, who, truth, task.data["image"])
        return out

    original, again = read(source), read(copy)
    assert sorted(again) == sorted(original) == sorted(CROWD)
    for key, (crowd, who, truth, image) in original.items():
        crowd2, who2, truth2, image2 = again[key]
        np.testing.assert_allclose(crowd2.xyxy, crowd.xyxy, atol=0.01)
        assert crowd2.class_id.tolist() == crowd.class_id.tolist() and who2 == who and image2 == image
        assert len(truth2) == len(truth) == (key in EXPERT)
        for t, t2 in zip(truth, truth2, strict=True):
            np.testing.assert_allclose(t2.xyxy, t.xyxy, atol=0.01)
