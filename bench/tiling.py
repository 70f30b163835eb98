"""Tiled against resized inference on large frames: AP50, time per megapixel, peak memory of prediction.

    python -m bench.tiling [--seed 0] [--n-train 4] [--n-val 1] [--n-test 6] [--tile 320] [--overlap 64]
                           [--imgsz 160] [--epochs 30] [--batch 8] [--frame-epochs 0] [--frame-imgsz 0]
                           [--frame-repeat 0] [--memory 10,100]
                           [--memory-model 10] [--chunk 16] [--threads N] [--out .work/bench-tiling]

One run, side by side, on the ``large`` simulator preset (2048 px frames, deposits of 15-60 px):

1. A detector (the YOLO family, from scratch: nothing is downloaded) is trained on the tiles of the training
   frames (``model.tiling.tile_dataset``, expert labels), at the tile size, or at ``--imgsz`` (the tiles
   shrunk to it: cheaper on a CPU, as the backend does with ``TRAIN_IMGSZ``).
2. On the test frames (expert labels; COCO-style AP50), the same raw tile predictions are merged three ways:
   cut-aware NMS and WBF (``model.tiling``), and plain NMS (IoU 0.5, no notion of cut boxes) to show what
   the cut-aware merge is worth. *Resized*: the same detector on the whole frame shrunk to its input size,
   i.e. what prediction without tiling does. With ``--frame-epochs N``, also a detector trained N epochs on
   the whole frames shrunk to ``--frame-imgsz`` (a pipeline with no tiling at all, the one a lab with a GPU
   would try: e.g. 1024 px). Its frames repeat in each epoch (``--frame-repeat``; by default as often as
   makes an epoch as long as the tile model's, ``model.dataset.epoch_repeats``), so with the same epochs and
   batch both detectors take the same number of gradient steps. Off by default: on this CPU an epoch of a
   few 2048 px frames at a large input costs far more than one of a hundred tiles.
3. Time per megapixel of the tiled and the resized prediction: wall and process CPU seconds (the CPU may be
   shared with other work; CPU seconds are the steadier figure). Both predict at the AP confidence floor
   (0.001); the tiled figure includes the cross-tile merge (NMS) of those many low-score boxes, more than
   the backend's ``PREDICT_CONF`` (0.01) leaves.
4. Peak memory of the prediction path, each in a fresh child process (peak RSS = ``VmHWM``): N frames are
   streamed in chunks of ``--chunk`` frames (read, predict, keep only the boxes, as the backend's ``/predict``
   does per ``PREDICT_BATCH``). Bounded streaming shows as a peak that does not grow with N. Rows: the
   tiled path with the trained YOLO for each N of ``--memory-model`` (a 2048 px frame is 64 tiles of 320
   px: a minute or more per 10 frames on this CPU); the same path with the network replaced by a stub that
   finds nothing (decoding, tiling, chunking and merging only) and the resized path with YOLO, for each N
   of ``--memory``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metrics.ap import evaluate_ap
from model.dataset import LabeledImage, epoch_repeats
from model.detector import get_family
from model.tiling import Merge, TileConfig, TiledDetector, TilePrediction, tile_dataset
from selection.boxes import pair_geometry
from selection.detections import Detections

AP_CONF = 0.001
"""Confidence floor for AP: COCO-style AP needs the low-score tail."""


def plain_nms(tp: TilePrediction, *, iou: float = 0.5) -> Detections:
    """Tile boxes mapped to the frame and merged by ordinary greedy NMS (no cut-box handling).

    Args:
        tp: raw tile detections of one frame.
        iou: NMS IoU threshold.
    """
    parts = [
        Detections(det.xyxy + win[[0, 1, 0, 1]].astype(np.float32), det.class_id, det.score)
        for det, win in zip(tp.tiles, tp.windows, strict=True)
        if len(det)
    ]
    if not parts:
        return Detections.empty(with_score=True)
    every = Detections.concat(parts)
    assert every.score is not None
    order = np.argsort(-every.score, kind="stable")
    overlap, _ = pair_geometry(every.xyxy[order], every.xyxy[order])
    keep = np.ones(len(order), bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= overlap[i, i + 1 :] < iou
    return every.subset(order[keep]).clip(tp.width, tp.height)


def frame_arm(imgsz: int) -> str:
    """The AP table's row of the whole-frame model trained and predicting at ``imgsz``."""
    return f"whole frame at {imgsz} px, frame model"


def _labelled(records: Sequence) -> list[LabeledImage]:
    return [LabeledImage(Path(r.path), r.expert, r.width, r.height) for r in records]


def _megapixels(records: Sequence) -> float:
    return sum(r.width * r.height for r in records) / 1e6


def _peak_rss_mib() -> float:
    """Peak resident set size of this process image in MiB: ``VmHWM`` (``ru_maxrss`` survives ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


class _Nothing:
    """A stub network for the memory probe: finds nothing, costs nothing."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.version = "stub"

    def predict(self, images: Sequence, *, conf: float = 0.01, batch: int = 16) -> list[Detections]:
        return [Detections.empty(with_score=True) for _ in images]


PROBE_MODES = ("tiled", "tiled-stub", "resized")


def memory_probe(
    weights: Path, paths: Sequence[Path], *, mode: str, n_images: int, chunk: int, config: TileConfig
) -> dict:
    """Stream ``n_images`` frames (cycling over ``paths``) through prediction; report peak memory and time.

    Args:
        weights: the trained checkpoint.
        paths: frame files.
        mode: ``tiled`` (YOLO tile by tile), ``tiled-stub`` (the tiled path around a stub network) or
            ``resized`` (YOLO on whole frames).
        n_images: frames to stream.
        chunk: frames read and predicted at a time.
        config: the tiling.

    Run it in a fresh process (``--probe``), so that the peak is this path's alone.
    """
    from PIL import Image

    network = get_family("yolo").load(weights, device="cpu")
    detector = network
    if mode == "tiled-stub":
        detector = TiledDetector(_Nothing(list(network.names)), config)
        del network
    elif mode == "tiled":
        detector = TiledDetector(network, config)
    loaded = _peak_rss_mib()
    start = time.perf_counter()
    n_boxes = 0
    for first in range(0, n_images, chunk):
        pixels = []  # like the backend, one chunk of frames is held at a time
        for i in range(first, min(first + chunk, n_images)):
            with Image.open(paths[i % len(paths)]) as img:
                pixels.append(np.asarray(img.convert("L")))
        n_boxes += sum(len(d) for d in detector.predict(pixels, conf=0.01, batch=chunk))
        del pixels
    return {
        "mode": mode,
        "images": n_images,
        "chunk": chunk,
        "peak_rss_after_load_mib": round(loaded, 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
        "seconds": round(time.perf_counter() - start, 1),
        "boxes": n_boxes,
    }


def _probe_in_child(
    weights: Path, paths: Sequence[Path], mode: str, n_images: int, chunk: int, config: TileConfig
) -> dict:
    cmd = [
        sys.executable, "-m", "bench.tiling", "--probe", str(weights), "--probe-mode", mode,
        "--probe-images", str(n_images), "--chunk", str(chunk), "--tile", str(config.size),
        "--overlap", str(config.overlap), "--probe-paths", *map(str, paths),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _timed(fn):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark; returns the report (also printed)."""
    from synth import generate, get_preset
    from synth.dataset import with_overrides

    out = Path(args.out).resolve()
    config = TileConfig(size=args.tile, overlap=args.overlap)
    imgsz = args.imgsz or config.size
    sim = with_overrides(get_preset("large"), n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
    data_dir = out / f"data-seed{args.seed}-{sim.n_train}-{sim.n_val}-{sim.n_test}"
    t0 = time.perf_counter()
    if (data_dir / "manifest.json").is_file():
        from synth import SynthDataset

        dataset = SynthDataset.load(data_dir)
    else:
        dataset = generate(sim, args.seed, render=False).write(data_dir, contact_sheet=False)
    gen_seconds = time.perf_counter() - t0
    train, val, test = (dataset.split(s) for s in ("train", "val", "test"))
    family = get_family("yolo")
    report: dict = {
        "preset": "large",
        "frames": {"train": len(train), "val": len(val), "test": len(test), "side_px": sim.image_size},
        "tiling": config.as_dict(),
        "imgsz": imgsz,
        "generate_seconds": round(gen_seconds, 1),
    }

    tiles_train = tile_dataset(_labelled(train), out / "tiles" / "train", config=config)
    tiles_val = tile_dataset(_labelled(val), out / "tiles" / "val", config=config)
    tile_run = family.train(
        train=tiles_train, val=tiles_val, names=["deposit"], out_dir=out / "tile-model", epochs=args.epochs,
        batch=args.batch, imgsz=imgsz, seed=args.seed, device=args.device, validate=False, keep="last",
        threads=args.threads,
    )  # fmt: skip
    report["training"] = {
        "tile_model": {
            "tiles": len(tiles_train),
            "epochs": args.epochs,
            "seconds": round(tile_run.seconds, 1),
        }
    }
    frame_run = None
    frame_imgsz = args.frame_imgsz or imgsz
    if args.frame_epochs:
        repeat = args.frame_repeat or epoch_repeats(len(train), len(tiles_train))
        frames = [image for image in _labelled(train) for _ in range(repeat)]
        frame_run = family.train(
            train=frames, val=_labelled(val), names=["deposit"], out_dir=out / "frame-model",
            epochs=args.frame_epochs, batch=args.batch, imgsz=frame_imgsz, seed=args.seed, device=args.device,
            validate=False, keep="last", threads=args.threads,
        )  # fmt: skip
        report["training"]["frame_model"] = {
            "frames": len(train),
            "repeat": repeat,
            "imgsz": frame_imgsz,
            "epochs": args.frame_epochs,
            "seconds": round(frame_run.seconds, 1),
        }

    paths = [Path(r.path) for r in test]
    gt = [r.expert for r in test]
    mp = _megapixels(test)
    tile_model = family.load(tile_run.weights, device=args.device)
    tiled = TiledDetector(tile_model, config)
    tile_model.predict(paths[:1], conf=AP_CONF, batch=args.batch)  # warm-up outside the timings
    raw, wall_tiled, cpu_tiled = _timed(lambda: list(tiled.iter_tiles(paths, conf=AP_CONF, batch=args.batch)))
    merged, cpu_merge = {}, 0.0
    for method in Merge:
        cfg = dataclasses.replace(config, merge=method)
        merged[method.value], wall, cpu = _timed(lambda cfg=cfg: [tp.merge(cfg) for tp in raw])
        if method is Merge.NMS:
            wall_tiled, cpu_tiled, cpu_merge = wall_tiled + wall, cpu_tiled + cpu, cpu
    resized, wall_resized, cpu_resized = _timed(
        lambda: tile_model.predict(paths, conf=AP_CONF, batch=args.batch)
    )
    arms = {
        "tiled, cut-aware NMS": merged["nms"],
        "tiled, cut-aware WBF": merged["wbf"],
        "tiled, plain NMS (no cut handling)": [plain_nms(tp) for tp in raw],
        "resized frame, tile model": resized,
    }
    frame_speed = None
    if frame_run is not None:
        frame_model = family.load(frame_run.weights, device=args.device)
        frame_model.predict(paths[:1], conf=AP_CONF, batch=args.batch)  # warm-up outside the timings
        arms[frame_arm(frame_imgsz)], wall_frame, cpu_frame = _timed(
            lambda: frame_model.predict(paths, conf=AP_CONF, batch=args.batch)
        )
        frame_speed = {"wall": round(wall_frame / mp, 3), "cpu": round(cpu_frame / mp, 3)}
    report["ap"] = {}
    for name, preds in arms.items():
        ap = evaluate_ap(gt, preds)
        report["ap"][name] = {"ap50": round(100 * ap.ap50, 2), "ap50_95": round(100 * ap.ap50_95, 2)}
    report["ap_n_gt"] = int(sum(len(g) for g in gt))
    report["speed"] = {
        "megapixels": round(mp, 2),
        "tiles_per_frame": round(sum(len(tp.windows) for tp in raw) / len(raw), 1),
        "tiled_s_per_mp": {"wall": round(wall_tiled / mp, 3), "cpu": round(cpu_tiled / mp, 3)},
        "merge_cpu_s_per_mp": round(cpu_merge / mp, 3),
        "resized_s_per_mp": {"wall": round(wall_resized / mp, 3), "cpu": round(cpu_resized / mp, 3)},
    }
    if frame_speed is not None:
        report["speed"]["frame_s_per_mp"] = frame_speed
    probes = [("tiled", n) for n in args.memory_model]
    probes += [(mode, n) for mode in ("tiled-stub", "resized") for n in args.memory]
    report["memory"] = [_probe_in_child(tile_run.weights, paths, m, n, args.chunk, config) for m, n in probes]
    _print(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def _print(report: dict) -> None:
    f, t, tile = report["frames"], report["tiling"], report["training"]["tile_model"]
    lines = [
        f"bench.tiling: preset large, {f['side_px']} px frames; train {f['train']} / val {f['val']} / "
        f"test {f['test']} frames ({report['ap_n_gt']} test deposits); tiles {t['size']} px, "
        f"overlap >= {t['overlap']} px; network input {report['imgsz']} px",
        f"  tile model:  {tile['tiles']} training tiles, {tile['epochs']} epochs, {tile['seconds']} s",
    ]
    frame = report["training"].get("frame_model")
    if frame:
        lines.append(
            f"  frame model: {frame['frames']} whole frames at {frame['imgsz']} px, each {frame['repeat']} "
            f"times per epoch, {frame['epochs']} epochs, {frame['seconds']} s"
        )
    lines.append(f"  {'AP on the test frames':<40} {'AP50':>6} {'AP50:95':>8}")
    for name, ap in report["ap"].items():
        lines.append(f"  {name:<40} {ap['ap50']:>6.2f} {ap['ap50_95']:>8.2f}")
    ap50 = {name: ap["ap50"] for name, ap in report["ap"].items()}
    best = max(ap50["tiled, cut-aware NMS"], ap50["tiled, cut-aware WBF"])
    lines.append(
        f"  tiled - resized: {best - ap50['resized frame, tile model']:+.2f} AP50 points (same model)"
    )
    if frame:
        lines.append(
            f"  tiled - whole frame: {best - ap50[frame_arm(frame['imgsz'])]:+.2f} AP50 points (each its own "
            f"model, same epochs, batch and gradient steps)"
        )
    sp = report["speed"]
    tiled, resized = sp["tiled_s_per_mp"], sp["resized_s_per_mp"]
    lines.append(
        f"  seconds per megapixel ({sp['megapixels']} MP, {sp['tiles_per_frame']} tiles per frame): "
        f"tiled {tiled['wall']} wall / {tiled['cpu']} CPU (merge {sp['merge_cpu_s_per_mp']} CPU); "
        f"resized {resized['wall']} wall / {resized['cpu']} CPU"
        + (f"; whole frame {fr['wall']} wall / {fr['cpu']} CPU" if (fr := sp.get("frame_s_per_mp")) else "")
    )
    for m in report["memory"]:
        lines.append(
            f"  memory, {m['mode']:<10} {m['images']:>4} frames in chunks of {m['chunk']}: peak RSS "
            f"{m['peak_rss_mib']:.0f} MiB (model loaded: {m['peak_rss_after_load_mib']:.0f} MiB), "
            f"{m['seconds']} s"
        )
    print("\n".join(lines), flush=True)


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=4, help="training frames")
    parser.add_argument("--n-val", type=int, default=1, help="validation frames")
    parser.add_argument("--n-test", type=int, default=6, help="test frames")
    parser.add_argument("--tile", type=int, default=320, help="tile side, pixels")
    parser.add_argument(
        "--imgsz", type=int, default=160, help="network input size, pixels (0: the tile side)"
    )
    parser.add_argument("--overlap", type=int, default=64, help="minimum tile overlap, pixels")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the tile model")
    parser.add_argument("--batch", type=int, default=8, help="training batch, and tiles per forward pass")
    parser.add_argument("--frame-epochs", type=int, default=0, help="epochs of a whole-frame model (0: none)")
    parser.add_argument(
        "--frame-imgsz", type=int, default=0, help="the whole-frame model's input size, pixels (0: --imgsz)"
    )
    parser.add_argument(
        "--frame-repeat",
        type=int,
        default=0,
        help="times each frame appears per epoch of the whole-frame model (0: as many as the tile model's "
        "epoch holds images, so both take the same gradient steps)",
    )
    parser.add_argument("--chunk", type=int, default=16, help="frames per prediction chunk (PREDICT_BATCH)")
    parser.add_argument("--memory", type=_counts, default=[10, 100], help="frame counts: stub and resized")
    parser.add_argument("--memory-model", type=_counts, default=[10], help="frame counts: tiled YOLO")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads of the trainings (default: every core; 1 on a shared machine)",
    )
    parser.add_argument("--out", default=".work/bench-tiling", help="work folder (datasets, runs)")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # child: weights of the memory probe
    parser.add_argument("--probe-images", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--probe-mode", choices=PROBE_MODES, default="tiled", help=argparse.SUPPRESS)
    parser.add_argument("--probe-paths", nargs="*", type=Path, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        config = TileConfig(size=args.tile, overlap=args.overlap)
        result = memory_probe(args.probe, args.probe_paths, mode=args.probe_mode, n_images=args.probe_images,
                              chunk=args.chunk, config=config)  # fmt: skip
        print(json.dumps(result))
        return 0
    try:
        TileConfig(size=args.tile, overlap=args.overlap)
    except ValueError as exc:
        parser.error(str(exc))
    if args.frame_epochs < 0:
        parser.error(f"--frame-epochs: expected >= 0, got {args.frame_epochs}")
    for name in ("imgsz", "frame_imgsz", "frame_repeat"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}: expected >= 0, got {getattr(args, name)}")
    for name in ("n_train", "n_val", "n_test", "epochs", "batch", "chunk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
