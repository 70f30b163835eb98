"""The simulator: determinism, crowd-noise bookkeeping and calibration, writers, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from formats.coco import from_coco
from formats.labelstudio import crowd_labels_to_detections
from formats.yolo import read_yolo_labels
from selection.boxes import box_ioa, box_iou
from synth import NoiseConfig, SceneConfig, SimConfig, SynthDataset, generate, get_preset
from synth.__main__ import main as synth_main
from synth.contact_sheet import render_contact_sheet
from synth.noise import capped_rates
from synth.writers import LABEL_CONFIG_XML

REPO = Path(__file__).resolve().parents[1]
RATES_CONFIG = SimConfig(name="rates", image_size=96, n_train=300, n_val=0, n_test=0)


@pytest.fixture(scope="module")
def big() -> SynthDataset:
    """300 labelled images at 96 px, not rendered (labels only)."""
    return generate(RATES_CONFIG, 7, render=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "ds"
    generate("tiny", 0).write(out)
    return out


def _label_files(root: Path) -> dict[str, bytes]:
    files = sorted([*root.glob("yolo/*/labels/*/*.txt"), *root.glob("coco/*.json"), root / "manifest.json"])
    files.append(root / "label_studio" / "tasks.json")
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_same_seed_same_bytes_different_seed_differs(tmp_path, tiny_dir):
    again = generate("tiny", 0).write(tmp_path / "ds", contact_sheet=False)
    a, b = _label_files(tiny_dir), _label_files(again.root)
    assert a.keys() == b.keys() and len(a) > 40
    # tasks.json holds the folder name relative to the document root: both folders are called "ds".
    assert a == b
    pixels = [(tiny_dir / "images/train/000003.png").read_bytes(), (tmp_path / "ds/images/train/000003.png")]
    assert pixels[0] == pixels[1].read_bytes()
    other = generate("tiny", 1, render=False)
    assert json.dumps(other.manifest()) != json.dumps(generate("tiny", 0, render=False).manifest())


def test_labels_do_not_depend_on_rendering():
    drawn, undrawn = generate("tiny", 3, render=True), generate("tiny", 3, render=False)
    assert drawn.manifest() == undrawn.manifest()
    record = undrawn.images[5]
    np.testing.assert_array_equal(undrawn.pixels(record), drawn.images[5].pixels)


def test_images_are_square_grayscale_and_tem_like():
    ds = generate("tiny", 0)
    img = ds.images[0].pixels
    assert img.shape == (128, 128) and img.dtype == np.uint8
    assert 60 < img.mean() < 200 and img.std() > 10
    # Deposits are darker than their surroundings.
    record = next(r for r in ds.images if len(r.expert))
    x1, y1, x2, y2 = record.expert.xyxy[0].astype(int)
    assert record.pixels[y1 : y2 + 1, x1 : x2 + 1].min() < np.median(record.pixels)


def test_preset_sizes():
    tiny, quick, paper = get_preset("tiny"), get_preset("quick"), get_preset("paper")
    assert (tiny.n_train, tiny.n_val, tiny.n_test, tiny.image_size) == (16, 4, 4, 128)
    assert (quick.n_train, quick.n_val, quick.n_test, quick.image_size) == (240, 40, 80, 160)
    assert (paper.n_train, paper.n_val, paper.n_test, paper.image_size) == (1200, 200, 300, 320)
    ds = generate("tiny", 0, render=False)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [16, 4, 4]


def test_every_deposit_is_accounted_for_exactly_once(big):
    for im in big.images:
        n = len(im.expert)
        bib = im.crowd_match[im.crowd_noise == "box_in_box"]
        in_bib = np.isin(im.expert_cluster, im.expert_cluster[bib]) & (im.expert_cluster >= 0)
        boxed = im.crowd_match[np.isin(im.crowd_noise, ["clean", "localization"])]
        outcome = np.zeros(n, int)
        np.add.at(outcome, im.missed, 1)
        np.add.at(outcome, boxed, 1)
        outcome[in_bib] += 1
        assert outcome.tolist() == [1] * n
        assert np.all(im.crowd_match[im.crowd_noise == "background"] == -1)
        assert set(im.crowd_annotator.tolist()) <= {int(im.crowd_annotator[0])} if len(im.crowd) else True
        assert len(im.crowd_noise) == len(im.crowd) == len(im.crowd_match) == len(im.crowd_annotator)


def test_measured_rates_match_configured(big):
    rates = big.noise_rates()
    cfg = RATES_CONFIG.noise
    assert rates.n_deposits > 1000 and rates.n_clusters > 150
    assert rates.missed == pytest.approx(cfg.missed_rate, abs=0.04)
    assert rates.localization == pytest.approx(cfg.localization_rate, abs=0.04)
    assert rates.background == pytest.approx(cfg.background_rate, abs=0.04)
    assert rates.box_in_box == pytest.approx(cfg.bib_rate, abs=0.08)


def test_rates_follow_the_config():
    noise = NoiseConfig(missed_rate=0.05, localization_rate=0.5, background_rate=0.05, bib_rate=0.9)
    config = dataclasses.replace(RATES_CONFIG, noise=noise, n_train=150)
    rates = generate(config, 3, render=False).noise_rates()
    assert rates.missed == pytest.approx(0.05, abs=0.03)
    assert rates.localization == pytest.approx(0.5, abs=0.06)
    assert rates.background == pytest.approx(0.05, abs=0.03)
    assert rates.box_in_box == pytest.approx(0.9, abs=0.08)
    clean = NoiseConfig(missed_rate=0, localization_rate=0, background_rate=0, bib_rate=0)
    ds = generate(dataclasses.replace(RATES_CONFIG, noise=clean, n_train=40), 3, render=False)
    assert all(set(im.crowd_noise.tolist()) <= {"clean"} and len(im.missed) == 0 for im in ds.images)


def _boxes_of(ds: SynthDataset, noise: str):
    for im in ds.images:
        for j in np.flatnonzero(im.crowd_noise == noise):
            yield im, im.crowd.xyxy[j], int(im.crowd_match[j])


def test_background_boxes_mostly_on_distractors_and_never_on_deposits(big):
    on, n = 0, 0
    for im, box, _ in _boxes_of(big, "background"):
        n += 1
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        d = im.distractors.xyxy
        on += bool(np.any((d[:, 0] <= cx) & (cx <= d[:, 2]) & (d[:, 1] <= cy) & (cy <= d[:, 3])))
        if len(im.expert):
            assert box_iou(box[None], im.expert.xyxy).max() < 0.3
    assert n > 100
    assert on / n == pytest.approx(RATES_CONFIG.noise.background_on_distractor, abs=0.1)


def test_localization_iou_range_and_clean_boxes_are_tight(big):
    lo, hi = RATES_CONFIG.noise.localization_iou
    loc = [box_iou(b[None], im.expert.xyxy[m][None])[0, 0] for im, b, m in _boxes_of(big, "localization")]
    assert len(loc) > 100
    assert min(loc) >= lo - 0.04 and max(loc) <= hi + 0.04
    assert np.median(loc) == pytest.approx((lo + hi) / 2, abs=0.1)
    for noise in ("clean", "bib_inner"):
        ious = [box_iou(b[None], im.expert.xyxy[m][None])[0, 0] for im, b, m in _boxes_of(big, noise)]
        assert len(ious) > 20 and min(ious) >= 0.8 and np.median(ious) > 0.88


def test_box_in_box_encloses_two_or_more_deposits_of_one_cluster(big):
    n = 0
    for im, box, first in _boxes_of(big, "box_in_box"):
        n += 1
        inside = box_ioa(box[None], im.expert.xyxy)[0] > 0.99
        cluster = im.expert_cluster[first]
        assert cluster >= 0 and inside.sum() >= 2
        assert np.all(inside[im.expert_cluster == cluster])
    assert n > 50


def test_missed_deposits_skew_small_and_faint(big):
    missed_area, kept_area, missed_vis, kept_vis = [], [], [], []
    for im in big.images:
        boxed = im.crowd_match[np.isin(im.crowd_noise, ["clean", "localization"])]
        missed_area += im.expert.area[im.missed].tolist()
        kept_area += im.expert.area[boxed].tolist()
        missed_vis += im.expert_visibility[im.missed].tolist()
        kept_vis += im.expert_visibility[boxed].tolist()
    assert np.median(missed_area) < 0.8 * np.median(kept_area)
    assert np.mean(missed_vis) < np.mean(kept_vis) - 0.05


def test_annotators_vary_in_skill(big):
    assert big.annotator_skill.mean() == pytest.approx(1.0)
    assert big.annotator_skill.max() - big.annotator_skill.min() > 0.2
    error = {}
    for a in range(len(big.annotator_skill)):
        ims = [im for im in big.images if len(im.crowd) and im.crowd_annotator[0] == a]
        from synth.noise import measure_rates

        r = measure_rates((im.expert_cluster, im.crowd_noise, im.crowd_match, im.missed) for im in ims)
        error[a] = r.missed + r.localization
    best, worst = np.argmin(big.annotator_skill), np.argmax(big.annotator_skill)
    assert error[best] < error[worst]


def test_load_round_trips_the_manifest(tiny_dir):
    loaded = SynthDataset.load(tiny_dir)
    fresh = generate("tiny", 0, render=False)
    assert loaded.config == get_preset("tiny") and loaded.seed == 0
    assert loaded.manifest() == fresh.manifest()
    rec = loaded.images[2]
    assert rec.path == tiny_dir.resolve() / "images" / "train" / "000002.png" and rec.path.is_file()
    np.testing.assert_array_equal(rec.expert.xyxy, fresh.images[2].expert.xyxy)
    np.testing.assert_array_equal(rec.crowd.xyxy, fresh.images[2].crowd.xyxy)
    assert rec.crowd_noise.tolist() == fresh.images[2].crowd_noise.tolist()


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        SynthDataset.load(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format"):
        SynthDataset.load(tmp_path)


def test_yolo_view_matches_manifest(tiny_dir):
    ds = SynthDataset.load(tiny_dir)
    for label_set in ("expert", "crowd"):
        yaml = (tiny_dir / "yolo" / f"{label_set}.yaml").read_text()
        assert f"path: {tiny_dir.resolve() / 'yolo' / label_set}\n" in yaml
        assert "train: images/train\nval: images/val\ntest: images/test\nnames:\n  0: deposit\n" in yaml
    for rec in ds.images:
        link = tiny_dir / "yolo" / "crowd" / "images" / rec.split / f"{rec.id}.png"
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == rec.path
        for label_set, dets in (("expert", rec.expert), ("crowd", rec.crowd)):
            txt = tiny_dir / "yolo" / label_set / "labels" / rec.split / f"{rec.id}.txt"
            np.testing.assert_allclose(read_yolo_labels(txt, 128, 128).xyxy, dets.xyxy, atol=1e-3)


def test_coco_view_matches_manifest(tiny_dir):
    ds = SynthDataset.load(tiny_dir)
    coco = from_coco(json.loads((tiny_dir / "coco" / "crowd_val.json").read_text()))
    val = ds.split("val")
    assert sorted(coco) == [int(r.id) for r in val]
    for rec in val:
        got = coco[int(rec.id)]
        assert got.file_name == f"images/val/{rec.id}.png" and got.width == 128
        np.testing.assert_allclose(got.detections.xyxy, rec.crowd.xyxy, atol=2e-3)
        assert [e["noise"] for e in got.extra or ()] == rec.crowd_noise.tolist()


def test_label_studio_tasks(tiny_dir):
    ds = SynthDataset.load(tiny_dir)
    tasks = json.loads((tiny_dir / "label_studio" / "tasks.json").read_text())
    assert (tiny_dir / "label_studio" / "label_config.xml").read_text() == LABEL_CONFIG_XML
    train = ds.split("train")
    assert len(tasks) == len(train)
    for task, rec in zip(tasks, train, strict=True):
        data = task["data"]
        assert data["image"] == f"/data/local-files/?d=ds/images/train/{rec.id}.png"
        assert data["image_id"] == f"train/{rec.id}" and data["width"] == data["height"] == 128
        labels = data["crowd_labels"]
        crowd = crowd_labels_to_detections(labels, width=128, height=128, label_to_id={"deposit": 0})
        np.testing.assert_allclose(crowd.xyxy, rec.crowd.xyxy, atol=0.01)
        assert {c["annotator"] for c in data["crowd_labels"]} <= {f"crowd-{a}" for a in rec.crowd_annotator}
        (pred,) = task["predictions"]
        assert pred["model_version"] == "crowd" and len(pred["result"]) == len(rec.crowd)
        assert all(r["from_name"] == "label" and r["to_name"] == "image" for r in pred["result"])


def test_label_studio_document_root_and_splits(tmp_path):
    ds = generate(dataclasses.replace(get_preset("tiny"), n_train=2, n_val=1, n_test=1), 0)
    out = tmp_path / "root" / "sub" / "ds"
    ds.write(out, document_root=tmp_path / "root", label_studio_splits=("train", "val", "test"))
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks][-1] == "/data/local-files/?d=sub/ds/images/test/000003.png"
    with pytest.raises(ValueError, match="document_root"):
        ds.write(tmp_path / "x", document_root=tmp_path / "elsewhere", contact_sheet=False)


def test_contact_sheet(tiny_dir, tmp_path):
    from PIL import Image

    with Image.open(tiny_dir / "contact_sheet.png") as img:
        assert img.mode == "RGB" and img.width == 3 * 384
    out = render_contact_sheet(SynthDataset.load(tiny_dir), tmp_path / "s.png", n=2, tile=100)
    with Image.open(out) as img:
        assert img.size == (200, 128)
    with pytest.raises(ValueError, match="n"):
        render_contact_sheet(SynthDataset.load(tiny_dir), tmp_path / "s.png", n=0)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: NoiseConfig(missed_rate=1.5), "missed_rate"),
        (lambda: NoiseConfig(background_rate=1.0), "background_rate"),
        (lambda: NoiseConfig(localization_iou=(0.7, 0.2)), "localization_iou"),
        (lambda: NoiseConfig(n_annotators=0), "n_annotators"),
        (lambda: NoiseConfig(n_annotators=2.0), "n_annotators"),
        (lambda: NoiseConfig(clean_jitter=-0.01), "clean_jitter"),
        (lambda: NoiseConfig(clean_jitter=math.nan), "clean_jitter"),
        (lambda: NoiseConfig(clean_jitter=math.inf), "clean_jitter"),
        # Localization boxes (accepted up to high + 0.03) would reach clean ones (IoU >= clean_min_iou).
        (lambda: NoiseConfig(localization_iou=(0.2, 0.85)), "localization_iou: expected high"),
        (lambda: NoiseConfig(localization_iou=(0.2, 0.83)), "localization_iou: expected high"),
        (lambda: NoiseConfig(clean_min_iou=0.7), "localization_iou: expected high"),
        (lambda: NoiseConfig(localization_iou=(0.2, 0.5, 0.7)), "localization_iou"),
        (lambda: NoiseConfig(localization_modes=(math.nan, 1, 1)), "localization_modes"),
        (lambda: NoiseConfig(bib_margin=(0.03, math.inf)), "bib_margin"),
        (lambda: NoiseConfig(bib_margin=(math.nan, 0.1)), "bib_margin"),
        (lambda: SceneConfig(cluster_size=(1, 3)), "cluster_size"),
        (lambda: SimConfig(image_size=8), "image_size"),
        (lambda: SimConfig(n_train=-1), "n_train"),
        (lambda: get_preset("huge"), "preset"),
        (lambda: generate("tiny", -1), "seed"),
    ],
)
def test_config_errors(build, error):
    with pytest.raises(ValueError, match=error):
        build()


def test_noise_config_keeps_the_values_it_accepted():
    # Edges of what was valid before the stricter checks, and the benchmark's noise mixes: unchanged.
    for changes in (
        {},
        {"clean_jitter": 0.0, "bib_margin": (0.0, 5.0), "localization_iou": (0.3, 0.81)},
        {"n_annotators": np.int64(3), "localization_modes": (0.0, 0.0, 1.0)},
        {"missed_rate": 0.35, "localization_iou": (0.3, 0.6)},
        {"missed_rate": 0.15, "background_rate": 0.3, "localization_rate": 0.3},
    ):
        cfg = NoiseConfig(**changes)
        assert {k: getattr(cfg, k) for k in changes} == changes


def test_capped_rates_names_rates_the_caps_keep_out_of_reach():
    assert capped_rates(NoiseConfig()) == []
    assert capped_rates(NoiseConfig(missed_rate=0.35, localization_iou=(0.3, 0.6))) == []
    # Missed: 0.98 / ((1 + skill_spread) (1 + skew)) = 0.98 / (1.5 * 1.8) = 0.363 with the defaults.
    assert capped_rates(NoiseConfig(missed_rate=0.36)) == []
    (message,) = capped_rates(NoiseConfig(missed_rate=0.37))
    assert message.startswith("missed_rate=0.37: above 0.363 ")
    # One annotator has skill 1: no skill spread to push it over.
    assert capped_rates(NoiseConfig(missed_rate=0.5, n_annotators=1)) == []
    # Localization: 1 / (1.5 * 0.75 / (1 - 0.25 * 1.5)) = 0.556 with the defaults.
    assert capped_rates(NoiseConfig(localization_rate=0.55)) == []
    (message,) = capped_rates(NoiseConfig(localization_rate=0.7))
    assert message.startswith("localization_rate=0.7: above 0.556 ")


def test_generate_warns_when_a_rate_cannot_be_reached_and_data_fall_short():
    noise = NoiseConfig(missed_rate=0.9, localization_rate=0.1)
    config = dataclasses.replace(RATES_CONFIG, noise=noise, n_train=100)
    with pytest.warns(UserWarning) as record:
        rates = generate(config, 3, render=False).noise_rates()
    assert [str(w.message).split(":")[0] for w in record] == ["missed_rate=0.9"]
    assert record[0].filename == __file__  # points at the caller of generate
    assert rates.missed < 0.85
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(dataclasses.replace(RATES_CONFIG, n_train=5), 3, render=False)


def test_only_n_annotators_changes_the_images():
    base = dataclasses.replace(get_preset("tiny"), n_train=6, n_val=0, n_test=0)

    def images(**changes):
        config = dataclasses.replace(base, noise=dataclasses.replace(base.noise, **changes))
        return [(im.seed, im.expert.xyxy.tobytes()) for im in generate(config, 0, render=False).images]

    reference = images()
    labels_only = {"missed_rate": 0.4, "skill_spread": 0.2, "localization_iou": (0.3, 0.6), "bib_rate": 0.1}
    assert images(**labels_only) == reference
    assert all(a != b for a, b in zip(images(n_annotators=3), reference, strict=True))


def test_config_dict_round_trip():
    cfg = get_preset("quick")
    assert SimConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_cli_smoke(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "synth", "--preset", "tiny", "--seed", "2", "--out", str(out)]
    cmd += ["--n-train", "5"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "train 5, val 4, test 4" in proc.stdout and "missed" in proc.stdout
    assert SynthDataset.load(out).config.n_train == 5
    assert (out / "contact_sheet.png").is_file()
    bad = subprocess.run([*cmd[:4], "nope", *cmd[5:]], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--preset" in bad.stderr


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (["--n-train", "0", "--n-val", "0", "--n-test", "0"], "--n-test: expected at least one image"),
        (["--n-train", "0"], "--n-train 0: .* add --no-contact-sheet"),
        (["--ls-document-root", "{tmp}/elsewhere"], "--ls-document-root: .*elsewhere does not contain --out"),
        (["--out", "{tmp}/a_file/ds"], "--out: .*a_file exists and is not a folder, so the folder"),
        (["--out", "{tmp}/a_file"], "--out: .*a_file exists and is not a folder$"),
    ],
)
def test_cli_refuses_before_writing_anything(tmp_path, capsys, extra, error):
    (tmp_path / "a_file").write_text("")
    argv = ["--preset", "tiny", "--seed", "0", "--out", str(tmp_path / "root" / "ds")]
    with pytest.raises(SystemExit) as exc:
        synth_main([*argv, *(a.format(tmp=tmp_path) for a in extra)])
    assert exc.value.code == 2
    assert re.search(error, capsys.readouterr().err.strip().splitlines()[-1])
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_cli_writes_val_only_under_a_document_root_above_out(tmp_path, capsys):
    out = tmp_path / "root" / "sub" / "ds"
    argv = ["--preset", "tiny", "--seed", "0", "--out", str(out), "--ls-document-root", str(out.parents[1])]
    argv += ["--n-train", "0", "--n-val", "1", "--n-test", "0", "--no-contact-sheet", "--ls-all-splits"]
    assert synth_main(argv) == 0
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=sub/ds/images/val/000000.png"]
