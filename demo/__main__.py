"""``python -m demo`` (``make demo``): synthetic data, an initial model, Label Studio and the backend.

Steps (each reuses what an earlier run left in ``.work/demo``):

1. generate the synthetic dataset (``synth``) into ``.work/demo/data``;
2. train an initial detector on the expert labels of a random seed set of training images (the method's
   starting point) and keep it in ``.work/demo/initial``;
3. start Label Studio (SQLite, 127.0.0.1, port 8080 or the next free one) and the backend (9090 or next);
4. create the project (labelling config, Local Files storage, tasks with crowd labels), connect the backend,
   retrieve predictions (which scores every task) and add a Data Manager tab sorted "most suspicious first";
5. print the URL, the login and what to click, and run until Ctrl-C, which stops both servers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from demo import labelstudio as lsh

logger = logging.getLogger("demo")

REPO = lsh.REPO
PROJECT_TITLE = "Deposits: active label cleaning"
BACKEND_TITLE = "active-label-cleaning"


def _step(n: int, total: int, text: str) -> None:
    logger.info("[%d/%d] %s", n, total, text)


def generate_dataset(data_dir: Path, document_root: Path, *, preset: str, seed: int) -> None:
    """Run the simulator unless ``data_dir`` already holds a dataset."""
    if (data_dir / "label_studio" / "tasks.json").exists() and (data_dir / "manifest.json").exists():
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


def train_initial_model(
    data_dir: Path,
    out_dir: Path,
    *,
    seed_fraction: float,
    epochs: int,
    imgsz: int,
    batch: int,
    seed: int,
    device: str,
) -> Path:
    """Train on the expert labels of a random ``seed_fraction`` of the training images; returns weights.

    The weights are cached at ``out_dir/initial.pt`` and reused by later runs.
    """
    target = out_dir / "initial.pt"
    if target.exists():
        logger.info("initial model: reusing %s", target)
        return target
    if not 0 < seed_fraction <= 1:
        raise ValueError(f"seed_fraction: expected in (0, 1], got {seed_fraction}")
    import numpy as np

    from model.dataset import LabeledImage, write_yolo_dataset
    from model.train import train_detector
    from synth import SynthDataset

    dataset = SynthDataset.load(data_dir)
    train = [r for r in dataset.images if r.split == "train"]
    val = [r for r in dataset.images if r.split == "val"]
    rng = np.random.default_rng(seed)
    n_seed = max(2, round(seed_fraction * len(train)))
    chosen = sorted(rng.choice(len(train), size=min(n_seed, len(train)), replace=False).tolist())

    def labeled(record: Any) -> LabeledImage:
        return LabeledImage(
            path=Path(record.path), labels=record.expert, width=record.width, height=record.height
        )

    data_yaml = write_yolo_dataset(
        out_dir / "seed-dataset",
        train=[labeled(train[i]) for i in chosen],
        val=[labeled(r) for r in val] or [labeled(train[chosen[0]])],
        names=["deposit"],
    )
    logger.info(
        "initial model: training on the expert labels of %d/%d train images (%d epochs at %d px) ...",
        len(chosen),
        len(train),
        epochs,
        imgsz,
    )

    def on_epoch(epoch: int, total: int) -> None:
        logger.info("initial model: epoch %d/%d", epoch, total)

    result = train_detector(
        data_yaml=data_yaml,
        init="yolov8n.yaml",
        out_dir=out_dir / "runs",
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        device=device,
        val=False,  # validating every epoch would cost more than the training on CPU
        on_epoch=on_epoch,
    )
    target.write_bytes(Path(result.weights).read_bytes())
    (out_dir / "initial.json").write_text(
        json.dumps({"seed_images": [train[i].id for i in chosen], "seconds": result.seconds}, indent=1)
    )
    logger.info("initial model: done in %.0f s -> %s", result.seconds, target)
    return target


def backend_env(
    ls: lsh.LabelStudioServer,
    *,
    model_dir: Path,
    weights: Path,
    document_root: Path,
    args: argparse.Namespace,
) -> dict[str, str]:
    """Environment of the backend process (see backend/settings.py)."""
    work = REPO / ".work"
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
        "YOLO_CONFIG_DIR": os.environ.get("YOLO_CONFIG_DIR", str(work / "yolo-config")),
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", str(work / "mpl")),
    }


def setup_project(ls: lsh.LabelStudioServer, data_dir: Path, backend_url: str) -> tuple[int, int]:
    """Create (or reuse) the project with storage and tasks, and connect the backend; (project, ml id)."""
    client = ls.client()
    project = lsh.find_project(client, PROJECT_TITLE)
    if project is None:
        label_config = (data_dir / "label_studio" / "label_config.xml").read_text()
        project = lsh.create_project(
            client,
            PROJECT_TITLE,
            label_config,
            description="Synthetic deposits with crowd labels; sort by discrepancy to review the noisiest.",
        )
        lsh.add_local_storage(client, project, data_dir)
        tasks = json.loads((data_dir / "label_studio" / "tasks.json").read_text())
        ids = lsh.import_tasks(client, project, tasks)
        logger.info("project %d: created, %d tasks imported", project, len(ids))
    else:
        logger.info("project %d: reusing it", project)
    # A backend from an earlier run may sit on another port: drop it (and its webhook) so only one is live.
    for ml in client.ml.list(project=project):
        if (ml.url or "").rstrip("/") != backend_url:
            client.ml.delete(id=ml.id)
    for hook in client.webhooks.list(project=str(project)):
        if hook.url.endswith("/webhook") and not hook.url.startswith(backend_url):
            client.webhooks.delete(id=hook.id)
    ml_id = lsh.connect_backend(client, project, backend_url, title=BACKEND_TITLE)
    return project, ml_id


def score_all_tasks(ls: lsh.LabelStudioServer, project: int, backend_url: str, *, chunk: int = 60) -> None:
    """Retrieve predictions for tasks not yet scored by the serving model version, in chunks.

    Each "Retrieve predictions" call is synchronous and bounded by Label Studio's predict timeout; tasks
    already scored by this version (an earlier run) are skipped so re-runs add no duplicate predictions.
    """
    version = requests.get(f"{backend_url}/health", timeout=10).json().get("latest_version")
    tasks = lsh.list_tasks(ls, project, ordering=("tasks:id",))
    ids = [int(t["id"]) for t in tasks if version is None or t["data"].get("model_version") != version]
    if not ids:
        logger.info("predictions: all %d tasks already scored by %s", len(tasks), version)
        return
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        lsh.retrieve_predictions(ls, project, part)
        logger.info("predictions: %d/%d tasks predicted", min(start + chunk, len(ids)), len(ids))
    version = requests.get(f"{backend_url}/health", timeout=10).json().get("model_version")
    lsh.wait_for_scores(ls, project, model_version=version, timeout=max(120, len(ids)))
    logger.info("scores: all %d tasks carry discrepancy and noise grade of %s", len(tasks), version)


def print_summary(ls: lsh.LabelStudioServer, project: int, view: int) -> None:
    tasks = lsh.list_tasks(ls, project)
    top = [t for t in tasks if t["data"].get("discrepancy") is not None][:5]
    lines = [
        "",
        "=" * 78,
        f"Label Studio:  {ls.url}/projects/{project}/data?tab={view}",
        f"Log in:        {ls.username}  /  {ls.password}",
        "",
        f'The tab "{lsh.VIEW_TITLE}" is already sorted by discrepancy, highest first.',
        "By hand in the Data Manager: Columns -> tick 'discrepancy', 'noise_grade', 'noise_types'; then the",
        "Order by button (right of Filters) -> 'discrepancy', and its arrow button -> descending.",
        "Open a task, pick the model's prediction tab (v0...): each region's note names its noise and grade.",
        "Submit corrected boxes: the backend retrains after TRAIN_MIN_ANNOTATIONS annotations.",
        "",
        "Most suspicious tasks now:",
    ]
    for t in top:
        d = t["data"]
        lines.append(
            f"  task {t['id']:>5}  discrepancy {d.get('discrepancy'):.3f}  {d.get('noise_grade', ''):<9} "
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
    p.add_argument("--epochs", type=int, default=60, help="epochs of the initial model")
    p.add_argument("--imgsz", type=int, default=160, help="training image size of the initial model")
    p.add_argument("--batch", type=int, default=4, help="batch size of the initial model")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--ls-port", type=int, default=8080, help="Label Studio port (or the next free one)")
    p.add_argument("--backend-port", type=int, default=9090, help="backend port (or the next free one)")
    p.add_argument("--train-min-annotations", type=int, default=5)
    p.add_argument("--train-epochs", type=int, default=10)
    p.add_argument("--no-wait", action="store_true", help="stop after setting up (for scripted runs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = args.work.resolve()
    data_dir, model_dir, initial_dir = work / "data", work / "models", work / "initial"
    work.mkdir(parents=True, exist_ok=True)
    total = 6

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping ...", signum)
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    ls: lsh.LabelStudioServer | None = None
    backend: lsh.BackendProcess | None = None
    try:
        _step(1, total, f"synthetic dataset ({args.preset}) in {data_dir}")
        generate_dataset(data_dir, work, preset=args.preset, seed=args.seed)

        _step(2, total, "initial model from a random expert-labelled seed set")
        weights = train_initial_model(
            data_dir,
            initial_dir,
            seed_fraction=args.seed_fraction,
            epochs=args.epochs,
            imgsz=args.imgsz,
            batch=args.batch,
            seed=args.seed,
            device=args.device,
        )

        _step(3, total, "Label Studio (first start sets up its database: ~40 s)")
        ls = lsh.LabelStudioServer(
            work / "labelstudio", port=lsh.free_port(args.ls_port), document_root=work, startup_timeout=240
        )
        ls.start()
        logger.info("Label Studio: %s (log %s)", ls.url, ls.log_path)

        _step(4, total, "ML backend")
        env = backend_env(ls, model_dir=model_dir, weights=weights, document_root=work, args=args)
        backend = lsh.BackendProcess(lsh.free_port(args.backend_port), env, log_path=work / "backend.log")
        backend.start()
        logger.info("backend: %s (log %s)", backend.url, backend.log_path)

        _step(5, total, "project, storage, tasks, backend connection")
        project, _ml = setup_project(ls, data_dir, backend.url)

        _step(6, total, "retrieving predictions: the backend scores every task")
        t0 = time.monotonic()
        score_all_tasks(ls, project, backend.url)
        logger.info("predictions: done in %.0f s", time.monotonic() - t0)
        view = lsh.ensure_suspicious_view(ls, project)
        print_summary(ls, project, view)

        while not args.no_wait and not stop.is_set():
            for proc in (ls, backend):
                if not proc.running():
                    logger.error("%s exited; log %s", proc.name, proc.log_path)
                    return 1
            stop.wait(2)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if backend is not None:
            backend.stop()
        if ls is not None:
            ls.stop()


if __name__ == "__main__":
    sys.exit(main())
