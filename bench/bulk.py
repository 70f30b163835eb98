"""``python -m bench.bulk``: bulk-scoring throughput against a real Label Studio, next to raw inference.

One run, side by side on the same images and the same machine:

1. **raw**: ultralytics ``YOLO.predict`` over the task images (files on disk, batches of ``PREDICT_BATCH``,
   the backend's confidence floor) - the model's own speed, no Label Studio, no scoring;
2. **bulk job**: the backend's bulk scoring (``backend.bulk``, what ``POST /rescore`` and
   ``python -m backend.score`` run) of a fresh project: tasks listed page by page, images loaded through Label
   Studio's local-files storage, scored, predictions imported, task fields written - tasks/s including the
   write-back, and its ratio to raw;
3. **re-run**: the same job again (every task already scored by the serving version: all skipped);
4. **previous write-back**: the per-task calls the backend made before (a
   prediction create, a predictions list, a task GET and a PATCH per task) on a sample of tasks of a second
   project, extrapolated to the whole project (the issue measured that job at 83 s for 216 tasks).

Defaults: the demo's ``quick`` synthetic images (160 px), its 216-task size, the tiny initial YOLO of the
end-to-end tests (``.work/test-cache/e2e-initial-yolov8n-96.pt``, built by ``make test-e2e``; or
``--weights``). Label Studio 1.23.2 from ``.venv-ls``, started from the tests' cached data folder when
present.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = REPO / ".work" / "test-cache" / "e2e-initial-yolov8n-96.pt"
LS_TEMPLATE = REPO / ".work" / "test-cache" / "ls-template-1.23.2"
PREDICT_BATCH = 16
"""The backend's default ``PREDICT_BATCH``."""
PREDICT_CONF = 0.01
"""The backend's default ``PREDICT_CONF``."""
PREVIOUS_DEMO_S = 83.0
"""The issue's measurement: ``make demo`` scored 216 tasks in 13 s and wrote them back in 70 s more."""


def _raw_predict(weights: Path, paths: list[Path], *, batch: int, conf: float) -> float:
    """Seconds ultralytics takes to predict ``paths`` (after one warm-up batch)."""
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")
    model.predict([str(p) for p in paths[:batch]], conf=conf, iou=0.6, device="cpu", verbose=False)
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        chunk = [str(p) for p in paths[i : i + batch]]
        model.predict(chunk, conf=conf, iou=0.6, device="cpu", batch=len(chunk), verbose=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=216, help="tasks in the project (the demo's: 216)")
    parser.add_argument("--preset", default="quick", help="synth preset of the images (quick: 160 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--legacy-sample", type=int, default=24, help="tasks written the previous way")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.legacy_sample < 0:
        parser.error("--tasks must be >= 1 and --legacy-sample >= 0")
    if not args.weights.is_file():
        parser.error(f"--weights: no file at {args.weights} (run `make test-e2e` once, or pass a .pt)")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".work" / "yolo-config"))
    os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".work" / "mpl"))
    os.environ.setdefault("YOLO_OFFLINE", "1")  # nothing fetched at run time (see model.device)

    import requests

    import synth
    from demo import labelstudio as lsh

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    work.mkdir(parents=True, exist_ok=True)
    root = (work / "root").resolve()
    data_dir = root / "data"
    shutil.rmtree(root, ignore_errors=True)
    synth.generate(args.preset, args.seed).write(data_dir, document_root=root)
    tasks = json.loads((data_dir / "label_studio" / "tasks.json").read_text())
    if len(tasks) < args.tasks:
        parser.error(f"--tasks: the {args.preset} preset has {len(tasks)} images, asked for {args.tasks}")
    tasks = tasks[: args.tasks]
    label_config = (data_dir / "label_studio" / "label_config.xml").read_text()
    paths = [root / str(t["data"]["image"]).split("?d=", 1)[1] for t in tasks]
    ls_dir = work / "ls"
    shutil.rmtree(ls_dir, ignore_errors=True)
    if (LS_TEMPLATE / "label_studio.sqlite3").exists():
        shutil.copytree(LS_TEMPLATE, ls_dir, ignore=shutil.ignore_patterns("*.log"))

    print(
        f"bench.bulk: {args.tasks} tasks of the {args.preset!r} synthetic images, weights {args.weights.name}"
    )
    print(f"machine: {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
    raw_s = _raw_predict(args.weights, paths, batch=PREDICT_BATCH, conf=PREDICT_CONF)
    raw_rate = args.tasks / raw_s
    print(
        f"raw ultralytics predict:    {raw_s:6.1f} s  {raw_rate:6.1f} images/s  "
        f"(batch {PREDICT_BATCH}, conf {PREDICT_CONF})"
    )

    with lsh.LabelStudioServer(ls_dir, document_root=root, startup_timeout=240) as ls:
        client = ls.client()
        projects = []
        for title in ("bench bulk", "bench previous write-back"):
            project = lsh.create_project(client, title, label_config)
            lsh.add_local_storage(client, project, data_dir)
            lsh.import_tasks(client, project, tasks)
            projects.append(project)
        env = {
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token,
            "MODEL_DIR": str(work / "models"),
            "MODEL_WEIGHTS": str(args.weights),
            "DEVICE": "cpu",
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "PREDICT_BATCH": str(PREDICT_BATCH),
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
        with lsh.BackendProcess(None, env, log_path=work / "backend.log") as backend:
            # Load the weights and set up ultralytics' predictor before the clock starts (a running backend
            # has done so already): one /predict of a task of the second project.
            warm = [_as_task(t) for t in client.tasks.list(project=projects[1], page_size=1).items[:1]]
            resp = requests.post(
                f"{backend.url}/predict", json={"tasks": warm, "label_config": label_config}, timeout=300
            )
            resp.raise_for_status()
            job_s, final = _run_job(backend.url, projects[0])
            job_rate = final["scored"] / job_s
            print(
                f"bulk job (with write-back): {job_s:6.1f} s  {job_rate:6.1f} tasks/s  ({final['scored']} "
                f"scored, {final['failed']} failed) = {job_rate / raw_rate:.2f} x raw predict speed"
            )
            rerun_s, again = _run_job(backend.url, projects[0])
            print(
                f"re-run (all scored):        {rerun_s:6.1f} s  ({again['scored']} scored, "
                f"{again['skipped']} skipped)"
            )
        if args.legacy_sample:
            per_task = _previous_writeback(
                client, projects[1], final_version=str(final["version"]), n=args.legacy_sample
            )
            print(
                f"previous write-back:        {per_task:6.3f} s/task on {args.legacy_sample} tasks -> "
                f"{per_task * args.tasks:.1f} s for {args.tasks} tasks (write-back alone, same load)"
            )
    previous = PREVIOUS_DEMO_S * args.tasks / 216
    print(
        f"whole job vs the issue's {PREVIOUS_DEMO_S:.0f} s for 216 tasks"
        + (f" (scaled: {previous:.0f} s for {args.tasks})" if args.tasks != 216 else "")
        + f": {job_s:.1f} s = {previous / job_s:.1f}x faster"
    )
    if args.legacy_sample:
        same_load = raw_s + per_task * args.tasks  # model time + the previous write-back, measured here
        print(
            f"whole job vs the previous way under this load (raw predict + previous write-back): "
            f"{same_load:.1f} s vs {job_s:.1f} s = {same_load / job_s:.1f}x faster"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores; other processes share them)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _as_task(task: Any) -> dict[str, Any]:
    return {"id": int(task.id), "data": dict(task.data or {})}


def _run_job(backend: str, project: int, *, timeout: float = 1800) -> tuple[float, dict[str, Any]]:
    """Run ``python -m backend.score --project N`` (as a user would) and show its output; wall seconds of the
    command and the job's final progress from ``/health``."""
    import requests

    argv = [sys.executable, "-m", "backend.score", "--project", str(project), "--backend", backend]
    start = time.perf_counter()
    proc = subprocess.run(
        [*argv, "--interval", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - start
    print("  $ python -m backend.score --project", project, "--backend", backend)
    lines = proc.stdout.splitlines()
    shown = lines if len(lines) <= 6 else [*lines[:3], f"  ... ({len(lines) - 5} more lines)", *lines[-2:]]
    for line in shown:
        print("  " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m backend.score exited with {proc.returncode}: {proc.stderr[-2000:]}")
    progress = requests.get(f"{backend}/health", timeout=30).json()["bulk_scoring"][str(project)]
    return seconds, dict(progress)


def _previous_writeback(client: Any, project: int, *, final_version: str, n: int) -> float:
    """Seconds per task of the write-back the backend did before (per task: a prediction create, a list of
    the task's predictions, a task GET and a full-data PATCH), on ``n`` tasks of ``project``."""
    regions: list[dict[str, Any]] = []
    ids = [int(t.id) for t in client.tasks.list(project=project, page_size=n).items[:n]]
    start = time.perf_counter()
    for task_id in ids:
        client.predictions.create(task=task_id, result=regions, score=0.5, model_version=final_version)
        list(client.predictions.list(task=task_id))
        data = dict(client.tasks.get(id=task_id).data or {})
        data.update(
            {
                "discrepancy": 0.5,
                "noise_grade": "clean",
                "noise_types": "clean",
                "model_version": final_version,
                "score_error": "",
            }
        )
        client.tasks.update(id=task_id, data=data)
    return (time.perf_counter() - start) / max(1, len(ids))


if __name__ == "__main__":
    sys.exit(main())
