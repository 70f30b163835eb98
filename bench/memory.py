"""Peak memory of the real backend process under one large ``/predict`` batch of large frames.

    python -m bench.memory [--tasks 100] [--frames 10] [--size 2048] [--bit-depth 8|16]
                           [--modes resized,tiled] [--weights PATH | --build-weights] [--imgsz 160]
                           [--tile 320] [--overlap 64] [--predict-batch N] [--seed 0] [--timeout 3600]
                           [--out .work/bench-memory]

What the issue's acceptance asks ("peak memory of the backend under a 100-task batch of 2048 px images stays
under 4 GiB"), measured on the process a user runs, not on the prediction path alone (``bench.tiling``
measures that in-process):

1. ``--frames`` distinct frames of the simulator's ``large`` preset (side ``--size``, their crowd labels) are
   written to the work folder, as 8-bit PNGs or (``--bit-depth 16``) 12-bit data in 16-bit PNGs, and served
   by a local HTTP server (``http.server`` on 127.0.0.1, a free port). ``--tasks`` tasks cycle over them,
   each with its own URL (``?task=N``): the backend downloads and decodes every task's image; its disk image
   cache (``IMAGE_CACHE_MB``, left at the backend's default) holds only images fetched from cloud storages
   through Label Studio, never plain http(s) URLs, so nothing is served from it here.
2. For each mode, a fresh ``python -m backend`` (no Label Studio, no Redis, ``DEVICE=cpu``): ``resized``
   (``TILE_SIZE=0``: whole frames shrunk to the network input) and ``tiled`` (``TILE_SIZE=--tile``,
   ``TILE_OVERLAP=--overlap``). The weights: ``--weights``, else the end-to-end tests' tiny YOLO
   (``.work/test-cache/e2e-initial-yolov8n-96.pt``, network input 96 px) when present and
   ``--build-weights`` is not given, else a yolov8n trained one epoch from ``yolov8n.yaml`` on these frames
   at ``--imgsz`` (nothing is downloaded; its boxes are meaningless, its memory is the architecture's). The
   network input the weights predict at is printed.
3. One warm-up ``/predict`` of a 64 px image loads the model; then one ``/predict`` with all the tasks. The
   resident memory (RSS) of the backend and its child processes, summed, is sampled every 0.1 s during the
   request; ``VmHWM`` of the backend process (its peak RSS since it started, from ``/proc/PID/status``) is
   read at the end. Every task must come back with a result (per-task errors are counted and the first one
   shown; the run exits 1 if any).

Prints a table and writes ``report.json`` in the work folder. The machine may be shared: other processes
stretch the wall time and tasks/s (the load average is printed at start and end), not the memory figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.tiling import TileConfig

REPO = Path(__file__).resolve().parents[1]
E2E_WEIGHTS = REPO / ".work" / "test-cache" / "e2e-initial-yolov8n-96.pt"
TARGET_MIB = 4096
"""The issue's bound on the backend's peak memory (4 GiB)."""
MODES = ("resized", "tiled")
WARMUP_IMAGE = "warmup.png"
MIB = 2**20


# ------------------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Frame:
    """One served frame.

    Attributes:
        path: the file, relative to the served folder (POSIX form).
        crowd_labels: the task's ``crowd_labels`` records (percent coordinates, see docs/CONTRACTS.md).
    """

    path: str
    crowd_labels: list[dict[str, Any]]


def to_12bit(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8-bit frame -> 12-bit data in a 16-bit container, as TEM cameras write it.

    Args:
        pixels: uint8 (H, W) frame.
        rng: fills the four new low bits (sensor noise below the 8-bit step).

    Returns:
        uint16 (H, W) in 0-4095; ``out >> 4`` gives ``pixels`` back.
    """
    if pixels.dtype != np.uint8:
        raise TypeError(f"pixels: expected uint8, got {pixels.dtype}")
    return (pixels.astype(np.uint16) << 4) | rng.integers(0, 16, pixels.shape, dtype=np.uint16)


def make_frames(root: Path, *, frames: int, size: int, seed: int, bit_depth: int) -> list[Frame]:
    """Write (or reuse) ``frames`` frames of the ``large`` preset at side ``size`` under ``root``.

    Args:
        root: the served folder; the simulator's dataset goes to ``root/large-<size>px-<frames>-seed<seed>``
            and the 16-bit copies to ``images16/`` inside it.
        frames: distinct frames.
        size: frame side in pixels.
        seed: simulator seed.
        bit_depth: 8 (the simulator's PNGs) or 16 (12-bit data in 16-bit PNGs).

    Returns:
        The frames, paths relative to ``root``.
    """
    from formats.images import write_image
    from synth import SynthDataset, generate, get_preset
    from synth.dataset import with_overrides
    from synth.writers import label_studio_tasks

    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth: expected 8 or 16, got {bit_depth}")
    config = with_overrides(get_preset("large"), image_size=size, n_train=frames, n_val=0, n_test=0)
    data_dir = root / f"large-{size}px-{frames}-seed{seed}"
    if (data_dir / "manifest.json").is_file():
        dataset = SynthDataset.load(data_dir)
    else:
        dataset = generate(config, seed, render=False).write(data_dir, contact_sheet=False)
    tasks = label_studio_tasks(dataset, data_dir, document_root=root)
    out: list[Frame] = []
    for record, task in zip(dataset.images, tasks, strict=True):
        rel = Path(record.path).resolve().relative_to(root.resolve())
        if bit_depth == 16:
            stem = data_dir / "images16" / record.id
            rel = stem.with_suffix(".png").relative_to(root)
            if not (root / rel).is_file():
                stem.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng([seed, int(record.id)])
                write_image(stem, to_12bit(dataset.pixels(record), rng))
        out.append(Frame(rel.as_posix(), list(task["data"]["crowd_labels"])))
    return out


def build_tasks(base_url: str, frames: Sequence[Frame], n_tasks: int) -> list[dict[str, Any]]:
    """``n_tasks`` Label Studio tasks cycling over ``frames``, each with its own image URL.

    Args:
        base_url: where the frames are served (``http://127.0.0.1:PORT``).
        frames: the frames, paths relative to the served folder.
        n_tasks: tasks to make (ids 1..n_tasks).

    Returns:
        Tasks ``{"id", "data": {"image": "<base>/<path>?task=<id>", "crowd_labels"}}``.

    >>> tasks = build_tasks("http://h:1", [Frame("a.png", []), Frame("b.png", [])], 3)
    >>> [t["data"]["image"] for t in tasks]
    ['http://h:1/a.png?task=1', 'http://h:1/b.png?task=2', 'http://h:1/a.png?task=3']
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks: expected >= 1, got {n_tasks}")
    if not frames:
        raise ValueError("frames: expected at least one frame, got none")
    base = base_url.rstrip("/")
    tasks = []
    for i in range(n_tasks):
        frame = frames[i % len(frames)]
        image = f"{base}/{frame.path}?task={i + 1}"
        tasks.append({"id": i + 1, "data": {"image": image, "crowd_labels": frame.crowd_labels}})
    return tasks


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files (the query string is ignored by ``SimpleHTTPRequestHandler``), without a log line each."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on 127.0.0.1 (a free port, one thread per request) while in the block.

    Yields:
        The base URL, ``http://127.0.0.1:PORT``.
    """
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-memory-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------------------------- memory


def vm_hwm_mib(pid: int) -> float:
    """Peak resident memory of process ``pid`` since it started, in MiB (``VmHWM``; Linux only).

    Raises:
        RuntimeError: no ``VmHWM`` line (not Linux, or a kernel thread).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status (Linux only)")


def family_rss(pid: int) -> tuple[int, int]:
    """Summed RSS in bytes of process ``pid`` and its descendants (shared pages counted in each), and how many
    processes that is. Processes that end while being read are skipped."""
    import psutil

    root = psutil.Process(pid)
    total, count = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
            count += 1
    return total, count


class RssSampler:
    """Peak of :func:`family_rss` of one process, sampled every ``interval`` seconds in a thread.

    Attributes:
        peak: the highest sum seen, bytes.
        processes: the most processes seen at once.
        samples: how many samples were taken.
    """

    def __init__(self, pid: int, *, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-memory-rss", daemon=True)

    def sample(self) -> None:
        """Take one sample now."""
        import psutil

        try:
            rss, count = family_rss(self.pid)
        except psutil.NoSuchProcess:  # the backend died: the request will fail and say so
            return
        self.peak = max(self.peak, rss)
        self.processes = max(self.processes, count)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


# --------------------------------------------------------------------------------------------- backend


def backend_env(
    mode: str,
    *,
    weights: Path,
    work: Path,
    tile: int,
    overlap: int,
    predict_batch: int | None = None,
) -> dict[str, str]:
    """The environment of the backend for one mode.

    Variables set to ``""`` fall back to the backend's defaults even when the caller's shell sets them (the
    backend reads an empty value as unset): no Label Studio, Redis, tasks file or basic auth; the image
    cache and ``PREDICT_BATCH`` (unless ``predict_batch``) at their defaults.

    Args:
        mode: ``resized`` (``TILE_SIZE=0``) or ``tiled``.
        weights: published as the first model version.
        work: this mode's folder (``models/`` and ``scratch/`` under it).
        tile: ``TILE_SIZE`` of the tiled mode.
        overlap: ``TILE_OVERLAP`` of the tiled mode.
        predict_batch: ``PREDICT_BATCH`` (``None``: the backend's default).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    env = {
        "MODEL_DIR": str(work / "models"),
        "MODEL_WEIGHTS": str(weights),
        "WORK_DIR": str(work / "scratch"),
        "DEVICE": "cpu",
        "LOG_LEVEL": "INFO",  # the settings line (tiling=...) goes to the log
        "BOOTSTRAP": "off",
        "TILE_SIZE": str(tile) if mode == "tiled" else "0",
        "TILE_OVERLAP": str(overlap) if mode == "tiled" else "",
        "TILE_MERGE": "",
        "PREDICT_BATCH": str(predict_batch) if predict_batch is not None else "",
        "IMAGE_CACHE_MB": "",
        "IMAGE_NORMALIZE": "",
        "LABEL_STUDIO_URL": "",
        "LABEL_STUDIO_API_KEY": "",
        "LOCAL_FILES_DOCUMENT_ROOT": "",
        "REDIS_URL": "",
        "TASKS_FILE": "",
        "BASIC_AUTH_USER": "",
        "BASIC_AUTH_PASS": "",
    }
    return env


@dataclass
class ModeResult:
    """One mode's measurement (memory in MiB)."""

    mode: str
    tasks: int
    status: int
    results: int
    errors: int
    first_error: str
    rss_started_mib: float
    rss_loaded_mib: float
    hwm_loaded_mib: float
    peak_sampled_mib: float
    hwm_mib: float
    processes: int
    samples: int
    seconds: float
    tiling: str

    @property
    def peak_mib(self) -> float:
        """The peak: the larger of the sampled family RSS and the backend's own ``VmHWM``."""
        return max(self.peak_sampled_mib, self.hwm_mib)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("nan")

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.results == self.tasks and self.errors == 0


def logged_tiling(log: str) -> str | None:
    """The ``tiling=`` value of the backend's settings line in its log (``off`` or the tile config), if any.

    >>> logged_tiling("INFO backend: settings: model_dir=/m device=cpu tiling=off")
    'off'
    """
    for line in log.splitlines():
        if " settings: " in line and " tiling=" in line:
            return line.rsplit(" tiling=", 1)[1].strip()
    return None


def check_tiling(mode: str, tiling: str | None, tile: int) -> None:
    """Raise ``RuntimeError`` unless the backend logged the tiling ``mode`` asks for (``tile`` px tiles)."""
    expected = "off" if mode == "resized" else f"{{'size': {tile},"
    if tiling is None or not tiling.startswith(expected):
        raise RuntimeError(f"{mode}: the backend logged tiling={tiling}, expected {expected}...")


def count_outcomes(body: Mapping[str, Any]) -> tuple[int, int, str]:
    """Results and per-task errors in a ``/predict`` answer, and the first error (``""`` if none).

    >>> count_outcomes({"results": [{"result": [], "score": 0.1}, {"error": "task 2: HTTP 404"}]})
    (1, 1, 'task 2: HTTP 404')
    """
    items = body.get("results")
    if not isinstance(items, list):
        raise ValueError(f"body: expected a 'results' list, got {type(items).__name__}")
    results = sum(1 for item in items if isinstance(item, dict) and "result" in item)
    errors = [str(item.get("error")) for item in items if isinstance(item, dict) and "result" not in item]
    return results, len(errors), errors[0] if errors else ""


def measure_mode(
    mode: str,
    *,
    env: Mapping[str, str],
    tasks: Sequence[Mapping[str, Any]],
    warmup: Mapping[str, Any],
    label_config: str,
    log: Path,
    timeout: float,
    tile: int,
) -> ModeResult:
    """Start a fresh backend, warm it up with one small task, post every task in one ``/predict``, measure.

    Args:
        mode: the mode's name (for the report).
        env: the backend's environment (:func:`backend_env`).
        tasks: the tasks of the big request.
        warmup: one task with a small image (loads the model).
        label_config: the labelling config sent with each request.
        log: the backend's log file.
        timeout: seconds allowed for the big request.
        tile: the tile side the tiled mode must run with (checked against the backend's log).
    """
    import psutil
    import requests

    from bench.procs import start_backend

    proc = start_backend(env, log, wait_s=300)
    try:
        pid = proc.popen.pid
        tiling = logged_tiling(proc.tail(100_000))
        check_tiling(mode, tiling, tile)
        started = psutil.Process(pid).memory_info().rss / MIB
        resp = requests.post(
            f"{proc.url}/predict", json={"tasks": [warmup], "label_config": label_config}, timeout=600
        )
        if resp.status_code != 200 or "result" not in resp.json()["results"][0]:
            raise RuntimeError(f"{mode}: warm-up /predict failed ({resp.status_code}): {resp.text[:500]}")
        loaded = psutil.Process(pid).memory_info().rss / MIB
        hwm_loaded = vm_hwm_mib(pid)
        body: dict[str, Any] = {"tasks": list(tasks), "label_config": label_config}
        with RssSampler(pid) as sampler:
            t0 = time.perf_counter()
            resp = requests.post(f"{proc.url}/predict", json=body, timeout=timeout)
            seconds = time.perf_counter() - t0
        hwm = vm_hwm_mib(pid)
        if resp.status_code == 200:
            results, errors, first = count_outcomes(resp.json())
        else:
            results, errors, first = 0, len(tasks), f"HTTP {resp.status_code}: {resp.text[:300]}"
    except Exception:
        print(f"backend log ({log}), last lines:\n{proc.tail(3000)}", file=sys.stderr)
        raise
    finally:
        proc.stop()
    return ModeResult(
        mode=mode,
        tasks=len(tasks),
        status=resp.status_code,
        results=results,
        errors=errors,
        first_error=first,
        rss_started_mib=round(started, 1),
        rss_loaded_mib=round(loaded, 1),
        hwm_loaded_mib=round(hwm_loaded, 1),
        peak_sampled_mib=round(sampler.peak / MIB, 1),
        hwm_mib=round(hwm, 1),
        processes=sampler.processes,
        samples=sampler.samples,
        seconds=round(seconds, 2),
        tiling=str(tiling),
    )


# --------------------------------------------------------------------------------------------- weights


def build_weights(out: Path, frames: Sequence[Path], labels: Sequence[Any], *, imgsz: int, seed: int) -> Path:
    """A yolov8n trained one epoch from ``yolov8n.yaml`` on ``frames`` at ``imgsz`` (cached in ``out``).

    One epoch from scratch leaves the network untrained; what it gives is a checkpoint the backend loads as
    any trained version (class ``deposit``, network input ``imgsz``), with nothing downloaded.

    Args:
        out: the folder of the cached weights and the training run.
        frames: training images.
        labels: ``selection.detections.Detections`` per frame (expert boxes).
        imgsz: network input size, pixels.
        seed: training seed.
    """
    from PIL import Image

    from model.dataset import LabeledImage
    from model.detector import get_family

    cached = out / f"yolov8n-1epoch-{imgsz}px.pt"
    if cached.is_file():
        return cached
    items = []
    for path, dets in zip(frames, labels, strict=True):
        with Image.open(path) as img:
            items.append(LabeledImage(Path(path), dets, img.width, img.height))
    run = get_family("yolo").train(
        train=items, val=items[:1], names=["deposit"], out_dir=out / "weights-run", init="yolov8n.yaml",
        epochs=1, batch=min(8, len(items)), imgsz=imgsz, seed=seed, device="cpu", validate=False, keep="last",
    )  # fmt: skip
    tmp = cached.with_suffix(".pt.part")
    shutil.copyfile(run.weights, tmp)
    tmp.rename(cached)
    shutil.rmtree(out / "weights-run", ignore_errors=True)
    return cached


def network_input(weights: Path) -> int | None:
    """The input size in pixels the weights were trained at, which the backend predicts at (None: unknown)."""
    from model.device import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    size = YOLO(str(weights), task="detect").overrides.get("imgsz")
    return int(size) if isinstance(size, int) else None


# ---------------------------------------------------------------------------------------------- report


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def format_report(report: Mapping[str, Any]) -> str:
    """The printed table of a report (as written to ``report.json``).

    Args:
        report: ``{"command", "utc", "commit", "cpus", "load_start", "load_end", "setup": {...},
            "modes": [ModeResult as a dict, ...]}``.
    """
    s = report["setup"]
    net = f"{s['network_input']} px" if s["network_input"] else "unknown"
    lines = [
        f"$ {report['command']}",
        f"bench.memory: {report['utc']} UTC, commit {report['commit']}, {report['cpus']} CPU cores, "
        f"load average {report['load_start']:.1f} at start / {report['load_end']:.1f} at end "
        "(the machine may be shared: that stretches the seconds, not the memory)",
        f"  {s['tasks']} tasks over {s['frames']} distinct {s['size']} px frames ({s['bit_depth']}-bit PNG, "
        f"{s['frame_mib']:.1f} MiB on disk in all), each task its own http URL; weights {s['weights']} "
        f"(network input {net}); tiles {s['tile']} px, overlap {s['overlap']} px; "
        f"PREDICT_BATCH {s['predict_batch'] or 'default'}",
        f"  {'mode':<8} {'started':>8} {'loaded':>8} {'peak (sampled)':>15} {'VmHWM':>8} {'seconds':>8} "
        f"{'tasks/s':>8} {'results':>8} {'errors':>7}  < {TARGET_MIB} MiB",
    ]
    for m in report["modes"]:
        peak = max(m["peak_sampled_mib"], m["hwm_mib"])
        rate = m["tasks"] / m["seconds"] if m["seconds"] > 0 else float("nan")
        lines.append(
            f"  {m['mode']:<8} {m['rss_started_mib']:>8.0f} {m['rss_loaded_mib']:>8.0f} "
            f"{m['peak_sampled_mib']:>15.0f} {m['hwm_mib']:>8.0f} {m['seconds']:>8.1f} {rate:>8.2f} "
            f"{m['results']:>8} {m['errors']:>7}  {'yes' if peak < TARGET_MIB else 'NO'}"
        )
        lines.append(f"    backend settings: tiling={m['tiling']}")
        if m["first_error"]:
            lines.append(f"    first error: {m['first_error'][:300]}")
    lines.append(
        "  MiB: RSS after start and after the model loaded (one warm-up task); peak (sampled): RSS of the "
        "backend and its children summed, every 0.1 s during the request; VmHWM: the backend's peak RSS "
        "since it started"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(MODES)}, got {text!r}"
        )
    return modes


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The whole benchmark; returns the report (also printed and written to ``<out>/report.json``)."""
    from formats.images import write_image
    from synth import SynthDataset
    from synth.writers import LABEL_CONFIG_XML

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    utc = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    served = out / "served"
    served.mkdir(exist_ok=True)
    frames = make_frames(served, frames=args.frames, size=args.size, seed=args.seed, bit_depth=args.bit_depth)
    write_image(served / Path(WARMUP_IMAGE).stem, np.full((64, 64), 128, np.uint8))
    if args.weights is not None:
        weights = args.weights.resolve()
    elif E2E_WEIGHTS.is_file() and not args.build_weights:
        weights = E2E_WEIGHTS
    else:
        dataset = SynthDataset.load(served / f"large-{args.size}px-{args.frames}-seed{args.seed}")
        weights = build_weights(
            out, [Path(r.path) for r in dataset.images], [r.expert for r in dataset.images],
            imgsz=args.imgsz, seed=args.seed,
        )  # fmt: skip
    setup = {
        "tasks": args.tasks,
        "frames": args.frames,
        "size": args.size,
        "bit_depth": args.bit_depth,
        "frame_mib": round(sum((served / f.path).stat().st_size for f in frames) / MIB, 2),
        "weights": str(weights),
        "network_input": network_input(weights),
        "tile": args.tile,
        "overlap": args.overlap,
        "predict_batch": args.predict_batch,
    }
    results: list[ModeResult] = []
    with serve_folder(served) as base_url:
        tasks = build_tasks(base_url, frames, args.tasks)
        warmup = {"id": 0, "data": {"image": f"{base_url}/{WARMUP_IMAGE}", "crowd_labels": []}}
        for mode in args.modes:
            print(
                f"bench.memory: {mode}: a fresh backend, then one /predict of {len(tasks)} tasks", flush=True
            )
            work = out / mode
            shutil.rmtree(work, ignore_errors=True)  # a fresh registry: the weights are published again
            env = backend_env(
                mode, weights=weights, work=work, tile=args.tile, overlap=args.overlap,
                predict_batch=args.predict_batch,
            )  # fmt: skip
            results.append(
                measure_mode(
                    mode, env=env, tasks=tasks, warmup=warmup, label_config=LABEL_CONFIG_XML,
                    log=work / "backend.log", timeout=args.timeout, tile=args.tile,
                )
            )  # fmt: skip
    report: dict[str, Any] = {
        "command": command,
        "utc": utc,
        "commit": _git_commit(),
        "cpus": os.cpu_count() or 1,
        "load_start": round(load_start, 2),
        "load_end": round(os.getloadavg()[0], 2),
        "target_mib": TARGET_MIB,
        "setup": setup,
        "modes": [
            {**asdict(r), "peak_mib": r.peak_mib, "tasks_per_s": round(r.tasks_per_s, 3)} for r in results
        ],
    }
    print(format_report(report), flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"  report: {out / 'report.json'}", flush=True)
    report["ok"] = all(r.ok for r in results)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100, help="tasks in the one /predict request")
    parser.add_argument("--frames", type=int, default=10, help="distinct frames the tasks cycle over")
    parser.add_argument("--size", type=int, default=2048, help="frame side, pixels")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG sample depth")
    parser.add_argument("--modes", type=_modes, default=list(MODES), help="comma-separated: resized,tiled")
    parser.add_argument("--weights", type=Path, help="a YOLO .pt (default: see the module docstring)")
    parser.add_argument(
        "--build-weights", action="store_true", help="use a yolov8n built here even if the e2e weights exist"
    )
    parser.add_argument("--imgsz", type=int, default=160, help="network input of built weights, pixels")
    parser.add_argument("--tile", type=int, default=320, help="TILE_SIZE of the tiled mode, pixels")
    parser.add_argument("--overlap", type=int, default=64, help="TILE_OVERLAP of the tiled mode, pixels")
    parser.add_argument("--predict-batch", type=int, help="PREDICT_BATCH (default: the backend's)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed of the frames")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for the big /predict")
    parser.add_argument("--out", default=".work/bench-memory", help="work folder (frames, runs, report)")
    args = parser.parse_args(argv)
    for name in ("tasks", "frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected >= 1, got {getattr(args, name)}")
    if args.size < 32:
        parser.error(f"--size: expected >= 32 pixels, got {args.size}")
    if args.imgsz < 32:
        parser.error(f"--imgsz: expected >= 32 pixels, got {args.imgsz}")
    if args.predict_batch is not None and args.predict_batch < 1:
        parser.error(f"--predict-batch: expected >= 1, got {args.predict_batch}")
    if args.timeout <= 0:
        parser.error(f"--timeout: expected > 0 seconds, got {args.timeout}")
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights: no file at {args.weights}")
    if args.weights is not None and args.build_weights:
        parser.error("--weights and --build-weights: give one or neither")
    try:
        TileConfig(size=args.tile, overlap=args.overlap)  # the backend's own check of TILE_SIZE/TILE_OVERLAP
    except ValueError as exc:
        parser.error(f"--tile/--overlap: {exc}")
    if not Path("/proc/self/status").is_file():
        parser.error("needs Linux (/proc/PID/status for VmHWM)")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".work" / "yolo-config"))
    os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".work" / "mpl"))
    command = shlex.join(["python", "-m", "bench.memory", *(sys.argv[1:] if argv is None else argv)])
    report = run(args, command)
    if not report["ok"]:
        print("bench.memory: some tasks got no result (see 'first error' above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
