"""``bench.simulate --data``: a lab's own COCO files, checked at start with errors naming file and entry;
the command's own options refused at start; several classes evaluated; crowd annotators fused."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import make_detections
from PIL import Image

from bench.simulate import main as simulate_main
from bench.userdata import load_user_dataset
from bench.workbench import TRAIN_SPECS, Workbench
from metrics.ap import evaluate_ap
from selection.consensus import merge_annotators
from selection.detections import Detections

WIDTH, HEIGHT = 128, 96
CATEGORIES = [{"id": 1, "name": "deposit"}, {"id": 2, "name": "other"}]


def _dataset(n: int = 20, n_train: int = 14, n_val: int = 2) -> tuple[dict[str, Any], dict[str, Any]]:
    """(expert, crowd) COCO dicts over ``n`` images: two expert boxes each (one per class), the crowd's
    first box shifted, its second one of the other class, plus a background box on every third image."""
    images, expert, crowd = [], [], []
    for k in range(n):
        split = "train" if k < n_train else "val" if k < n_train + n_val else "test"
        images.append(
            {"id": k + 1, "file_name": f"img/{k}.png", "width": WIDTH, "height": HEIGHT, "split": split}
        )
        x = 4 + 3 * k
        expert += [
            {"id": 2 * k + 1, "image_id": k + 1, "category_id": 1, "bbox": [x, 10, 20, 20]},
            {"id": 2 * k + 2, "image_id": k + 1, "category_id": 2, "bbox": [60, 50, 30, 30]},
        ]
        crowd += [
            {"id": len(crowd) + 1, "image_id": k + 1, "category_id": 1, "bbox": [x + k % 4, 10, 20, 20]},
            {"id": len(crowd) + 2, "image_id": k + 1, "category_id": 1, "bbox": [60, 50, 30, 30]},
        ]
        if k % 3 == 0:
            crowd.append({"id": len(crowd) + 1, "image_id": k + 1, "category_id": 1, "bbox": [5, 60, 15, 15]})
    crowd_images = [{key: v for key, v in im.items() if key != "split"} for im in images]
    return (
        {"images": images, "annotations": expert, "categories": copy.deepcopy(CATEGORIES)},
        {"images": crowd_images, "annotations": crowd, "categories": copy.deepcopy(CATEGORIES)},
    )


def _write(root: Path, expert: dict[str, Any], crowd: dict[str, Any]) -> Path:
    """The dataset folder: real PNGs (``WIDTH`` x ``HEIGHT``) for every file named, and the two JSON files."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for data in (expert, crowd):
        for im in data["images"]:
            file_name = im.get("file_name") if isinstance(im, dict) else None
            if isinstance(file_name, str) and not (root / file_name).exists():
                Image.new("RGB", (WIDTH, HEIGHT), (90, 90, 90)).save(root / file_name)
    (root / "expert.json").write_text(json.dumps(expert))
    (root / "crowd.json").write_text(json.dumps(crowd))
    return root


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return _write(tmp_path / "data", *_dataset())


# ------------------------------------------------------------------------------------------ the loader


def test_loader_reads_sizes_from_the_files_and_clips_boxes_past_the_image(tmp_path):
    expert, crowd = _dataset()
    for im in expert["images"][:2]:  # optional: read from the file
        del im["width"], im["height"]
    crowd["annotations"][0]["bbox"] = [120, 90, 20, 20]  # reaches past the 128 x 96 image
    records, names = load_user_dataset(_write(tmp_path / "d", expert, crowd), seed=0)
    assert names == ["deposit", "other"]
    assert (records[0].width, records[0].height) == (WIDTH, HEIGHT)
    assert records[0].crowd.xyxy[0].tolist() == [120, 90, WIDTH, HEIGHT]
    assert [r.split for r in records].count("train") == 14


def _set(path: str, value: Any):
    """A mutation of the (expert, crowd) pair: ``"crowd/annotations/0/bbox"`` set to ``value``."""

    def apply(pair: dict[str, dict[str, Any]]) -> None:
        keys = path.split("/")
        node: Any = pair
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


_DELETE = object()


def _append(path: str, value: Any):
    def apply(pair: dict[str, dict[str, Any]]) -> None:
        file, key = path.split("/")
        pair[file][key].append(copy.deepcopy(value))

    return apply


# (mutation, file named, entry named, what the message says)
BAD_INPUT = [
    (_set("crowd/annotations/0/bbox", _DELETE), "crowd", "annotations[0] (id 1)", "bbox: expected"),
    (_set("expert/images/0/id", _DELETE), "expert", "images[0]", "integer 'id'"),
    (_set("expert/images/0/id", "1"), "expert", "images[0]", "integer 'id'"),
    (_set("expert/images/0/file_name", _DELETE), "expert", "images[0] (id 1)", "'file_name' string"),
    (
        _set("crowd/annotations/0/image_id", 1.0),
        "crowd",
        "annotations[0] (id 1)",
        "image_id 1.0 is not among",
    ),
    (_set("crowd/annotations/0/image_id", 99), "crowd", "annotations[0] (id 1)", "image_id 99 is not among"),
    (_set("expert/annotations/1/bbox", [0, 0, -5, 5]), "expert", "annotations[1] (id 2)", "empty box"),
    (_set("expert/annotations/1/bbox", [float("nan"), 0, 5, 5]), "expert", "annotations[1] (id 2)", "finite"),
    (_set("crowd/annotations/1/category_id", 3), "crowd", "annotations[1] (id 2)", "category_id 3 is not"),
    (_set("crowd/annotations/1/category_id", 0), "crowd", "annotations[1] (id 2)", "category_id 0 is not"),
    (_set("crowd/annotations/1/bbox", [200, 10, 5, 5]), "crowd", "annotations[1] (id 2)", "lies outside"),
    (_set("crowd/annotations/1/iscrowd", 1), "crowd", "annotations[1] (id 2)", "iscrowd 1"),
    (_set("expert/images/1/id", 1), "expert", "images[1] (id 1)", "image id 1 is listed twice"),
    (_set("expert/images/1/file_name", "img/0.png"), "expert", "images[1] (id 2)", "same image as images[0]"),
    (_set("crowd/images/1/file_name", "img/0.png"), "crowd", "images[1] (id 2)", "same image as images[0]"),
    (_set("expert/images/0/width", 130), "expert", "images[0] (id 1)", "width 130 but the image"),
    (_set("crowd/images/0/split", "test"), "crowd", "images[0] (id 1)", "read from expert.json only"),
    (_set("expert/categories/0/id", "1"), "expert", "categories[0]", "'id': int"),
    (_set("crowd/images", {}), "crowd", "images", "expected a list"),
    (
        _append("crowd/images", {"id": 99, "file_name": "img/extra.png"}),
        "crowd",
        "images[20] (id 99)",
        "not in expert.json",
    ),
]


@pytest.mark.parametrize(("mutate", "file", "entry", "message"), BAD_INPUT)
def test_loader_errors_name_the_file_and_the_entry(tmp_path, mutate, file, entry, message):
    expert, crowd = _dataset()
    pair = {"expert": expert, "crowd": crowd}
    mutate(pair)
    root = _write(tmp_path / "d", pair["expert"], pair["crowd"])
    with pytest.raises(ValueError) as exc:
        load_user_dataset(root, seed=0)
    text = str(exc.value)
    assert text.startswith(f"{root / f'{file}.json'}: {entry}"), text
    assert message in text, text


def test_loader_refuses_an_image_file_that_does_not_decode(tmp_path):
    root = _write(tmp_path / "d", *_dataset())
    (root / "img" / "3.png").write_bytes(b"png")
    with pytest.raises(ValueError, match=r"expert\.json: images\[3\] \(id 4\): .*not a readable image"):
        load_user_dataset(root, seed=0)


def test_crowd_boxes_are_fused_per_annotator_when_every_box_names_one(tmp_path):
    """Three annotators boxing one object give one crowd box, as the backend fuses them; an image with a box
    of nobody's keeps its boxes as they are."""
    expert, crowd = _dataset()
    expert["annotations"][0]["bbox"] = [11, 10, 20, 20]
    one = [[10, 10, 20, 20], [12, 10, 20, 20], [11, 11, 20, 20]]  # image 1: three annotators, one object
    two = [[10, 10, 20, 20], [12, 10, 20, 20]]  # image 2: the second box names nobody
    crowd["annotations"] = [
        *(
            {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box, "annotator": f"user{k}"}
            for k, box in enumerate(one)
        ),
        {"id": 10, "image_id": 1, "category_id": 2, "bbox": [60, 50, 30, 30], "annotator": "user0"},
        {"id": 11, "image_id": 2, "category_id": 1, "bbox": two[0], "annotator": "user0"},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": two[1]},
    ]
    records, _ = load_user_dataset(_write(tmp_path / "d", expert, crowd), seed=0)
    first, second = records[0], records[1]
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in one]
    want, votes = merge_annotators(
        [
            make_detections([xyxy[0], [60, 50, 90, 80]], classes=[0, 1]),
            make_detections([xyxy[1]]),
            make_detections([xyxy[2]]),
        ]
    )
    assert votes.tolist() == [3, 1]
    assert first.crowd.xyxy.tolist() == want.xyxy.tolist()
    assert first.crowd.class_id.tolist() == [0, 1] and first.crowd.score is None
    assert first.crowd_noise.tolist() == ["clean", "clean"]  # one box for the object, no duplicate
    assert len(second.crowd) == 2  # not every box named: as they are


# ------------------------------------------------------------------------------------ the workbench


def test_test_ap_evaluates_every_class(tmp_path):
    """Two classes: AP over both (class id 1 is no error); one class: the AP as before."""
    expert = make_detections([[0, 0, 10, 10], [20, 20, 40, 40]], classes=[0, 1])
    pred = make_detections([[0, 0, 10, 10], [20, 20, 40, 40]], classes=[0, 1], scores=[0.9, 0.8])
    records = [SimpleNamespace(id="1", split="test", path="1.png", width=64, height=64, expert=expert)]
    bench = Workbench(records, tmp_path, TRAIN_SPECS["tiny"], seed=0, names=["deposit", "other"])
    bench.predict = lambda weights, ids, conf=0.0: {"1": pred}  # type: ignore[method-assign]
    assert bench.test_ap(Path("w.pt")).ap50 == pytest.approx(1.0)

    one = make_detections([[0, 0, 10, 10], [20, 20, 40, 40]])
    scored = make_detections([[0, 0, 10, 10], [30, 30, 40, 40]], scores=[0.9, 0.8])
    records = [SimpleNamespace(id="1", split="test", path="1.png", width=64, height=64, expert=one)]
    bench = Workbench(records, tmp_path, TRAIN_SPECS["tiny"], seed=0)
    bench.predict = lambda weights, ids, conf=0.0: {"1": scored}  # type: ignore[method-assign]
    assert bench.test_ap(Path("w.pt")) == evaluate_ap([one], [scored])


# ------------------------------------------------------------------------------------------- the CLI


def _refused(capsys, tmp_path, args: list[str]) -> str:
    """Runs the CLI expecting exit 2 with nothing written, and nothing run; returns stderr."""
    import bench.simulate as sim

    def ran(*args, **kwargs):
        raise AssertionError("not refused at start: the seeds ran")

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exc:
        patch.setattr(sim, "_run_seeds", ran)  # a check that failed must not cost a training
        simulate_main([*args, "--out", str(out)])
    assert exc.value.code == 2
    assert not out.exists()
    return capsys.readouterr().err


def test_cli_refuses_bad_data_at_start_naming_file_and_entry(tmp_path, capsys):
    expert, crowd = _dataset()
    crowd["annotations"][2]["category_id"] = 7
    root = _write(tmp_path / "d", expert, crowd)
    err = _refused(capsys, tmp_path, ["--data", str(root), "--jobs", "2"])
    line = next(x for x in err.splitlines() if "error:" in x)
    assert f"error: --data: {root / 'crowd.json'}: annotations[2] (id 3): category_id 7" in line
    (root / "crowd.json").unlink()
    assert "crowd.json: missing" in _refused(capsys, tmp_path, ["--data", str(root)])
    (root / "crowd.json").write_text("{not json")
    assert "crowd.json: not valid JSON" in _refused(capsys, tmp_path, ["--data", str(root)])


def test_cli_refuses_a_budget_that_leaves_nothing_to_clean(tmp_path, capsys):
    assert "leaving none to score and clean" in _refused(capsys, tmp_path, ["--budget", "1"])
    root = _write(tmp_path / "d", *_dataset(n=6, n_train=1, n_val=2))
    err = _refused(capsys, tmp_path, ["--data", str(root)])
    assert "every one of the 1 training images of --data" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "--epochs: expected at least 1, got 0"),
        (["--epochs", "-3"], "--epochs: expected at least 1, got -3"),
        (["--rounds", "-2"], "rounds: expected >= 0, got -2"),
        (["--imgsz", "100"], "--imgsz: expected a multiple of 32"),
        (["--imgsz", "0"], "--imgsz: expected a multiple of 32"),
        (["--preset", "large", "--imgsz", "160"], "320 px tiles"),
        (["--fiftyone", "/nonexistent/python"], "--fiftyone: /nonexistent/python is not an executable"),
        (["--device", "mps"], "--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'"),
    ],
)
def test_cli_refuses_out_of_range_options_at_start(tmp_path, capsys, args, message):
    assert message in _refused(capsys, tmp_path, args)


def test_cli_refuses_a_fiftyone_file_that_is_not_executable(tmp_path, capsys):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\n")
    assert "is not an executable" in _refused(capsys, tmp_path, ["--fiftyone", str(python)])


def test_cli_refuses_cuda_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "--device: 'cuda' asks for CUDA" in _refused(capsys, tmp_path, ["--device", "cuda"])


class _StopError(Exception):
    pass


def test_imgsz_overrides_only_the_size_and_data_runs_say_the_size(tmp_path, capsys, monkeypatch, data_dir):
    import bench.simulate as sim

    specs = []

    def capture(args, seed_list, *, spec, lsm, settings):
        specs.append(spec)
        raise _StopError

    monkeypatch.setattr(sim, "_run_seeds", capture)
    for args in ([], ["--imgsz", "64"]):
        with pytest.raises(_StopError):
            simulate_main(["--device", "cpu", "--data", str(data_dir), *args, "--out", str(tmp_path / "o")])
    assert specs[0] == replace(TRAIN_SPECS["quick"], device="cpu")  # without --imgsz: the preset's spec
    assert specs[1] == replace(specs[0], imgsz=64)
    printed = capsys.readouterr().out.splitlines()
    assert (
        f"--data {data_dir}: 20 images (14 train, 2 val, 4 test), classes ['deposit', 'other']" in printed[0]
    )
    assert printed[0].endswith("at 160 px (preset quick; --imgsz N to change it)")
    assert printed[1].endswith("at 64 px (--imgsz)")


def test_a_data_run_with_two_classes_and_imgsz_runs_every_arm(tmp_path, monkeypatch, data_dir):
    """The whole CLI on a two-class dataset (fake detector); ``imgsz`` lands in the meta only when given."""
    from bench_fakes import FakeWorkbench

    import bench.simulate as sim

    monkeypatch.setattr(sim, "Workbench", FakeWorkbench)
    monkeypatch.setattr(sim, "write_plots", lambda *a: None)
    out = tmp_path / "out"
    assert (
        sim.main(
            ["--device", "cpu", "--data", str(data_dir), "--seeds", "1", "--imgsz", "64", "--out", str(out)]
        )
        == 0
    )
    assert (
        sim.main(["--device", "cpu", "--data", str(data_dir), "--seeds", "1", "--out", str(tmp_path / "b")])
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"][0]["arms"]) == set(sim.ARMS) and results["runs"][0]["n_train"] == 14
    given = results["meta"]
    plain = json.loads((tmp_path / "b" / "results.json").read_text())["meta"]
    assert given["imgsz"] == 64 and given["train_spec"]["imgsz"] == 64
    assert "imgsz" not in plain and plain["train_spec"]["imgsz"] == 160
    assert os.path.exists(out / "results.md")


def test_cleanlab_peer_gets_the_predictions_of_every_class(monkeypatch):
    # ObjectLab takes per image one array of predictions per class; handed over as one class (as before),
    # the predictions of class 1 were read as class 0 and the swap subscore was switched off.
    import cleanlab.object_detection.rank as rank

    from bench.noise_quality import cleanlab_scores

    seen: dict[str, Any] = {}

    def fake(labels, predictions, aggregation_weights=None, verbose=True):
        seen.update(predictions=predictions, weights=aggregation_weights)
        return np.ones(len(labels))

    monkeypatch.setattr(rank, "get_label_quality_scores", fake)
    xyxy = np.array([[10, 10, 40, 40], [50, 50, 70, 70]], np.float32)
    pred = Detections(xyxy, np.array([1, 0]), np.array([0.9, 0.6], np.float32))
    crowd = Detections(xyxy[:1], np.array([0]))
    cleanlab_scores([crowd], [pred], num_classes=2)
    per_class = seen["predictions"][0]
    assert [a.tolist() for a in per_class] == [
        [[50, 50, 70, 70, 0.6000000238418579]],
        [[10, 10, 40, 40, 0.8999999761581421]],
    ]
    assert seen["weights"] is None  # ObjectLab's own weights, swap included
    cleanlab_scores([crowd], [Detections(xyxy, np.array([0, 0]), np.array([0.9, 0.6], np.float32))])
    assert len(seen["predictions"][0]) == 1 and len(seen["predictions"][0][0]) == 2  # one class: as before
    assert seen["weights"] == {"overlooked": 0.5, "badloc": 0.5, "swap": 0.0}
