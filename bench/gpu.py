"""The detector on a CUDA GPU against the same machine's CPU: training and prediction speed, agreement.

    python -m bench.gpu [--preset quick] [--seed 0] [--epochs 30] [--timing-epochs 3] [--out .work/bench-gpu]

One run, side by side, on the simulator's dataset of ``--preset`` (expert labels), through the benchmark's own
training path (``bench.workbench.Workbench``, the YOLO family, from its yaml: nothing is downloaded):

1. Training speed: the same training (``--timing-epochs`` epochs, the preset's image size and batch) on CUDA,
   where ``model.train`` trains in bfloat16 autocast, and on the CPU with every core. Seconds per epoch,
   start-up included on both sides.
2. A full training on CUDA (``--epochs``): its wall time and test AP50, then the same weights' test AP50
   predicted on the CPU (a CUDA-trained checkpoint must serve anywhere).
3. Prediction speed of those weights on the test images, milliseconds per image at batch 1 and 32, CUDA and
   CPU (after one warm-up pass each; reading and decoding the images included, as in the backend).
4. Agreement of the two devices' predictions of the same weights (score >= 0.25, the backend's display
   threshold): the share of boxes of either device with a box of the other at IoU >= 0.9, and the largest
   score difference of those pairs.

Exits 2 without doing anything when torch sees no CUDA device. On a CPU-only machine there is nothing to
compare; ``bench.simulate --device cuda`` and the backend's ``DEVICE=cuda`` are the paths this exercises.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.workbench import TRAIN_SPECS, Workbench
from model.detector import Detector, get_family
from selection.boxes import box_iou
from selection.detections import Detections

SHOW_CONF = 0.25  # the backend's default SCORE_THRESHOLD
SAME_IOU = 0.9


def agreement(
    a: Sequence[Detections], b: Sequence[Detections], *, conf: float = SHOW_CONF
) -> dict[str, float]:
    """How far two devices' predictions of the same images agree.

    Returns:
        ``boxes_a``, ``boxes_b`` (boxes at score >= conf), ``matched`` (share of the boxes of either side with
        a box of the other at IoU >= 0.9: matched boxes of a and of b over all boxes), ``max_score_diff`` over
        the matched pairs (each box of a paired with its best-IoU box of b).
    """
    n_a = n_b = hit_a = hit_b = 0
    worst = 0.0
    for da, db in zip(a, b, strict=True):
        ka = da.score >= conf if da.score is not None else np.ones(len(da), bool)
        kb = db.score >= conf if db.score is not None else np.ones(len(db), bool)
        xa, xb = da.xyxy[ka], db.xyxy[kb]
        n_a, n_b = n_a + len(xa), n_b + len(xb)
        if len(xa) == 0 or len(xb) == 0:
            continue
        iou = box_iou(xa, xb)
        hit_a += int(np.sum(iou.max(axis=1) >= SAME_IOU))
        hit_b += int(np.sum(iou.max(axis=0) >= SAME_IOU))
        if da.score is not None and db.score is not None:
            best = iou.argmax(axis=1)
            paired = iou.max(axis=1) >= SAME_IOU
            if paired.any():
                diff = np.abs(da.score[ka][paired] - db.score[kb][best[paired]])
                worst = max(worst, float(diff.max()))
    total = n_a + n_b
    return {
        "boxes_a": float(n_a),
        "boxes_b": float(n_b),
        "matched": (hit_a + hit_b) / total if total else 1.0,
        "max_score_diff": worst,
    }


def _predict_ms(detector: Detector, paths: list[Path], batch: int) -> tuple[float, list[Detections]]:
    """Milliseconds per image of one pass over ``paths`` (after a warm-up pass), and its predictions."""
    import torch

    def sync() -> None:  # CUDA runs asynchronously: wait for it before reading the clock
        if str(getattr(detector, "device", "cpu")).startswith("cuda"):
            torch.cuda.synchronize()

    detector.predict(paths[:batch], batch=batch)  # warm-up: CUDA context, cudnn autotuning, caches
    sync()
    start = time.perf_counter()
    preds = detector.predict(paths, batch=batch)
    sync()
    return (time.perf_counter() - start) * 1000.0 / len(paths), preds


def _row(name: str, cpu: float, cuda: float, unit: str, digits: int = 1) -> str:
    ratio = cpu / cuda if cuda > 0 else float("nan")
    return f"| {name} | {cpu:.{digits}f} {unit} | {cuda:.{digits}f} {unit} | {ratio:.1f}x |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick", choices=sorted(TRAIN_SPECS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the full CUDA training")
    parser.add_argument("--timing-epochs", type=int, default=3, help="epochs of the CPU-vs-CUDA timing run")
    parser.add_argument(
        "--cuda", default="cuda:0", help="the GPU to compare (cpu: a dry run of this script without a GPU)"
    )
    parser.add_argument("--out", default=".work/bench-gpu", help="work folder (dataset, runs)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and args.cuda.strip().lower() != "cpu":
        print("bench.gpu: torch sees no CUDA device on this machine; nothing to compare")
        return 2
    import synth
    from model.device import resolve_device

    cuda = resolve_device(args.cuda)
    out = Path(args.out).resolve()
    data_dir = out / f"{args.preset}-seed{args.seed}"
    if not (data_dir / "manifest.json").exists():
        synth.generate(synth.get_preset(args.preset), args.seed).write(data_dir)
    records = synth.SynthDataset.load(data_dir).images
    spec = TRAIN_SPECS[args.preset]
    devices = {"cpu": "cpu", "gpu": cuda}
    benches = {
        role: Workbench(records, out / role, replace(spec, device=device), seed=args.seed)
        for role, device in devices.items()
    }
    expert = {i: benches["cpu"].records[i].expert for i in benches["cpu"].train_ids}

    timing = {
        role: bench.train(f"timing-{args.timing_epochs}", expert, epochs=args.timing_epochs)
        for role, bench in benches.items()
    }
    full = benches["gpu"].train(f"full-{args.epochs}", expert, epochs=args.epochs)
    ap_on_cpu = benches["cpu"].test_ap(full.weights).ap50

    paths = [Path(benches["cpu"].records[i].path) for i in benches["cpu"].test_ids]
    speed: dict[tuple[str, int], float] = {}
    preds: dict[str, list[Detections]] = {}
    for role, device in devices.items():
        detector = get_family("yolo").load(full.weights, device=device)  # once per device, both batch sizes
        for batch in (1, 32):
            speed[role, batch], preds[role] = _predict_ms(detector, paths, batch)
    agree = agreement(preds["cpu"], preds["gpu"])

    name = torch.cuda.get_device_name(cuda) if cuda.startswith("cuda") else f"{cuda} (a dry run: no GPU)"
    print(
        f"# bench.gpu: {name} against the CPU of the same machine ({os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()})\n"
    )
    n_train = len(benches["cpu"].train_ids)
    bf16 = "yes" if cuda.startswith("cuda") and torch.cuda.is_bf16_supported() else "no"
    print(
        f"torch {torch.__version__}, bfloat16 {bf16}; preset "
        f"{args.preset} (seed {args.seed}): {n_train} training, {len(paths)} test images at "
        f"{spec.imgsz} px, batch {spec.batch}, yolov8n from its yaml, expert labels\n"
    )
    print("| step | CPU | CUDA | CPU / CUDA |")
    print("|---|---|---|---|")
    print(
        _row(
            f"training, s per epoch ({args.timing_epochs} epochs, start-up included)",
            timing["cpu"].seconds / args.timing_epochs,
            timing["gpu"].seconds / args.timing_epochs,
            "s",
            2,
        )
    )
    for batch in (1, 32):
        print(
            _row(f"prediction, batch {batch}, ms per image", speed["cpu", batch], speed["gpu", batch], "ms")
        )
    print()
    print(
        f"Full CUDA training, {args.epochs} epochs: {full.seconds:.0f} s; test AP50 {full.ap50:.3f} "
        f"predicted on CUDA, {ap_on_cpu:.3f} with the same weights on the CPU."
    )
    print(
        f"Agreement of the two devices' predictions (score >= {SHOW_CONF}): {agree['boxes_a']:.0f} boxes on "
        f"the CPU, {agree['boxes_b']:.0f} on CUDA; {agree['matched']:.1%} have a box of the other at IoU >= "
        f"{SAME_IOU}; largest score difference of a pair {agree['max_score_diff']:.3f}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
