"""The benchmark's own arithmetic: ranking metrics, expert cost, budget split; and a tiny full run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, make_detections
from PIL import Image

from bench.cost import instance_decisions, review
from bench.loop import LoopConfig, _budget_counts, boxes_touched
from bench.noise_quality import auroc, average_precision
from bench.simulate import ARMS, parse_noise, parse_seed_list
from bench.simulate import main as simulate_main
from selection import Strategy


@pytest.mark.parametrize(
    ("score", "positive", "expected"),
    [
        ([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0], 1.0),
        ([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),
        ([0.9, 0.1, 0.8, 0.2], [1, 1, 0, 0], 0.5),  # pos {.9,.1} vs neg {.8,.2}: 2 of 4 pairs won
        ([0.3, 0.2], [1, 1], float("nan")),
    ],
)
def test_auroc_hand_cases(score, positive, expected):
    got = auroc(np.array(score), np.array(positive, bool))
    if np.isnan(expected):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(expected)


def test_auroc_matches_pairwise_definition(rng):
    score = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pos, neg = score[positive], score[~positive]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auroc(score, positive) == pytest.approx(pairwise)


def test_average_precision_hand_case():
    # Ranked: P, N, P -> precisions at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.5, 0.1]), np.array([1, 0, 1], bool)) == pytest.approx(5 / 6)


def test_boxes_touched_counts_adds_deletes_and_moves():
    expert = make_detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    crowd = make_detections(
        [
            [0, 0, 10, 10],  # exact: untouched
            [21, 21, 31, 31],  # IoU 0.68: moved
            [70, 70, 80, 80],  # background: deleted
        ]
    )
    # deposit 3 missed: added. 1 move + 1 delete + 1 add.
    assert boxes_touched(crowd, expert) == 3
    assert boxes_touched(expert, expert) == 0


@pytest.mark.parametrize(
    ("n", "budget", "seed_fraction", "rounds", "first", "per_round"),
    [
        (100, 0.25, 0.1, 3, 10, [5, 5, 5]),
        (100, 0.25, 0.1, 4, 10, [4, 4, 4, 3]),
        (16, 0.25, 0.1, 3, 2, [1, 1]),  # 4 images: 2 seed + 2 left over 3 rounds
        (10, 0.1, 0.1, 2, 1, []),
    ],
)
def test_budget_split(n, budget, seed_fraction, rounds, first, per_round):
    cfg = LoopConfig(Strategy.RANDOM, budget=budget, seed_fraction=seed_fraction, rounds=rounds)
    got_first, got_rounds = _budget_counts(n, cfg)
    assert (got_first, got_rounds) == (first, per_round)
    assert got_first + sum(got_rounds) == max(1, round(budget * n))


@pytest.mark.slow
def test_simulate_tiny_runs_every_arm(tmp_path: Path):
    out = tmp_path / "sim"
    cmd = [
        sys.executable,
        "-m",
        "bench.simulate",
        "--preset",
        "tiny",
        "--seed-list",
        "7,3",
        "--jobs",
        "2",
        "--rounds",
        "1",
        "--strategies",
        "discrepancy,random",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # two worker processes: the runs come back in the order the seeds were given, the core-sharing markers go
    assert [run["seed"] for run in results["runs"]] == [7, 3]
    assert results["meta"]["jobs"] == 2
    # which revision of the LSM's rules produced the figures, in results.json and in results.md
    from selection import RULES_REVISION

    assert results["meta"]["rules"] == RULES_REVISION
    assert f"LSM rules and calibration: revision `{RULES_REVISION}`" in (out / "results.md").read_text()
    # this invocation's wall time is on record for a resumed run to add to
    assert results["meta"]["invocations"] == 1
    assert results["meta"]["seconds_all_invocations"] == pytest.approx(results["meta"]["seconds"])
    assert len(list((out / ".invocations").glob("*.json"))) == 1
    # every training's torch thread count is on record (it changes a CPU-trained detector)
    recorded = [n for run in results["runs"] for arm in run["arms"].values() for n in arm["train_threads"]]
    assert recorded and all(isinstance(n, int) and 1 <= n <= (os.cpu_count() or 1) for n in recorded)
    assert sum(results["meta"]["train_threads"].values()) == len(recorded)
    assert not list((out / ".running").iterdir())  # each worker removed its own marker
    # the verdict against the method's targets is computed from the same records and rendered
    verdict = {c["key"]: c for c in results["summary"]["acceptance"]}
    assert {"quality", "cost", "finetune_random", "finetune_lsm", "selection", "grades", "wall_time"} <= set(
        verdict
    )
    assert all(c["met"] in (True, False) for c in verdict.values())
    assert "targets met." in (out / "results.md").read_text()
    arms = results["runs"][0]["arms"]
    assert set(arms) == set(ARMS)
    for arm in arms.values():
        assert 0.0 <= arm["ap50"] <= 1.0
    assert arms["full_expert"]["expert_fraction"] == 1.0
    assert arms["noisy"]["expert_images"] == 0
    assert arms["full"]["expert_images"] == arms["random_corrected"]["expert_images"] > 0
    assert "LSM + correction (full method)" in (out / "results.md").read_text()
    for png in ("ap50_vs_budget.png", "noisy_found.png", "grade_pr.png"):
        assert (out / png).stat().st_size > 1000


def test_instance_decisions_count_every_crowd_box_and_every_drawn_box():
    expert = make_detections([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    crowd = make_detections([[0, 0, 10, 10], [21, 21, 31, 31], [70, 70, 80, 80]])
    d = instance_decisions(crowd, expert)
    # confirm 1, move 1 (IoU 0.68), delete 1 (background), draw 1 (missed deposit).
    assert (d.confirmed, d.moved, d.deleted, d.drawn) == (1, 1, 1, 1)
    assert d.total == 4 and d.touched == 3 == boxes_touched(crowd, expert)
    assert instance_decisions(expert, expert).total == 3  # confirming costs a decision too
    assert instance_decisions(make_detections([]), expert).total == 3


def test_review_answers_each_flagged_instance_from_the_expert_boxes():
    expert = make_detections(
        [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [52, 0, 62, 10], [80, 80, 90, 90], [0, 80, 10, 90]]
    )
    labels = make_detections(
        [
            [0, 0, 10, 10],  # not flagged: stays even though nobody checks it
            [22, 2, 32, 12],  # flagged, badly placed: becomes expert box 1
            [38, -2, 64, 12],  # flagged box-in-box: split into expert boxes 2 and 3
            [100, 100, 110, 110],  # flagged, on nothing: deleted
        ]
    )
    flagged = make_detections(
        [
            [22, 2, 32, 12],
            [38, -2, 64, 12],
            [100, 100, 110, 110],
            [81, 81, 91, 91],  # a proposal on the unboxed deposit 4: added as the expert box
            [120, 0, 130, 10],  # a proposal on nothing: not added
        ],
        scores=[0.5] * 5,
    )
    out, outcome = review(labels, flagged, expert)
    assert (outcome.reviewed, outcome.replaced, outcome.split, outcome.deleted, outcome.added) == (
        5,
        1,
        1,
        1,
        1,
    )
    assert outcome.extra_drawn == 1 and outcome.decisions == 6
    got = sorted(map(tuple, out.xyxy.tolist()))
    want = sorted(map(tuple, expert.xyxy[[0, 1, 2, 3, 4]].tolist()))
    assert got == want  # deposit 5 was never flagged: still missing
    assert out.score is None


def test_review_without_flags_changes_nothing():
    labels = make_detections([[0, 0, 10, 10]])
    out, outcome = review(labels, make_detections([], scores=[]), make_detections([]))
    assert outcome.decisions == 0
    np.testing.assert_array_equal(out.xyxy, labels.xyxy)


def test_parse_seed_list():
    assert parse_seed_list("100, 101,7") == [100, 101, 7]
    for bad, match in (
        ("1,x", "not an integer"),
        ("-1", "non-negative"),
        ("3,3", "twice"),
        (",", "at least"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_seed_list(bad)


def test_parse_noise_overrides_and_validation():
    from synth import NoiseConfig

    base = NoiseConfig()
    cfg = parse_noise(["missed_rate=0.3", "localization_iou=0.3,0.6", "n_annotators=3"], base)
    assert (cfg.missed_rate, cfg.localization_iou, cfg.n_annotators) == (0.3, (0.3, 0.6), 3)
    for items, match in (
        (["nope=1"], "unknown key 'nope'"),
        (["missed_rate"], "KEY=VALUE"),
        (["missed_rate=abc"], "missed_rate"),
        (["localization_iou=0.3"], "2 comma-separated"),
        (["missed_rate=1.5"], "missed_rate: expected in"),
        (["n_annotators=2.5"], "n_annotators"),
        (["clean_jitter=-0.1"], "clean_jitter: expected"),
        (["clean_jitter=nan"], "clean_jitter: expected"),
        (["localization_iou=0.3,0.84"], "localization_iou: expected high"),
        (["bib_margin=0.03,inf"], "bib_margin: expected"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_noise(items, base)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "2", "--seed-list", "1"], "not allowed with"),
        (["--seed-list", "1,a"], "not an integer"),
        (["--noise", "bogus=1"], "unknown key"),
        (["--noise", "missed_rate=2"], "missed_rate"),
        (["--noise", "clean_jitter=nan"], "clean_jitter"),
        (["--noise", "localization_iou=0.2,0.85"], "localization_iou"),
        (["--final-recipe", "magic"], "invalid choice"),
        (["--expert-repeat", "0"], "expert_repeat"),
        (["--replicates", "0"], "replicates"),
        (["--replicates", "2", "--compared-replicates", "1"], "compared_replicates"),
        (["--purchase", "cheapest"], "invalid choice"),
        (["--calibrate-on", "everything"], "invalid choice"),
        (["--jobs", "0"], "--jobs"),
        (["--threads", "0"], "--threads: expected at least 1"),
        (["--data", "/nonexistent-dir"], "no folder"),
        (["--data", ".", "--noise", "missed_rate=0.1"], "simulated data only"),
        (["--budget", "0.05", "--seed-fraction", "0.1"], "seed_fraction"),
        (["--review-precision", "0.9", "--fix-precision", "0.8"], "review_precision"),
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        simulate_main([*args, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _write_user_dataset(root: Path, *, splits: bool) -> None:
    root.mkdir(parents=True)
    (root / "img").mkdir()
    images = []
    for k in range(10):
        Image.new("RGB", (64, 48)).save(root / "img" / f"{k}.png")
        entry = {"id": k + 1, "file_name": f"img/{k}.png", "width": 64, "height": 48}
        if splits:
            entry["split"] = "train" if k < 6 else "val" if k < 8 else "test"
        images.append(entry)
    cats = [{"id": 1, "name": "deposit"}, {"id": 2, "name": "other"}]
    expert = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 30, 10, 10]},
    ]
    crowd = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 5, 8, 8]},
    ]
    (root / "expert.json").write_text(
        json.dumps({"images": images, "annotations": expert, "categories": cats})
    )
    crowd_images = [{k: v for k, v in im.items() if k != "split"} for im in images]
    (root / "crowd.json").write_text(
        json.dumps({"images": crowd_images, "annotations": crowd, "categories": cats})
    )


def test_user_dataset_loads_with_given_and_drawn_splits(tmp_path):
    from bench.userdata import load_user_dataset

    _write_user_dataset(tmp_path / "given", splits=True)
    records, names = load_user_dataset(tmp_path / "given", seed=0)
    assert names == ["deposit", "other"]
    assert [r.split for r in records].count("train") == 6
    first = records[0]
    assert first.expert.class_id.tolist() == [0, 1] and len(first.crowd) == 2
    assert first.crowd_noise.tolist() == ["clean", "background"]
    assert first.missed.tolist() == [1]
    assert first.path.is_file()

    _write_user_dataset(tmp_path / "drawn", splits=False)
    a, _ = load_user_dataset(tmp_path / "drawn", seed=0)
    b, _ = load_user_dataset(tmp_path / "drawn", seed=1)
    assert {r.split for r in a} == {"train", "val", "test"}
    assert [r.split for r in a] != [r.split for r in b]  # each seed draws its own split


def test_user_dataset_errors_name_the_problem(tmp_path):
    from bench.userdata import load_user_dataset

    with pytest.raises(FileNotFoundError, match=r"expert\.json"):
        load_user_dataset(tmp_path, seed=0)
    root = tmp_path / "ds"
    _write_user_dataset(root, splits=True)
    data = json.loads((root / "expert.json").read_text())
    data["images"][0]["split"] = "training"
    (root / "expert.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="split 'training'"):
        load_user_dataset(root, seed=0)
    data["images"][0]["split"] = "train"
    data["categories"][1]["name"] = "else"
    (root / "expert.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="categories"):
        load_user_dataset(root, seed=0)


def _fake_meta(seeds: list[int], settings) -> dict:
    """The ``meta`` of results.json a fake run's tables need."""
    import dataclasses

    return {
        "dataset": "fake",
        "seeds": seeds,
        "n_seeds": len(seeds),
        "budget": settings.budget,
        "command": "x",
        "seconds": 1.0,
        "device": "cpu",
        "settings": dataclasses.asdict(settings),
    }


def _write_tables(out: Path, runs: list, summary: dict, meta: dict) -> str:
    """results.md and the plots in ``out``; returns results.md's text."""
    import bench.simulate as sim

    sim.write_markdown(out / "results.md", summary, meta)
    sim.write_plots(out, runs, summary)
    return (out / "results.md").read_text()


def test_every_arm_runs_on_a_fake_detector(tmp_path):
    """The whole benchmark (loops, arms, costs, calibration, tables, plots) with the fingerprint detector."""
    import dataclasses

    from bench_fakes import FakeWorkbench

    import bench.simulate as sim
    import synth
    from bench.workbench import TRAIN_SPECS
    from selection import LSMConfig

    config = dataclasses.replace(synth.get_preset("tiny"), n_train=60, n_val=4, n_test=4)
    records = synth.generate(config, 3, render=False).images
    settings = sim.BenchSettings(cost_limit=None, purchase="discrepancy")
    runs = []
    original = sim.Workbench
    sim.Workbench = FakeWorkbench
    try:
        for seed in (11, 12):
            runs.append(
                sim.run_seed(
                    records, seed, work=tmp_path, spec=TRAIN_SPECS["tiny"], lsm=LSMConfig(), settings=settings
                )
            )
        # With a cost limit the reviews stop where it is reached (here the bought images leave 5 points).
        limited = sim.BenchSettings(budget=0.1, seed_fraction=0.05, cost_limit=0.05)
        capped = sim.run_seed(
            records, 11, work=tmp_path / "capped", spec=TRAIN_SPECS["tiny"], lsm=LSMConfig(), settings=limited
        )
    finally:
        sim.Workbench = original
    for name in ("random_corrected", "full", "full_consensus"):
        arm = capped["arms"][name]
        bought = arm["expert_decisions"] - arm["corrections"]["review_decisions"]
        allowed = max(int(0.05 * capped["all_expert_decisions"]), bought)
        assert arm["expert_decisions"] <= allowed
        counts = arm["corrections"]
        assert counts["review_skipped"] + counts["reviewed"] == counts["flagged"]
    assert any(capped["arms"][n]["corrections"]["review_skipped"] > 0 for n in ("full", "random_corrected"))
    for run in runs:
        arms = run["arms"]
        assert set(arms) == set(sim.ARMS)
        n = run["n_train"]
        assert arms["full_expert"]["decision_fraction"] == 1.0 and arms["noisy"]["expert_decisions"] == 0
        for name in ("finetune_random", "finetune_lsm", "random_corrected", "full", "full_consensus"):
            assert arms[name]["expert_images"] == round(0.25 * n)
            assert arms[name]["cost_fraction"] == max(
                arms[name]["expert_fraction"], arms[name]["decision_fraction"]
            )
        # Reviews are charged on top of the bought images' decisions.
        bought = arms["lsm_uncorrected"]["expert_decisions"]
        assert arms["full"]["expert_decisions"] == bought + arms["full"]["corrections"]["review_decisions"]
        assert arms["full"]["corrections"]["reviewed"] > 0
        assert arms["finetune_lsm"]["expert_decisions"] == bought
        assert {g["noise_type"] for g in run["grades"]["after"]} == {
            "background",
            "localization",
            "box_in_box",
            "missed",
        }
        json.dumps(run)
    summary = sim.summarize(runs)
    paired = {(p["a"], p["b"]): p for p in summary["paired"]}
    p = paired[("full", "finetune_random")]
    want = [(r["arms"]["full"]["ap50"] - r["arms"]["finetune_random"]["ap50"]) * 100 for r in runs]
    assert list(p["per_seed"].values()) == pytest.approx(want)
    assert p["wins"] == sum(d > 0 for d in want)
    meta = _fake_meta([11, 12], settings)
    text = _write_tables(tmp_path, runs, summary, meta)
    assert "Crowd model fine-tuned on the LSM images" in text and "cost: decisions" in text
    assert "Wall time: 0.0 min on cpu  " in text  # one invocation: nothing about earlier ones
    assert "LSM rules and calibration: older than revision `2026-12-01`" in text  # meta records none
    resumed = {
        **meta,
        "seconds": 600.0,
        "seconds_all_invocations": 5 * 3600.0,
        "invocations": 3,
        "train_threads": {"1": 10, "2": 3, "unknown": 4},
    }
    sim.write_markdown(tmp_path / "resumed.md", summary, resumed)
    resumed_text = (tmp_path / "resumed.md").read_text()
    assert "10.0 min (this invocation; 5.0 h over the 3 invocations of this command" in resumed_text
    assert (
        "torch threads per training (cores shared among the running seeds): 10 trainings with 1 thread, "
        "3 trainings with 2 threads, 4 unknown"
    ) in resumed_text
    assert "torch threads" not in text  # nothing recorded, nothing claimed
    # What the trainings recorded is counted across seeds and arms (the fake records no thread count).
    n_trainings = sum(len(a["train_threads"]) for r in runs for a in r["arms"].values())
    assert n_trainings > 0 and sim._thread_counts(runs) == {"unknown": n_trainings}
    for png in ("ap50_vs_budget.png", "noisy_found.png", "grade_pr.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # The method's image score is the discrepancy weighted by type and severity; the type-only weighted and
    # the unweighted ones are reported beside it.
    for run in runs:
        assert run["detection"]["lsm"] == run["detection"]["lsm_weighted"]
        assert set(run["detection"]) >= {"lsm_type", "lsm_raw", "cleanlab", "random"}
        assert "lsm_priority" not in run["detection"]  # the loop bought by the image score itself
    assert "weighted by type and severity (the method's image score)" in text
    assert "LSM discrepancy, weighted by type only" in text and "LSM discrepancy, unweighted" in text
    assert "weight in the image score" in text
    # Every type has a precision-recall curve of the LSM's own severity ranking, fitted rule or not.
    assert "P@R≥0.5 before | P@R≥0.5 after" in text
    for run in runs:
        assert set(run["grades"]["pr_curves_before"]) == set(run["grades"]["pr_curves"])
    before = [summary["grades"][t]["before"]["precision_at_recall"][0] for t in summary["grades"]]
    after = [summary["grades"][t]["after"]["precision_at_recall"][0] for t in summary["grades"]]
    assert any(0.0 < p <= 1.0 for p in before)
    # Both rank the same findings (a type without a fitted rule by its severity), so both reach recall 0.5.
    assert [np.isfinite(b) for b in before] == [np.isfinite(a) for a in after]
    weights = [summary["grades"][t]["weight"][0] for t in ("background", "localization", "missed")]
    assert all(0.0 < w <= 1.0 for w in weights)


def test_a_priority_purchase_is_scored_as_a_noisy_image_detector_too(tmp_path, monkeypatch):
    """With ``purchase="missed"`` the LSM buys by ``image_priority(rule="missed")``; the noisy-image
    detection reports it beside the method's image score (the weighted discrepancy). Negating the priority
    the benchmark scores with turns its AUROC into 1 - AUROC and leaves the other scorers alone."""
    import dataclasses

    from bench_fakes import FakeWorkbench

    import bench.simulate as sim
    import synth
    from bench.workbench import TRAIN_SPECS
    from selection import LSMConfig

    config = dataclasses.replace(synth.get_preset("tiny"), n_train=60, n_val=4, n_test=4)
    records = synth.generate(config, 3, render=False).images
    settings = sim.BenchSettings(cost_limit=None, purchase="missed")
    monkeypatch.setattr(sim, "Workbench", FakeWorkbench)
    rules = []

    def run(work):
        return sim.run_seed(
            records, 11, work=work, spec=TRAIN_SPECS["tiny"], lsm=LSMConfig(), settings=settings
        )

    first = run(tmp_path / "a")
    plain = first["detection"]
    real = sim.image_priority

    def negated(*args, **kwargs):
        rules.append(kwargs["rule"])
        return -real(*args, **kwargs)

    # The reference scorer without a model ranks the same images by their crowd box counts.
    seen: dict[str, list] = {"crowds": [], "scores": []}
    real_peer, real_auroc = sim.cleanlab_scores, sim.auroc

    def peer(crowds, *args, **kwargs):
        seen["crowds"] = list(crowds)
        return real_peer(crowds, *args, **kwargs)

    def recording_auroc(score, positive):
        seen["scores"].append(np.asarray(score).copy())
        return real_auroc(score, positive)

    monkeypatch.setattr(sim, "cleanlab_scores", peer)
    monkeypatch.setattr(sim, "auroc", recording_auroc)
    counted = run(tmp_path / "c")["detection"]
    monkeypatch.setattr(sim, "cleanlab_scores", real_peer)
    monkeypatch.setattr(sim, "auroc", real_auroc)
    assert counted == plain
    counts = [len(c) for c in seen["crowds"]]
    assert max(counts) > min(counts) and any(s.tolist() == counts for s in seen["scores"])

    monkeypatch.setattr(sim, "image_priority", negated)
    flipped = run(tmp_path / "b")["detection"]
    assert rules and set(rules) == {"missed"}
    assert flipped["lsm_priority"]["auroc"] == pytest.approx(1 - plain["lsm_priority"]["auroc"])
    for k in ("lsm", "lsm_weighted", "lsm_type", "lsm_raw", "cleanlab", "crowd_count"):
        assert flipped[k] == plain[k]
    meta = {"dataset": "fake", "seeds": [11], "n_seeds": 1, "budget": 0.25, "command": "x", "seconds": 1.0}
    meta |= {"device": "cpu", "settings": dataclasses.asdict(settings)}
    sim.write_markdown(tmp_path / "results.md", sim.summarize([first]), meta)
    text = (tmp_path / "results.md").read_text()
    assert "| LSM image priority, rule `missed` (what the LSM loop bought by) |" in text
    assert "| crowd boxes per image (no model: a reference) |" in text
    assert "LSM discrepancy, weighted by type and severity (the method's image score)" in text


def test_noise_overrides_reach_the_simulated_dataset(tmp_path):
    import synth
    from bench.simulate import _synth_records

    base = _synth_records("tiny", 0, tmp_path, [])
    with pytest.warns(UserWarning, match="missed_rate=0.9: above"):  # the cap keeps 0.9 out of reach
        noisier = _synth_records("tiny", 0, tmp_path, ["missed_rate=0.9", "background_rate=0.5"])
    again = _synth_records("tiny", 0, tmp_path, ["missed_rate=0.9", "background_rate=0.5"])
    dirs = sorted(p.name for p in (tmp_path / "seed0").iterdir())
    assert dirs[0] == "data" and dirs[1].startswith("data-noise-") and len(dirs) == 2
    config = synth.SynthDataset.load(tmp_path / "seed0" / dirs[1]).config
    assert (config.noise.missed_rate, config.noise.background_rate) == (0.9, 0.5)
    missed = [sum(len(r.missed) for r in recs) for recs in (base, noisier)]
    assert missed[1] > missed[0]
    assert [r.id for r in again] == [r.id for r in noisier]


def test_grade_quality_hand_case():
    from bench.noise_quality import grade_quality
    from selection import score_image

    crowd = make_detections([[0, 0, 20, 20], [100, 100, 120, 120], [200, 0, 220, 20]])
    pred = make_detections([[0, 0, 20, 20], [50, 50, 70, 70], [150, 150, 170, 170]], scores=[0.95, 0.9, 0.9])
    score = score_image(crowd, pred)
    f = score.instances
    assert f.noise_type[:3].tolist() == ["clean", "background", "background"]
    assert set(f.action[3:].tolist()) == {"auto_fix"}  # two confident "missed" proposals
    truth = np.array(["clean", "background", "clean"])  # the third crowd box is in fact right
    missed = make_detections([[50, 50, 70, 70]])  # only one proposal is a real missed deposit
    rows, curves = grade_quality(
        [score], [truth], [missed], [pred], probability=[np.linspace(0.9, 0.1, len(f))]
    )
    q = {r.noise_type: r for r in rows}
    bg_fixed = (f.noise_type == "background") & (f.action == "auto_fix")
    assert q["background"].support == 1
    assert q["background"].fix_precision == pytest.approx(1 / bg_fixed.sum())
    assert q["missed"].fix_precision == 0.5 and q["missed"].fix_recall == 1.0
    assert q["localization"].support == 0 and np.isnan(q["localization"].fix_recall)
    # Ranked by the given probabilities, the real missed deposit (the higher of the two) comes first.
    assert curves["missed"]["precision"][0] == 1.0 and curves["missed"]["recall"][-1] == 1.0


def test_review_two_reviewed_boxes_do_not_split_into_the_same_deposits():
    # Two small deposits inside two large boxes (IoU < 0.1 with both: no box stands for either).
    expert = make_detections([[10, 10, 15, 15], [20, 10, 25, 15]])
    labels = make_detections([[0, 0, 60, 60], [0, 0, 62, 62]])
    out, outcome = review(labels, make_detections(labels.xyxy, scores=[0.5, 0.5]), expert)
    assert (outcome.split, outcome.deleted, outcome.extra_drawn) == (1, 1, 1)
    assert sorted(map(tuple, out.xyxy.tolist())) == sorted(map(tuple, expert.xyxy.tolist()))  # each once


def test_threads_option_fixes_every_trainings_thread_count(tmp_path, monkeypatch):
    """``--threads N``: N torch threads per training, however many seeds run; else the cores are shared."""
    import bench.simulate as sim

    seen = {}
    monkeypatch.setattr(sim, "_synth_records", lambda *a: [])
    monkeypatch.setattr(sim, "run_seed", lambda records, seed, **kw: seen.setdefault(seed, kw["threads"]))
    common = dict(out=tmp_path, preset="tiny", data=None, noise=[], spec=None, lsm=None, settings=None)
    sim._one_seed(1, share_cores=True, threads=1, **common)
    sim._one_seed(2, share_cores=True, **common)
    sim._one_seed(3, threads=3, **common)
    sim._one_seed(4, **common)
    assert seen[1] == 1 and seen[3] == 3 and seen[4] is None  # None: every core
    assert callable(seen[2]) and seen[2]() == max(1, (os.cpu_count() or 1))  # its own marker is gone: all


def test_live_markers_count_running_processes_and_drop_dead_ones(tmp_path):
    """``--jobs`` shares the cores among seeds whose process is alive; a killed run's markers do not count."""

    from bench.simulate import _live_markers

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f"seed0-{os.getpid()}").touch()
    (tmp_path / f"seed1-{os.getppid()}").touch()
    (tmp_path / f"seed2-{dead_pid}").touch()
    (tmp_path / "seed3-notapid").touch()
    assert _live_markers(tmp_path) == 2
    assert not (tmp_path / f"seed2-{dead_pid}").exists()
    assert (tmp_path / f"seed0-{os.getpid()}").exists()


def _fake_peer(tmp_path: Path, body: str) -> Path:
    """An executable standing in for the FiftyOne environment's interpreter: it is called as
    ``PYTHON bench/fiftyone_peer.py IN OUT`` and runs ``body`` with ``src``, ``dst`` and ``json`` bound."""
    exe = tmp_path / "fake-python"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\nsrc, dst = sys.argv[2], sys.argv[3]\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_fiftyone_scores_sends_the_boxes_and_counts_its_findings(tmp_path):
    from bench.noise_quality import fiftyone_scores

    # The fake peer records what it was given and where FiftyOne would keep its files, and answers with
    # fixed fields: image a has one spurious box and a localization mistake, b two missing objects, c none.
    body = (
        "images = json.load(open(src))['images']\n"
        "os.makedirs(os.environ['FIFTYONE_DATABASE_DIR'])\n"
        "seen = {'images': images, 'home': os.environ['HOME'], 'db': os.environ['FIFTYONE_DATABASE_DIR'],"
        " 'track': os.environ['FIFTYONE_DO_NOT_TRACK']}\n"
        "json.dump(seen, open(os.path.join(os.path.dirname(dst), 'seen.json'), 'w'))\n"
        "row = lambda m, n, s, l: {'mistakenness': m, 'possible_missing': n, 'possible_spurious': s,"
        " 'mistakenness_loc': l}\n"
        "out = {'a': row(0.1, 0, 1, 0.7), 'b': row(-1.0, 2, 0, 0.0), 'c': row(-1.0, 0, 0, 0.0)}\n"
        "json.dump(out, open(dst, 'w'))"
    )
    python = _fake_peer(tmp_path, body)
    crowds = [
        make_detections([[10, 10, 40, 40]]),
        make_detections(np.zeros((0, 4))),
        make_detections([[5, 5, 9, 9]]),
    ]
    preds = [
        make_detections([[12, 12, 41, 41]], scores=[0.9]),
        make_detections([[60, 60, 90, 90], [100, 100, 120, 120]], scores=[0.8, 0.7]),
        make_detections(np.zeros((0, 4)), scores=np.zeros(0)),
    ]
    work = tmp_path / "fo"
    score, rows = fiftyone_scores(
        ["a", "b", "c"], [(160, 120)] * 3, crowds, preds, python=python, workdir=work
    )
    # Counted findings first, the largest mistakenness in [0, 1] breaks ties.
    np.testing.assert_allclose(score, [1.7, 2.0, 0.0])
    assert rows[1]["possible_missing"] == 2
    seen = json.loads((work / "seen.json").read_text())
    assert [im["id"] for im in seen["images"]] == ["a", "b", "c"]
    assert seen["images"][0]["width"] == 160 and seen["images"][0]["height"] == 120
    assert seen["images"][0]["crowd"] == [[10.0, 10.0, 40.0, 40.0]]
    np.testing.assert_allclose(seen["images"][1]["pred"], [[60, 60, 90, 90, 0.8], [100, 100, 120, 120, 0.7]])
    assert seen["images"][2]["pred"] == []
    # Nothing written to ~: FiftyOne's home and database live in the work folder, and no usage tracking.
    assert Path(seen["home"]).parent == work and Path(seen["db"]).parent == work and seen["track"] == "true"
    assert not (work / "db").exists()  # the throwaway database is removed


def test_fiftyone_scores_reports_a_failing_peer(tmp_path):
    from bench.noise_quality import fiftyone_scores

    python = _fake_peer(tmp_path, "print('MongoDB could not be installed'); sys.exit(3)")
    with pytest.raises(RuntimeError, match="exit code 3:\nMongoDB could not be installed"):
        fiftyone_scores(
            ["a"],
            [(64, 64)],
            [make_detections([[1, 1, 5, 5]])],
            [make_detections([[1, 1, 5, 5]], scores=[1.0])],
            python=python,
            workdir=tmp_path / "fo",
        )


def _fiftyone_python() -> Path:
    """FiftyOne's environment (``make setup-fiftyone``, which ``make test`` runs). Where it is missing the
    test is skipped (a bare ``pytest``), except under CI (``CI`` set, as ``.ci/run`` does): there it fails."""
    python = REPO / ".venv-fo" / "bin" / "python"
    if not python.exists():
        message = f"FiftyOne's environment is missing ({python}): run make setup-fiftyone (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def test_fiftyone_peer_runs_compute_mistakenness(tmp_path):
    """The real FiftyOne Brain: a crowd box with no prediction near it is spurious, one a prediction matches a
    little off has a localization mistakenness, an image without boxes scores 0."""
    from bench.noise_quality import fiftyone_scores

    python = _fiftyone_python()

    crowds = [
        make_detections([[10, 10, 40, 40], [100, 100, 130, 130]]),
        make_detections([[10, 10, 40, 40]]),
        make_detections(np.zeros((0, 4))),
    ]
    preds = [
        make_detections([[11, 11, 40, 40]], scores=[0.9]),
        make_detections([[13, 13, 43, 43]], scores=[0.9]),  # IoU 0.68: matched, a little off
        make_detections(np.zeros((0, 4)), scores=np.zeros(0)),
    ]
    score, rows = fiftyone_scores(
        ["a", "b", "c"],
        [(160, 160)] * 3,
        crowds,
        preds,
        python=python,
        workdir=tmp_path / "fo",
    )
    assert rows[0]["possible_spurious"] == 1
    assert rows[1]["possible_spurious"] == 0 and rows[1]["mistakenness_loc"] > 0.0
    assert score[2] == 0.0 and score[0] > score[2] and score[1] > score[2]


def test_replicates_average_each_arms_trainings_and_change_no_input(tmp_path):
    """``--replicates 2``: every arm is trained again with training seed + 1000 on the same inputs, its AP
    is the mean of both, and nothing the arms are trained on changes (the first training's weights are the
    ones later stages start from)."""
    import dataclasses
    from typing import ClassVar

    from bench_fakes import FakeWorkbench

    import bench.simulate as sim
    import synth
    from bench.workbench import TRAIN_SPECS
    from selection import LSMConfig

    class SeededFake(FakeWorkbench):
        """The fingerprint detector, whose test AP also depends on the training seed."""

        instances: ClassVar[list[SeededFake]] = []

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            SeededFake.instances.append(self)

        def train(self, name, labels, **kwargs):
            model = super().train(name, labels, **kwargs)
            shift = 0.1 if self.seed >= 1000 else 0.0
            return dataclasses.replace(model, ap50=model.ap50 * (1 - shift))

    config = dataclasses.replace(synth.get_preset("tiny"), n_train=40, n_val=4, n_test=4)
    records = synth.generate(config, 3, render=False).images
    original = sim.Workbench
    sim.Workbench = SeededFake
    try:
        runs = {}
        for k in (1, 2):
            SeededFake.instances = []
            settings = sim.BenchSettings(cost_limit=None, replicates=k)
            runs[k] = sim.run_seed(
                records,
                5,
                work=tmp_path / str(k),
                spec=TRAIN_SPECS["tiny"],
                lsm=LSMConfig(),
                settings=settings,
            )
            benches = list(SeededFake.instances)
    finally:
        sim.Workbench = original
    main, replica = benches
    assert main.seed == 5 and replica.seed == 1005 and replica.work_dir == tmp_path / "2" / "replicate1"
    assert [c["name"] for c in replica.calls] == list(sim.ARMS)  # one more training per arm, nothing else
    for name in sim.ARMS:
        one, two = runs[1]["arms"][name], runs[2]["arms"][name]
        assert one["ap50_replicates"] == [one["ap50"]]
        first, second = two["ap50_replicates"]
        assert first == pytest.approx(one["ap50"]) and second == pytest.approx(0.9 * first)
        assert two["ap50"] == pytest.approx((first + second) / 2)
        # The same inputs: labels, costs and corrections do not depend on the replicates.
        for key in ("label_f1", "expert_decisions", "corrections"):
            assert two[key] == one[key]
    with pytest.raises(ValueError, match="replicates"):
        sim.BenchSettings(replicates=0)


def _recording_workbench(monkeypatch) -> list:
    """bench.simulate's Workbench replaced by the fingerprint fake; every one created is recorded, the main
    one first, then the replicas."""
    from bench_fakes import FakeWorkbench

    import bench.simulate as sim

    benches: list[FakeWorkbench] = []

    class Recorded(FakeWorkbench):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            benches.append(self)

    monkeypatch.setattr(sim, "Workbench", Recorded)
    return benches


def _tiny_records(n_train: int = 40) -> list:
    import dataclasses

    import synth

    config = dataclasses.replace(synth.get_preset("tiny"), n_train=n_train, n_val=4, n_test=4)
    return synth.generate(config, 3, render=False).images


def test_compared_replicates_train_only_the_compared_arms_more(tmp_path, monkeypatch):
    """``--compared-replicates 3`` with ``--replicates 2``: the arms the paired comparisons read get a third
    training (training seed + 2000, its own folder), every other arm stays at two, and the AP is the mean of
    each arm's own trainings."""
    import bench.simulate as sim
    from bench.workbench import TRAIN_SPECS
    from selection import LSMConfig

    benches = _recording_workbench(monkeypatch)
    settings = sim.BenchSettings(cost_limit=None, replicates=2, compared_replicates=3)
    run = sim.run_seed(
        _tiny_records(), 5, work=tmp_path, spec=TRAIN_SPECS["tiny"], lsm=LSMConfig(), settings=settings
    )
    main, second, third = benches
    assert main.seed == 5
    assert (second.seed, third.seed) == (1005, 2005)
    assert third.work_dir == tmp_path / "replicate2"
    assert [c["name"] for c in second.calls] == list(sim.ARMS)
    assert [c["name"] for c in third.calls] == [a for a in sim.ARMS if a in sim.COMPARED_ARMS]
    assert set(sim.COMPARED_ARMS) == {"full", "finetune_random", "finetune_lsm", "random_corrected"}
    for name, arm in run["arms"].items():
        assert len(arm["ap50_replicates"]) == (3 if name in sim.COMPARED_ARMS else 2)
        assert arm["ap50"] == pytest.approx(np.mean(arm["ap50_replicates"]))
    with pytest.raises(ValueError, match="compared_replicates"):
        sim.BenchSettings(replicates=2, compared_replicates=1)


def test_verdict_only_trains_the_arms_the_targets_read_and_changes_none_of_them(tmp_path, monkeypatch):
    """``--verdict-only``: no expert-only, LSM-without-correction or consensus training (nor its two folds);
    the arms it trains get the same inputs and figures as in a run of every arm; tables, plots and the
    verdict are written from what it has."""

    import bench.simulate as sim
    from bench import acceptance
    from bench.workbench import TRAIN_SPECS
    from selection import LSMConfig

    benches = _recording_workbench(monkeypatch)
    records = _tiny_records()

    def run(folder: str, settings):
        return sim.run_seed(
            records, 5, work=tmp_path / folder, spec=TRAIN_SPECS["tiny"], lsm=LSMConfig(), settings=settings
        )

    every = run("every", sim.BenchSettings(cost_limit=None))
    settings = sim.BenchSettings(cost_limit=None, verdict_only=True)
    some = run("some", settings)
    assert sim.VERDICT_ARMS == (
        "noisy",
        "full_expert",
        "full_expert_long",
        "finetune_random",
        "finetune_lsm",
        "random_corrected",
        "full",
    )
    trained = [c["name"] for c in benches[-1].calls]
    assert not {"expert_budget", "lsm_uncorrected", "full_consensus"} & set(trained)
    assert not any(name.startswith("consensus") for name in trained)
    assert any(name.startswith("consensus") for name in (c["name"] for c in benches[0].calls))
    assert tuple(some["arms"]) == sim.VERDICT_ARMS
    for name in sim.VERDICT_ARMS:
        assert some["arms"][name] == every["arms"][name]
    assert some["detection"] == every["detection"]
    assert json.dumps(some["grades"], sort_keys=True) == json.dumps(every["grades"], sort_keys=True)  # nan
    summary = sim.summarize([some])
    # The trained arms, and the staged fine-tunes read off the loops each after its one-go twin.
    assert tuple(summary["arms"]) == (
        "noisy",
        "full_expert",
        "full_expert_long",
        "finetune_random",
        "staged_random",
        "finetune_lsm",
        "staged_lsm",
        "random_corrected",
        "full",
    )
    staged = summary["arms"]["staged_lsm"]
    assert staged["ap50"][0] == some["rounds"]["discrepancy"][-1]["cleaning_ap50"]
    assert staged["cost_fraction"] == summary["arms"]["finetune_lsm"]["cost_fraction"]
    assert [(p["a"], p["b"]) for p in summary["paired"]] == list(sim.PAIRS)
    meta = _fake_meta([5], settings)
    text = _write_tables(tmp_path, [some], summary, meta)
    assert "only the arms the targets read (`--verdict-only`; left out: `expert_budget`" in text
    assert "| LSM + correction (full method) |" in text and "LSM selection, no correction |" not in text
    assert "| Crowd model fine-tuned in stages on the LSM images (last cleaning model) |" in text
    assert (tmp_path / "ap50_vs_budget.png").stat().st_size > 1000
    keys = {c.key for c in acceptance.check([some], meta)}
    assert {"quality", "cost", "finetune_random", "finetune_lsm", "selection", "grades"} <= keys


def test_the_reference_trained_as_long_continues_the_30_epoch_one_on_the_expert_labels(tmp_path, monkeypatch):
    """The full method's detector trains after the crowd detector for the cleaning models' epochs and then its
    own; the reference target 1 reads continues the 30-epoch full-expert detector for the cleaning models'
    epochs, on the same expert labels. Where the final detector does not start from the cleaning model
    (``scratch``, ``warm_crowd``) the method trains no longer than the 30-epoch reference: there is none."""
    import bench.simulate as sim
    from bench import acceptance
    from bench.workbench import TRAIN_SPECS
    from selection import LSMConfig

    benches = _recording_workbench(monkeypatch)
    records = _tiny_records()
    spec = TRAIN_SPECS["tiny"]
    settings = sim.BenchSettings(cost_limit=None, verdict_only=True, rounds=2)
    run = sim.run_seed(records, 5, work=tmp_path / "warm", spec=spec, lsm=LSMConfig(), settings=settings)
    calls = {c["name"]: c for c in benches[-1].calls}
    long, short = calls["full_expert_long"], calls["full_expert"]
    assert long["epochs"] == spec.cleaning_epochs + 2 * spec.warm_epochs
    assert short["epochs"] is None  # the preset's final-training epochs
    assert long["labels"] == short["labels"]
    assert set(long["labels"]) == {r.id for r in records if r.split == "train"}
    assert all(long["labels"][r.id] is r.expert for r in records if r.split == "train")
    # the continuation starts from the 30-epoch reference's weights, not from the crowd detector
    assert long["init"] == short["weights"] and short["init"] == calls["noisy"]["weights"]
    assert run["arms"]["full_expert_long"]["expert_fraction"] == 1.0
    # target 1 reads it, and says so; the 30-epoch share stays in the note
    quality = next(c for c in acceptance.check([run], {"settings": {}}) if c.key == "quality")
    long_ap, short_ap, full_ap = (run["arms"][a]["ap50"] for a in ("full_expert_long", "full_expert", "full"))
    assert quality.measured == f"{full_ap / long_ap * 100:.1f} %"
    assert f"{full_ap / short_ap * 100:.1f} % of the 30-epoch one" in quality.note
    headline = sim._headline(sim.summarize([run]))
    assert (
        f"reaches {full_ap / long_ap * 100:.1f} ± 0.0 % of the AP50 of a full-expert detector trained"
        in headline
    )
    assert f"{full_ap / short_ap * 100:.1f} ± 0.0 % of the 30-epoch full-expert detector" in headline
    for recipe in ("scratch", "warm_crowd"):
        other = sim.BenchSettings(cost_limit=None, verdict_only=True, final_recipe=recipe)
        assert not other.runs_arm("full_expert_long")
        no_long = sim.run_seed(records, 5, work=tmp_path / recipe, spec=spec, lsm=LSMConfig(), settings=other)
        assert "full_expert_long" not in no_long["arms"]
        assert "full_expert_long" not in {c["name"] for c in benches[-1].calls}
