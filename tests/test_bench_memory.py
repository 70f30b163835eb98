"""bench.memory without a backend: frames, tasks and URLs, the file server, the memory readers, the report."""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import numpy as np
import pytest
import requests

import bench.memory as bm
from bench.memory import (
    Frame,
    ModeResult,
    RssSampler,
    backend_env,
    build_tasks,
    check_tiling,
    count_outcomes,
    format_report,
    logged_tiling,
    main,
    serve_folder,
    to_12bit,
    vm_hwm_mib,
)


def test_docstring_examples():
    result = doctest.testmod(bm, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_tasks_cycle_over_frames_with_distinct_urls_and_their_crowd_labels():
    crowd = [{"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0, "label": "deposit"}]
    frames = [Frame("d/a.png", crowd), Frame("d/b.png", []), Frame("d/c.png", [])]
    tasks = build_tasks("http://127.0.0.1:9/", frames, 7)
    assert [t["id"] for t in tasks] == list(range(1, 8))
    urls = [t["data"]["image"] for t in tasks]
    assert len(set(urls)) == 7  # every task downloads its own image
    assert [u.split("?")[0].rsplit("/", 1)[1] for u in urls] == ["a.png", "b.png", "c.png"] * 2 + ["a.png"]
    assert urls[3] == "http://127.0.0.1:9/d/a.png?task=4"
    assert tasks[3]["data"]["crowd_labels"] == crowd and tasks[4]["data"]["crowd_labels"] == []


@pytest.mark.parametrize(
    ("frames", "n_tasks", "error"),
    [([Frame("a.png", [])], 0, "n_tasks: expected >= 1, got 0"), ([], 3, "frames: expected at least one")],
)
def test_build_tasks_rejects_bad_arguments(frames, n_tasks, error):
    with pytest.raises(ValueError, match=error):
        build_tasks("http://h:1", frames, n_tasks)


def test_12bit_container_keeps_the_8bit_image_in_its_high_bits():
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    twelve = to_12bit(eight, np.random.default_rng(1))
    assert twelve.dtype == np.uint16 and int(twelve.max()) <= 4095
    assert np.array_equal(twelve >> 4, eight)
    assert len(np.unique(twelve & 15)) > 1  # the low bits carry noise, not zeros
    with pytest.raises(TypeError, match="expected uint8"):
        to_12bit(twelve, rng)


def test_served_folder_answers_with_a_query_string_and_404s_a_missing_file(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(b"not really a png")
    with serve_folder(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        ok = requests.get(f"{base}/d/a.png?task=12", timeout=10)
        missing = requests.get(f"{base}/d/b.png?task=1", timeout=10)
    assert (ok.status_code, ok.content) == (200, b"not really a png")
    assert missing.status_code == 404
    with pytest.raises(requests.ConnectionError):  # stopped with the block
        requests.get(f"{base}/d/a.png", timeout=2)


@pytest.mark.parametrize(("mode", "tile_size", "overlap"), [("resized", "0", ""), ("tiled", "320", "64")])
def test_backend_env_per_mode(tmp_path: Path, mode, tile_size, overlap):
    env = backend_env(mode, weights=tmp_path / "w.pt", work=tmp_path / mode, tile=320, overlap=64)
    assert (env["TILE_SIZE"], env["TILE_OVERLAP"]) == (tile_size, overlap)
    assert env["MODEL_DIR"] == str(tmp_path / mode / "models") and env["MODEL_WEIGHTS"] == str(
        tmp_path / "w.pt"
    )
    # Blank values make the backend use its defaults even when the caller's shell sets these.
    assert env["IMAGE_CACHE_MB"] == env["PREDICT_BATCH"] == env["LABEL_STUDIO_URL"] == env["REDIS_URL"] == ""
    assert (
        backend_env(mode, weights=tmp_path, work=tmp_path, tile=320, overlap=64, predict_batch=4)[
            "PREDICT_BATCH"
        ]
        == "4"
    )
    with pytest.raises(ValueError, match="mode: expected one of resized, tiled"):
        backend_env("sliced", weights=tmp_path, work=tmp_path, tile=320, overlap=64)


def test_tiling_read_from_the_backend_log_must_match_the_mode():
    log = (
        "INFO:     Started server process [1]\n"
        "2026-11-28 10:24:26,610 INFO backend: settings: model_dir=/m device=cpu images={'mode': 'auto'} "
        "tiling={'size': 320, 'overlap': 64, 'merge': 'nms'}\n"
        "2026-11-28 10:24:26,934 INFO model.registry: published model version v0001\n"
    )
    tiling = logged_tiling(log)
    assert tiling == "{'size': 320, 'overlap': 64, 'merge': 'nms'}"
    check_tiling("tiled", tiling, 320)
    check_tiling("resized", "off", 320)
    with pytest.raises(RuntimeError, match="expected off"):
        check_tiling("resized", tiling, 320)
    with pytest.raises(RuntimeError, match=re.escape("expected {'size': 256,")):
        check_tiling("tiled", tiling, 256)
    with pytest.raises(RuntimeError, match="logged tiling=None"):
        check_tiling("tiled", logged_tiling("no settings line"), 320)


def test_count_outcomes():
    body = {"results": [{"result": [], "score": 0.0}, {"error": "task 2: a"}, {"error": "task 3: b"}]}
    assert count_outcomes(body) == (1, 2, "task 2: a")
    assert count_outcomes({"results": []}) == (0, 0, "")
    with pytest.raises(ValueError, match="expected a 'results' list"):
        count_outcomes({"detail": "no model"})


def test_memory_readers_on_this_process():
    if not Path("/proc/self/status").is_file():
        pytest.skip("Linux only")
    ballast = np.ones(64 * 2**20, np.uint8)  # 64 MiB resident while sampled
    with RssSampler(os.getpid(), interval=0.01) as sampler:
        ballast[::4096] = 2
    assert sampler.samples >= 2 and sampler.processes >= 1
    assert sampler.peak >= ballast.nbytes
    assert vm_hwm_mib(os.getpid()) >= sampler.peak / 2**20 - 1  # the high-water mark is never below a sample


def _result(mode: str, **changes) -> dict:
    values = dict(
        mode=mode, tasks=8, status=200, results=8, errors=0, first_error="", rss_started_mib=400.0,
        rss_loaded_mib=600.0, hwm_loaded_mib=650.0, peak_sampled_mib=1000.0, hwm_mib=1100.0, processes=1,
        samples=50, seconds=4.0, tiling="off",
    )  # fmt: skip
    values.update(changes)
    return values


def test_mode_result_peak_rate_and_ok():
    r = ModeResult(**_result("tiled"))
    assert (r.peak_mib, r.tasks_per_s, r.ok) == (1100.0, 2.0, True)
    assert ModeResult(**_result("tiled", peak_sampled_mib=1200.0)).peak_mib == 1200.0
    assert not ModeResult(**_result("tiled", results=7, errors=1)).ok
    assert not ModeResult(**_result("tiled", status=503, results=0, errors=8)).ok


def test_report_table_shows_each_mode_the_target_and_the_first_error():
    report = {
        "command": "python -m bench.memory --tasks 8",
        "utc": "2026-11-28 10:00:00",
        "commit": "abc1234",
        "cpus": 2,
        "load_start": 3.2,
        "load_end": 4.0,
        "setup": {
            "tasks": 8,
            "frames": 2,
            "size": 1024,
            "bit_depth": 8,
            "frame_mib": 1.5,
            "weights": "w.pt",
            "network_input": 160,
            "tile": 320,
            "overlap": 64,
            "predict_batch": None,
        },
        "modes": [
            _result("resized"),
            _result("tiled", hwm_mib=5000.0, results=7, errors=1, first_error="task 3: HTTP 404"),
        ],
    }
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "$ python -m bench.memory --tasks 8"
    assert "commit abc1234" in lines[1] and "load average 3.2 at start / 4.0 at end" in lines[1]
    assert "may be shared" in lines[1]
    assert "network input 160 px" in text and "PREDICT_BATCH default" in text
    resized = next(line for line in lines if line.strip().startswith("resized"))
    tiled = next(line for line in lines if line.strip().startswith("tiled "))
    assert resized.split()[1:5] == ["400", "600", "1000", "1100"] and resized.endswith("yes")
    assert "2.00" in resized.split()  # 8 tasks in 4 s
    assert tiled.endswith("NO") and tiled.split()[-3:-1] == ["7", "1"]
    assert "first error: task 3: HTTP 404" in text
    assert "backend settings: tiling=off" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "0"], "--tasks: expected >= 1"),
        (["--size", "16"], "--size: expected >= 32"),
        (["--modes", "resized,sliced"], "expected a comma-separated subset of resized,tiled"),
        (["--tile", "320", "--overlap", "200"], "--tile/--overlap"),
        (["--weights", "/no/such.pt"], "--weights: no file"),
        (["--predict-batch", "0"], "--predict-batch: expected >= 1"),
    ],
)
def test_cli_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
