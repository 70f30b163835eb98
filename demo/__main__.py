"""``python -m demo`` (``make demo``): synthetic data, an initial model, Label Studio and the backend.

Steps (each reuses what an earlier run left in ``.work/demo``):

1. generate the synthetic dataset (``synth``) into ``.work/demo/data``;
2. train the initial detector the way the benchmark trains its first cleaning model (the method's starting
   point): pre-train from scratch on the crowd labels of all training images, then fine-tune on the expert
   labels of a random seed set; both stages are cached in ``.work/demo/initial``;
3. start Label Studio (SQLite, 127.0.0.1, port 8080 or the next free one) and the backend (9090 or next);
4. create the project (labelling config, Local Files storage, tasks with crowd labels), import the seed set's
   expert labels as annotations, connect the backend, bulk-score every task not yet expert-annotated (the
   backend's ``POST /rescore`` job) and add a Data Manager tab sorted "most suspicious first";
5. print the URL, the login and what to click, and run until Ctrl-C (or SIGTERM, SIGHUP), which stops both
   servers.

One demo runs per work folder: ``<work>/demo.pid`` is locked while it runs and lists its servers' process
groups, so a next run refuses to start beside a running one and ends what a killed one left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from demo import labelstudio as lsh
from demo.runlock import DemoAlreadyRunningError, DemoLock

logger = logging.getLogger("demo")

REPO = lsh.REPO
PROJECT_TITLE = "Deposits: active label cleaning"
BACKEND_TITLE = "active-label-cleaning"
# Task data fields the backend writes; an expert-annotated task drops them (it is out of the review pool).
SCORE_FIELDS = ("discrepancy", "priority", "noise_grade", "noise_types", "model_version")


@dataclass(frozen=True)
class InitialModel:
    """The demo's starting detector and how it was made.

    Attributes:
        weights: the fine-tuned checkpoint (``.pt``) the backend publishes as its first version.
        key: cache key of the fine-tuning stage (covers the pre-training's settings too).
        seed_image_ids: dataset ids (``"000012"``) of the training images in the expert seed set.
        pretrain_seconds: wall time of the pre-training on crowd labels (0 when skipped), seconds.
        finetune_seconds: wall time of the fine-tuning on the seed set, seconds.
        val_map50: mAP50 on the val split's expert labels after the last epoch (NaN if not reported).
    """

    weights: Path
    key: str
    seed_image_ids: tuple[str, ...]
    pretrain_seconds: float
    finetune_seconds: float
    val_map50: float


def _step(n: int, total: int, text: str) -> None:
    logger.info("[%d/%d] %s", n, total, text)


class OptionsChangedError(ValueError):
    """The work folder holds data made with other options than this run's."""


def generate_dataset(data_dir: Path, document_root: Path, *, preset: str, seed: int) -> None:
    """Run the simulator unless ``data_dir`` already holds a dataset (of this ``preset`` and ``seed``).

    Raises:
        OptionsChangedError: the dataset there was made with another preset or seed (its ``manifest.json``
            records both); the message says how to start afresh.
    """
    manifest = data_dir / "manifest.json"
    if (data_dir / "label_studio" / "tasks.json").exists() and manifest.exists():
        made = json.loads(manifest.read_text())
        if (made.get("preset"), made.get("seed")) != (preset, seed):
            raise OptionsChangedError(
                f"--preset {preset} --seed {seed}: the demo folder {data_dir.parent} holds a dataset made "
                f"with --preset {made.get('preset')} --seed {made.get('seed')} (and a project built on it); "
                "run with those options, or start afresh: `make clean` (removes .work), or another --work"
            )
        logger.info("dataset: reusing %s", data_dir)
        return
    cmd = [
        sys.executable,
        "-m",
        "synth",
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--out",
        str(data_dir),
        "--ls-document-root",
        str(document_root),
    ]
    logger.info("dataset: %s", " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, cwd=REPO)


def _digest(*parts: Any) -> str:
    """A short stable key of JSON-serialisable settings (cache folder names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _train_stage(
    name: str,
    *,
    stage_dir: Path,
    train: list[Any],
    val: list[Any],
    init: str | Path,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    device: str,
    threads: int | None,
) -> tuple[Path, float, dict[str, float]]:
    """One cached training stage in ``stage_dir``: (weights, seconds, final validation metrics).

    A finished stage leaves ``stage_dir/weights.pt`` and ``stage_dir/result.json``; both are reused.
    """
    from model.dataset import write_yolo_dataset
    from model.train import train_detector

    target, info = stage_dir / "weights.pt", stage_dir / "result.json"
    if target.is_file() and info.is_file():
        cached = json.loads(info.read_text())
        logger.info("%s: reusing %s (trained in %.0f s)", name, target, cached["seconds"])
        return target, float(cached["seconds"]), dict(cached.get("metrics", {}))
    data_yaml = write_yolo_dataset(stage_dir / "dataset", train=train, val=val, names=["deposit"])
    logger.info("%s: %d images, %d epochs at %d px (init %s) ...", name, len(train), epochs, imgsz, init)

    def on_epoch(epoch: int, total: int) -> None:
        logger.info("%s: epoch %d/%d", name, epoch, total)

    result = train_detector(
        data_yaml=data_yaml,
        init=init,
        out_dir=stage_dir / "runs",
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        device=device,
        val=False,  # validating every epoch would cost more than the training on CPU; last epoch only
        threads=threads,
        on_epoch=on_epoch,
    )
    target.write_bytes(Path(result.weights).read_bytes())
    metrics = {k: float(v) for k, v in result.metrics.items()}
    info.write_text(json.dumps({"seconds": result.seconds, "metrics": metrics, "epochs": epochs}, indent=1))
    logger.info(
        "%s: done in %.0f s, val mAP50 %.3f -> %s",
        name,
        result.seconds,
        metrics.get("metrics/mAP50(B)", float("nan")),
        target,
    )
    return target, result.seconds, metrics


def train_initial_model(
    data_dir: Path,
    out_dir: Path,
    *,
    seed_fraction: float,
    pretrain_epochs: int,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    device: str,
    threads: int | None = None,
) -> InitialModel:
    """The method's starting point, trained the way the benchmark trains its first cleaning model.

    1. pre-train from scratch (``yolov8n.yaml``) on the *crowd* labels of all training images (cheap labels
       stand in for pretrained weights, which are never downloaded here), ``pretrain_epochs`` epochs;
    2. fine-tune that checkpoint on the *expert* labels of a random ``seed_fraction`` of the training images
       (the seed set the experts re-annotated first), ``epochs`` epochs.

    Both stages validate once, after their last epoch, on the expert labels of the val split. Each is cached
    under ``out_dir/<stage>-<key>``, the key covering the dataset and every setting that shapes it, so a
    re-run reuses them and a changed setting retrains.

    Args:
        data_dir: the synthetic dataset (``manifest.json``).
        out_dir: cache folder (``.work/demo/initial``).
        seed_fraction: share of the training images in the expert seed set, in (0, 1].
        pretrain_epochs: epochs on the crowd labels; 0 skips the pre-training (from scratch on the seed set).
        epochs: fine-tuning epochs on the seed set (>= 1).
        imgsz: training image size in pixels (multiple of 32).
        batch: images per batch.
        seed: seed of the seed-set draw and of both trainings.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        threads: torch CPU threads (None: all cores). On a CPU shared with other busy processes, 1 thread
            is several times faster than 2 (no threads spinning at barriers while their peer waits).
    """
    if not 0 < seed_fraction <= 1:
        raise ValueError(f"seed_fraction: expected in (0, 1], got {seed_fraction}")
    if pretrain_epochs < 0:
        raise ValueError(f"pretrain_epochs: expected >= 0, got {pretrain_epochs}")
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    import numpy as np

    from model.dataset import LabeledImage
    from synth import SynthDataset

    dataset = SynthDataset.load(data_dir)
    train = [r for r in dataset.images if r.split == "train"]
    val = [r for r in dataset.images if r.split == "val"]
    rng = np.random.default_rng(seed)
    n_seed = min(len(train), max(2, round(seed_fraction * len(train))))
    chosen = sorted(rng.choice(len(train), size=n_seed, replace=False).tolist())
    seed_ids = [train[i].id for i in chosen]

    def labeled(record: Any, boxes: Any) -> LabeledImage:
        return LabeledImage(path=Path(record.path), labels=boxes, width=record.width, height=record.height)

    val_set = [labeled(r, r.expert) for r in val] or [labeled(train[chosen[0]], train[chosen[0]].expert)]
    data_key = hashlib.sha256((data_dir / "manifest.json").read_bytes()).hexdigest()[:16]
    common = {"data": data_key, "imgsz": imgsz, "batch": batch, "seed": seed, "device": device}
    t_start = time.monotonic()
    init: str | Path = "yolov8n.yaml"
    pre_seconds = 0.0
    pre_key = "none"
    if pretrain_epochs:
        pre_key = _digest("crowd", common, pretrain_epochs)
        init, pre_seconds, _ = _train_stage(
            "pre-training on crowd labels",
            stage_dir=out_dir / f"crowd-{pre_key}",
            train=[labeled(r, r.crowd) for r in train],
            val=val_set,
            init="yolov8n.yaml",
            epochs=pretrain_epochs,
            imgsz=imgsz,
            batch=batch,
            seed=seed,
            device=device,
            threads=threads,
        )
    seed_key = _digest("seed", common, pre_key, epochs, seed_ids)
    weights, seed_seconds, metrics = _train_stage(
        "fine-tuning on the expert seed set",
        stage_dir=out_dir / f"seed-{seed_key}",
        train=[labeled(train[i], train[i].expert) for i in chosen],
        val=val_set,
        init=init,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        device=device,
        threads=threads,
    )
    model = InitialModel(
        weights=weights,
        key=seed_key,
        seed_image_ids=tuple(seed_ids),
        pretrain_seconds=pre_seconds,
        finetune_seconds=seed_seconds,
        val_map50=float(metrics.get("metrics/mAP50(B)", float("nan"))),
    )
    (out_dir / "initial.json").write_text(
        json.dumps(
            {
                "weights": str(weights),
                "seed_images": seed_ids,
                "pretrain_epochs": pretrain_epochs,
                "epochs": epochs,
                "pretrain_seconds": pre_seconds,
                "finetune_seconds": seed_seconds,
                "val_map50": model.val_map50,
            },
            indent=1,
        )
    )
    logger.info(
        "initial model: %s (pre-training %.0f s + fine-tuning %.0f s; this run %.0f s)",
        weights,
        pre_seconds,
        seed_seconds,
        time.monotonic() - t_start,
    )
    return model


def backend_env(
    ls: lsh.LabelStudioServer,
    *,
    model_dir: Path,
    weights: Path,
    document_root: Path,
    args: argparse.Namespace,
) -> dict[str, str]:
    """Settings of the backend process (see backend/settings.py; ``BackendProcess`` drops inherited ones)."""
    return {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "MODEL_DIR": str(model_dir),
        "MODEL_WEIGHTS": str(weights),
        "DEVICE": args.device,
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "TRAIN_MIN_ANNOTATIONS": str(args.train_min_annotations),
        "TRAIN_EPOCHS": str(args.train_epochs),
        "LOG_LEVEL": "INFO",
    }


def import_seed_annotations(
    ls: lsh.LabelStudioServer, client: Any, project: int, data_dir: Path, seed_ids: tuple[str, ...]
) -> int:
    """Give each seed-set task the simulator's expert boxes as an annotation, unless it has one already.

    This is what happened before the loop starts: experts re-annotated the random seed set, and the initial
    model was fine-tuned on it. The annotations are created through the API by the admin user, marked
    ``ground_truth`` (a star in the Data Manager) and with ``last_action="imported"``; the backend counts them
    as expert labels when it trains. Returns how many were created.
    """
    from formats.labelstudio import detections_to_regions
    from synth import SynthDataset
    from synth.records import NAMES
    from synth.writers import FROM_NAME, TO_NAME

    records = {f"{r.split}/{r.id}": r for r in SynthDataset.load(data_dir).images}
    wanted = {f"train/{i}" for i in seed_ids}
    created = 0
    for task in lsh.list_tasks(ls, project, ordering=("tasks:id",)):
        image_id = str(task["data"].get("image_id", ""))
        if image_id not in wanted or task.get("total_annotations") or task.get("annotations"):
            continue
        record = records[image_id]
        result = detections_to_regions(
            record.expert,
            width=record.width,
            height=record.height,
            labels=NAMES,
            from_name=FROM_NAME,
            to_name=TO_NAME,
            id_prefix="seed",
        )
        client.annotations.create(
            id=int(task["id"]), result=result, ground_truth=True, last_action="imported"
        )
        data = dict(task["data"])
        if any(data.pop(key, None) is not None for key in SCORE_FIELDS):  # scored by an earlier run
            client.tasks.update(id=int(task["id"]), data=data)
        created += 1
    return created


def setup_project(
    ls: lsh.LabelStudioServer, data_dir: Path, backend_url: str, seed_ids: tuple[str, ...]
) -> tuple[int, int]:
    """Create (or reuse) the project with storage, tasks and seed-set annotations, and connect the backend.

    The seed set's expert annotations are imported while no backend is connected: Label Studio sends
    webhooks only to connected backends, so they do not count towards ``TRAIN_MIN_ANNOTATIONS`` and the
    demo does not start a training on start-up. Returns (project id, ML backend id).
    """
    client = ls.client()
    project = lsh.find_project(client, PROJECT_TITLE)
    if project is None:
        label_config = (data_dir / "label_studio" / "label_config.xml").read_text()
        project = lsh.create_project(
            client,
            PROJECT_TITLE,
            label_config,
            description="Synthetic deposits with crowd labels; sort by priority to re-annotate the noisiest.",
        )
        logger.info("project %d: created", project)
    else:
        logger.info("project %d: reusing it", project)
    # Also on reuse: a first run interrupted between creating the project and importing its tasks left it
    # without storage or tasks (the storage is reused when there; one import request is all or nothing).
    lsh.add_local_storage(client, project, data_dir)
    tasks = json.loads((data_dir / "label_studio" / "tasks.json").read_text())
    present = {
        str(t["data"].get("image_id", "")) for t in lsh.list_tasks(ls, project, ordering=("tasks:id",))
    }
    missing = [t for t in tasks if str(t["data"].get("image_id", "")) not in present]
    if missing:
        ids = lsh.import_tasks(client, project, missing)
        logger.info("project %d: %d tasks imported (%d there already)", project, len(ids), len(present))
    # Disconnect every backend (an earlier run's may sit on another port) and its webhook before importing
    # the seed annotations, so no backend hears of them; then connect this run's backend.
    for ml in client.ml.list(project=project):
        client.ml.delete(id=ml.id)
    for hook in client.webhooks.list(project=str(project)):
        if hook.url.endswith("/webhook"):
            client.webhooks.delete(id=hook.id)
    n = import_seed_annotations(ls, client, project, data_dir, seed_ids)
    logger.info(
        "project %d: %d seed-set tasks carry expert annotations (%d imported now, as admin, ground truth)",
        project,
        len(seed_ids),
        n,
    )
    ml_id = lsh.connect_backend(client, project, backend_url, title=BACKEND_TITLE)
    return project, ml_id


def score_all_tasks(project: int, backend_url: str) -> None:
    """Bulk-score the project through the backend (``POST /rescore``, what ``python -m backend.score`` does).

    The backend scores, in the background and in chunks, every task without an expert annotation that the
    serving version has not scored yet (so a re-run of the demo scores nothing twice), writes the scores
    back, and shows its progress in ``/health``; the seed set's expert-annotated tasks are left out, as
    after a training: they are no longer candidates for review.
    """
    from backend.score import follow

    since = time.time()
    resp = requests.post(f"{backend_url}/rescore", params={"project": project}, timeout=30)
    resp.raise_for_status()
    if resp.json().get("status") == "already running":
        since = 0.0
    final = follow(backend_url, project, since=since, interval=2.0, report=logger.info)
    if final.get("state") != "done":
        raise RuntimeError(
            f"bulk scoring of project {project} ended {final.get('state')}: {final.get('error')}"
        )
    logger.info(
        "scores: %d tasks scored, %d already scored by %s, %d expert-annotated, %d failed",
        final["scored"],
        final["skipped"],
        final["version"],
        final["expert"],
        final["failed"],
    )


def print_summary(ls: lsh.LabelStudioServer, project: int, view: int, *, n_seed: int) -> None:
    tasks = lsh.list_tasks(ls, project)
    top = [t for t in tasks if t["data"].get("priority") is not None][:5]
    lines = [
        "",
        "=" * 78,
        f"Label Studio:  {ls.url}/projects/{project}/data?tab={view}",
        f"Log in:        {ls.username}  /  {ls.password}",
        "",
        f'The tab "{lsh.VIEW_TITLE}" is already sorted by priority, highest first (tasks an expert has '
        "annotated drop out of it).",
        "By hand in the Data Manager: Columns -> tick 'priority', 'discrepancy', 'noise_grade',",
        "'noise_types'; then the Order by button (right of Filters) -> 'priority', and its arrow button ->",
        "descending; Filters -> 'Annotations' = 0 hides the tasks already annotated. 'discrepancy' says how",
        "noisy a task looks; 'priority' (equal to it until the model is calibrated on expert tasks) also",
        "counts the likely missed deposits again, which only an expert's re-annotation adds.",
        "Open a task, pick the model's prediction tab (v0...): each region's note names its noise and grade.",
        f"The {n_seed} seed-set tasks already carry the experts' labels (ground-truth annotations by the",
        "admin, imported before the backend was connected) and are not scored. Submit corrected boxes on",
        "other tasks: the backend retrains on all expert tasks (seed set included) after",
        "TRAIN_MIN_ANNOTATIONS new ones.",
        "",
        "Most suspicious tasks now:",
    ]
    for t in top:
        d = t["data"]
        lines.append(
            f"  task {t['id']:>5}  priority {d.get('priority'):.3f}  discrepancy {d.get('discrepancy'):.3f}  "
            f"{d.get('noise_grade', ''):<9} "
            f"{d.get('noise_types', '')}"
        )
    lines += ["", "Ctrl-C stops Label Studio and the backend.", "=" * 78]
    print("\n".join(lines), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=REPO / ".work" / "demo", help="demo folder (document root)")
    p.add_argument("--preset", default="quick", help="synth preset (tiny|quick|paper)")
    p.add_argument("--seed", type=int, default=0, help="dataset and seed-set seed")
    p.add_argument(
        "--seed-fraction", type=float, default=0.1, help="share of train images with expert labels"
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=25,
        help="initial model, stage 1: epochs on the crowd labels of all train images (0 = skip)",
    )
    p.add_argument(
        "--epochs", type=int, default=30, help="initial model, stage 2: fine-tuning epochs on the seed set"
    )
    p.add_argument("--imgsz", type=int, default=160, help="training image size of the initial model")
    p.add_argument("--batch", type=int, default=8, help="batch size of the initial model")
    p.add_argument(
        "--device",
        default=os.environ.get("DEVICE") or "auto",
        help="auto|cpu|cuda|cuda:N, initial model and backend (default: $DEVICE if set, else auto)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the initial model (default all cores; 1 is faster on a busy CPU)",
    )
    p.add_argument("--ls-port", type=int, default=8080, help="Label Studio port (or the next free one)")
    p.add_argument("--backend-port", type=int, default=9090, help="backend port (or the next free one)")
    p.add_argument("--train-min-annotations", type=int, default=5)
    p.add_argument("--train-epochs", type=int, default=10)
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="stop both servers and exit after scoring and the summary (scripted runs, tests)",
    )
    return p.parse_args(argv)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, ``kill``, and the terminal closing: each stops both servers before the demo exits."""


def set_environment_defaults(work: Path) -> None:
    """Defaults for this process and its children, set before ultralytics or matplotlib is imported.

    ``make demo`` sets ``YOLO_CONFIG_DIR``/``MPLCONFIGDIR``; ``python -m demo`` alone would let them write
    under the home folder, so they default to folders in ``work``. ``YOLO_OFFLINE=1`` keeps ultralytics from
    sending analytics or asking PyPI for updates. 127.0.0.1 bypasses any HTTP proxy (health checks).
    """
    for name, sub in (("YOLO_CONFIG_DIR", "yolo-config"), ("MPLCONFIGDIR", "mpl")):
        os.environ.setdefault(name, str(work / sub))
        Path(os.environ[name]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    lsh.bypass_proxies_for_localhost()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = args.work.resolve()
    data_dir, initial_dir = work / "data", work / "initial"
    work.mkdir(parents=True, exist_ok=True)
    set_environment_defaults(work)
    total = 6

    lock = DemoLock(work / "demo.pid")
    try:
        lock.acquire()
    except DemoAlreadyRunningError as exc:
        logger.error("%s", exc)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping ...", signum)
        stop.set()
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    ls: lsh.LabelStudioServer | None = None
    backend: lsh.BackendProcess | None = None
    try:
        _step(1, total, f"synthetic dataset ({args.preset}) in {data_dir}")
        generate_dataset(data_dir, work, preset=args.preset, seed=args.seed)

        _step(2, total, "initial model: pre-train on crowd labels, fine-tune on an expert-labelled seed set")
        initial = train_initial_model(
            data_dir,
            initial_dir,
            seed_fraction=args.seed_fraction,
            pretrain_epochs=args.pretrain_epochs,
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )

        _step(3, total, "Label Studio (first start sets up its database: ~40 s)")
        ls = lsh.LabelStudioServer(
            work / "labelstudio", port=lsh.free_port(args.ls_port), document_root=work, startup_timeout=240
        )
        ls.on_spawn = lock.add_group
        ls.start()
        logger.info("Label Studio: %s (log %s)", ls.url, ls.log_path)

        _step(4, total, "ML backend")
        # One model registry per initial model: a changed initial model starts a fresh version history.
        model_dir = work / "models" / initial.key
        env = backend_env(ls, model_dir=model_dir, weights=initial.weights, document_root=work, args=args)
        backend = lsh.BackendProcess(lsh.free_port(args.backend_port), env, log_path=work / "backend.log")
        backend.on_spawn = lock.add_group
        backend.start()
        logger.info("backend: %s (log %s)", backend.url, backend.log_path)

        _step(5, total, "project, storage, tasks, backend connection")
        project, _ml = setup_project(ls, data_dir, backend.url, initial.seed_image_ids)

        _step(6, total, "bulk scoring: the backend scores every task without an expert annotation")
        t0 = time.monotonic()
        score_all_tasks(project, backend.url)
        logger.info("bulk scoring: done in %.0f s", time.monotonic() - t0)
        view = lsh.ensure_suspicious_view(ls, project)
        print_summary(ls, project, view, n_seed=len(initial.seed_image_ids))

        while not args.no_wait and not stop.is_set():
            for proc in (ls, backend):
                if not proc.running():
                    logger.error("%s exited; log %s", proc.name, proc.log_path)
                    return 1
            stop.wait(2)
        return 0
    except OptionsChangedError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # A second Ctrl-C (or the terminal's SIGHUP) must not cut the cleanup short.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        try:
            if backend is not None:
                backend.stop()
            if ls is not None:
                ls.stop()
            lock.release()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
