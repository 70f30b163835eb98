"""Train a YOLO detector with ultralytics, offline, seeded, with everything written inside ``out_dir``."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.detector import EpochCallback, TrainResult
from model.device import configure_threads, import_ultralytics, resolve_device

logger = logging.getLogger(__name__)

# Arguments train_detector sets itself; passing them through ``extra`` would silently fight it.
_RESERVED = frozenset(
    {"data", "epochs", "imgsz", "batch", "seed", "device", "workers", "project", "name", "exist_ok", "val"}
)


def _resolve_init(init: str | Path) -> str:
    """A model yaml name from ultralytics' packaged cfg, or an existing weights file; never a download."""
    text = str(init)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"}:
        return text  # an existing file, or a packaged cfg such as "yolov8n.yaml" (ultralytics resolves it)
    if path.suffix == ".pt":
        if not path.is_file():
            raise FileNotFoundError(
                f"init: no weights file at {text!r}; pass an existing .pt path or a model yaml such as "
                "'yolov8n.yaml' (weights are never downloaded)"
            )
        return str(path.resolve())
    raise ValueError(f"init: expected a model .yaml or a .pt weights file, got {text!r}")


def train_detector(
    *,
    data_yaml: Path | str,
    init: str | Path = "yolov8n.yaml",
    out_dir: Path | str,
    epochs: int = 30,
    imgsz: int = 640,
    batch: int = 16,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    val: bool = True,
    amp: bool | None = None,
    threads: int | None = None,
    name: str = "train",
    verbose: bool = False,
    on_epoch: EpochCallback | None = None,
    extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a YOLO detector.

    Nothing is downloaded: ``plots=False`` (no fonts), pretrained weights only from ``init``, and AMP's
    self-check (which fetches ``yolo26n.pt``) is never run: on CPU AMP is off; on CUDA ``amp=True`` trains in
    bfloat16 autocast (``amp="bf16"`` in ultralytics, which skips the check) when the GPU supports it.

    Args:
        data_yaml: ultralytics data file (see ``model.dataset.write_yolo_dataset``).
        init: a model yaml (``"yolov8n.yaml"``: from scratch, built from ultralytics' packaged cfg) or a
            ``.pt`` checkpoint to warm-start from.
        out_dir: run folder; ultralytics writes ``out_dir/<name>/`` (weights, results.csv, args.yaml).
        epochs: epochs to train.
        imgsz: training image size in pixels (multiple of 32).
        batch: images per batch.
        seed: random seed; training is run with ``deterministic=True``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (see ``resolve_device``).
        workers: dataloader workers; default 0 on CPU, ``min(8, cpu_count)`` on CUDA.
        val: validate every epoch and keep ``best.pt`` by fitness; ``False`` validates only the last epoch.
        amp: mixed precision; ``None`` means on for CUDA (bf16 where supported), off on CPU.
        threads: torch CPU threads (default ``os.cpu_count()``).
        name: sub-folder of ``out_dir`` for this run.
        verbose: let ultralytics print per-epoch progress.
        on_epoch: called as ``on_epoch(epoch, total)`` (1-based) after each epoch, e.g. for progress reports.
        extra: further ultralytics train arguments (e.g. ``{"lr0": 0.005, "mosaic": 0.0}``).

    Returns:
        The checkpoint path, time, final metrics and epochs run.

    Raises:
        ValueError: bad sizes, an ``extra`` key that this function sets itself, or a bad device.
        FileNotFoundError: ``data_yaml`` or a ``.pt`` ``init`` is missing.
    """
    for arg, value in (("epochs", epochs), ("imgsz", imgsz), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}: expected a positive integer, got {value!r}")
    data_yaml = Path(data_yaml).resolve()
    if not data_yaml.is_file():
        raise FileNotFoundError(f"data_yaml: no file at {data_yaml}")
    extra = dict(extra or {})
    clash = sorted(_RESERVED & extra.keys())
    if clash:
        raise ValueError(f"extra: {clash} are set by train_detector's own arguments; pass them there")
    model_source = _resolve_init(init)
    torch_device = resolve_device(device)
    on_cuda = torch_device.startswith("cuda")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    import_ultralytics()
    import torch
    from ultralytics import YOLO

    if amp is None:
        amp = on_cuda
    amp_arg: bool | str = False
    if amp and on_cuda:
        if torch.cuda.is_bf16_supported():
            amp_arg = "bf16"
        else:
            logger.warning(
                "amp: this GPU has no bfloat16; training in fp32 (fp16 AMP's check downloads weights)"
            )
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if on_cuda else 0

    model = YOLO(model_source)
    n_threads = threads

    def _threads(_trainer: Any) -> None:
        configure_threads(n_threads)  # ultralytics' select_device resets threads to cpu_count - 1

    model.add_callback("on_pretrain_routine_start", _threads)
    model.add_callback("on_train_epoch_start", _threads)
    if on_epoch is not None:
        reported = [0]

        def _progress(trainer: Any) -> None:
            # ultralytics fires this once more after the final validation of best.pt: report each epoch once.
            epoch = min(int(trainer.epoch) + 1, int(trainer.epochs))
            if epoch > reported[0]:
                reported[0] = epoch
                on_epoch(epoch, int(trainer.epochs))

        model.add_callback("on_fit_epoch_end", _progress)

    args: dict[str, Any] = {
        "data": str(data_yaml),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "seed": seed,
        "deterministic": True,
        "device": "cpu" if not on_cuda else torch_device.split(":")[1],
        "workers": workers,
        "project": str(out_dir),
        "name": name,
        "exist_ok": True,
        "val": val,
        "plots": False,
        "amp": amp_arg,
        "verbose": verbose,
        **extra,
    }
    logger.info(
        "training %s on %s: %d epochs, imgsz %d, batch %d", model_source, torch_device, epochs, imgsz, batch
    )
    start = time.perf_counter()
    model.train(**args)
    seconds = time.perf_counter() - start
    trainer: Any = model.trainer
    if trainer is None:
        raise RuntimeError("ultralytics returned from train() without a trainer")
    weights_dir = Path(trainer.save_dir) / "weights"
    weights = weights_dir / "best.pt"
    if not val or not weights.is_file():
        weights = weights_dir / "last.pt"
    if not weights.is_file():
        raise RuntimeError(f"training finished without a checkpoint in {weights_dir}")
    metrics: dict[str, float] = {}
    for key, value in dict(trainer.metrics or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            metrics[str(key)] = number
    epochs_run = int(trainer.epoch) + 1
    logger.info("trained %d epochs in %.1f s -> %s", epochs_run, seconds, weights)
    return TrainResult(weights=weights, seconds=seconds, metrics=metrics, epochs=epochs_run)
