"""Races between training and bulk-scoring jobs: the project lock lost mid-training (a real Redis server), the
training state when a job fails early, two bulk runs of one project sharing its progress file, and a bulk run
outlived by a newer version.

The interleavings are forced (hooks, a deleted lock key), not waited for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import backend.bulk as bulk
import backend.jobs as jobs
from backend.bulk import BulkProgress, ProgressFile, run_bulk_scoring
from backend.protocol import TaskFields
from backend.service import ModelService, ScoredTask
from backend.settings import Settings
from bench.procs import start_redis
from model.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def redis_server(tmp_path):
    proc = start_redis(tmp_path / "redis")
    yield proc
    proc.stop()


@pytest.fixture
def worker(tmp_path, redis_server, monkeypatch) -> Any:
    """A worker's context (as ``python -m backend.worker`` installs it) and a client of its Redis."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu", "REDIS_URL": url})
    monkeypatch.setattr(jobs, "_context", jobs.WorkerContext(settings=settings))
    return jobs.connect(url)


def _hash(redis: Any, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}


class ChildTrainer:
    """Trains as ``backend.training.run_train_job`` does: a ``python -m backend.train_job`` child process,
    polled with ``on_progress``; this one blocks (its job file is a FIFO nobody writes) until stopped."""

    def __init__(self, job_file: Path) -> None:
        self.job_file = job_file
        self.on_progress: Any = None
        self.started = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None

    def train_once(self, project: int | None, *, kind: str) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.train_job", str(self.job_file)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.started.set()
        while True:
            try:
                returncode = self.proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if self.on_progress is not None:
                    self.on_progress({})
        if returncode != 0:
            raise RuntimeError(f"training job exited with {returncode}")
        return "v0002-20990101T000000"  # the child published


@pytest.mark.queue
def test_a_training_whose_lock_expired_and_was_taken_stops_before_publishing(tmp_path, worker, monkeypatch):
    """Redis unreachable past LOCK_TTL_S: the key expired and the project's follow-up job took the lock. The
    first job's next refresh sees it: its training process is terminated (it publishes nothing), the job is
    counted as failed, and the follow-up's lock and state are left alone."""
    monkeypatch.setattr(jobs, "LOCK_TTL_S", 3)  # refreshed every second
    job_file = tmp_path / "job.json"
    os.mkfifo(job_file)
    trainer = ChildTrainer(job_file)
    monkeypatch.setattr(jobs, "_worker_trainer", lambda context: trainer)
    result: dict[str, Any] = {}
    job = threading.Thread(target=lambda: result.update(jobs.run_training(7)), name="first-job")
    job.start()
    follow_up = None
    try:
        assert trainer.started.wait(60)
        first_id = worker.get("alc:train:7:lock").decode()
        assert first_id.startswith("local-")
        worker.delete("alc:train:7:lock")  # expired while Redis was away
        follow_up = jobs._ProjectLock(worker, 7, "train-7-follow-up")
        follow_up.acquire(poll_s=0.05)
        worker.hset(
            "alc:training", mapping={"state": "running", "job": "train-7-follow-up", "progress": "{}"}
        )
        job.join(30)
        assert not job.is_alive(), "the first training still runs beside the follow-up"
    finally:
        if trainer.proc is not None and trainer.proc.poll() is None:
            trainer.proc.kill()
        job.join(30)
    assert trainer.proc is not None and trainer.proc.returncode == -signal.SIGTERM
    assert "training lock" in result["error"] and "version" not in result
    assert worker.get("alc:train:7:lock").decode() == "train-7-follow-up"  # not released by the first job
    state = _hash(worker, "alc:training")
    assert state["state"] == "running" and state["job"] == "train-7-follow-up"  # the follow-up's, untouched
    assert _hash(worker, "alc:stats")["failures"] == "1"
    follow_up.release()


@pytest.mark.queue
def test_a_job_failing_before_its_training_is_recorded_failed_not_running(worker, monkeypatch):
    def no_trainer(context: Any) -> Any:
        raise RuntimeError("LABEL_STUDIO_URL: unreachable")

    monkeypatch.setattr(jobs, "_worker_trainer", no_trainer)
    result = jobs.run_training(7)
    assert result == {"error": "LABEL_STUDIO_URL: unreachable"}
    state = _hash(worker, "alc:training")
    assert state["state"] == "failed" and state["last_error"] == "LABEL_STUDIO_URL: unreachable"
    assert _hash(worker, "alc:stats")["failures"] == "1"
    assert worker.get("alc:train:7:lock") is None  # the follow-up job may start at once


class FlakyTrainer:
    """Fails its first training, then publishes."""

    def __init__(self) -> None:
        self.on_progress: Any = None
        self.runs = 0

    def train_once(self, project: int | None, *, kind: str) -> str:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("Label Studio unreachable")
        return "v0002-20990101T000000"


@pytest.mark.queue
def test_annotation_counts_are_per_project_and_a_failed_training_gives_its_back(worker, monkeypatch):
    from rq import SimpleWorker

    from backend.images import ImageLoader

    settings = jobs._context.settings
    trainer = jobs.RedisTrainer(settings, ModelService(settings, loader=ImageLoader()), connection=worker)
    flaky = FlakyTrainer()
    monkeypatch.setattr(jobs, "_worker_trainer", lambda context: flaky)

    def run_queued() -> None:  # the queued job, in this process (SimpleWorker forks nothing)
        SimpleWorker([trainer.queue], connection=worker).work(burst=True)

    for task_id in (11, 12, 13):
        trainer._expert_tasks_seen(1).add(task_id)
    trainer._expert_tasks_seen(2).add(21)
    assert trainer.request(1) == "training queued"
    assert len(trainer._expert_tasks_seen(1)) == 0  # the queued training took project 1's count ...
    assert set(trainer._expert_tasks_seen(2)) == {21}  # ... and nothing of project 2's
    trainer._expert_tasks_seen(1).add(14)  # arrives while the job waits: counts towards the next one
    run_queued()
    assert flaky.runs == 1 and _hash(worker, "alc:training")["state"] == "failed"
    assert set(trainer._expert_tasks_seen(1)) == {11, 12, 13, 14}  # given back: the next annotation retries
    assert trainer.request(1) == "training queued"
    run_queued()
    assert flaky.runs == 2 and _hash(worker, "alc:training")["state"] == "idle"
    assert len(trainer._expert_tasks_seen(1)) == 0 and set(trainer._expert_tasks_seen(2)) == {21}
    assert not worker.keys("alc:seen:1:job:*")  # consumed by the success


def test_two_runs_saving_one_projects_progress_do_not_rename_each_others_file(tmp_path, monkeypatch):
    """A re-scoring after a training and a /rescore of one project save progress at the same moment."""
    folder = tmp_path / "bulk-scoring"
    training_run, rescore_run = ProgressFile(folder), ProgressFile(folder)
    real_replace = os.replace
    interleaved: list[bool] = []

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if not interleaved:  # the other run writes and renames its file between this write and rename
            interleaved.append(True)
            rescore_run.save(BulkProgress(project=3, version="v0001-20990101T000000", done=5))
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    training_run.save(BulkProgress(project=3, version="v0002-20990101T000000", done=1))
    assert interleaved
    assert [(p.version, p.done) for p in training_run.load_all()] == [("v0002-20990101T000000", 1)]
    assert [p.name for p in folder.iterdir()] == ["project-3.json"]  # no temporary file left


class RegistrySource:
    """Tasks of one project; its write-back (``publish``) calls ``after_write`` after each batch."""

    def __init__(self, tasks: list[dict[str, Any]], after_write: Any) -> None:
        self._tasks = tasks
        self.after_write = after_write
        self.batches: list[list[int]] = []

    def label_config(self, project: int | None) -> str:
        return "<View/>"

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return self._tasks

    def publish(self, scored: list[ScoredTask]) -> None:
        self.batches.append([int(s.task_id) for s in scored if s.task_id is not None])
        self.after_write(len(self.batches))


def _fake_scoring(service: ModelService, monkeypatch: Any) -> list[str]:
    """``service`` serving the registry's LATEST without loading weights; the versions it scored with."""
    used: list[str] = []

    def current(version: str | None = None) -> tuple[Any, str]:
        return object(), str(service.latest_version())

    def score_tasks(tasks: Any, schema: Any, *, version: str | None = None) -> list[ScoredTask]:
        used.append(str(version))
        fields = TaskFields(0.5, 0.5, "minor", "missed:1", str(version))
        return [
            ScoredTask(t["id"], {"result": [], "score": 0.5, "model_version": version}, fields) for t in tasks
        ]

    monkeypatch.setattr(service, "current", current)
    monkeypatch.setattr(service, "score_tasks", score_tasks)
    return used


@pytest.mark.parametrize("change", ["a training publishes a newer version", "an older version is activated"])
def test_a_bulk_run_stops_once_another_version_serves(tmp_path, monkeypatch, change):
    monkeypatch.setattr(bulk, "WRITE_BATCH", 2)
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu"})
    registry = ModelRegistry(settings.model_dir)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    older = registry.publish(weights, {})
    run_version = registry.publish(weights, {}).version
    service = ModelService(settings, loader=None)  # type: ignore[arg-type]
    used = _fake_scoring(service, monkeypatch)
    now_serving: list[str] = []

    def after_write(batches: int) -> None:
        if batches == 1:  # while the run's first batch is written, the registry changes
            if change.startswith("a training"):
                now_serving.append(registry.publish(weights, {}).version)
            else:
                now_serving.append(registry.activate(older.version).version)

    tasks = [{"id": i, "data": {"image": f"{i}.png"}} for i in range(1, 11)]
    source = RegistrySource(tasks, after_write)
    seen: list[BulkProgress] = []
    progress = run_bulk_scoring(
        project=1,
        source=source,
        service=service,
        schema=None,  # type: ignore[arg-type]
        is_expert=lambda task: False,
        chunk=2,
        on_progress=lambda p: seen.append(BulkProgress.from_dict(p.as_dict())),
    )
    assert source.batches == [[1, 2]]  # nothing written with the old version after the change
    assert set(used) == {run_version}
    assert progress.state == "superseded" and progress.scored == 2 and progress.version == run_version
    assert progress.reason is not None and now_serving[0] in progress.reason
    assert seen[-1].state == "superseded" and seen[-1].reason == progress.reason


def test_a_bulk_run_is_not_superseded_while_its_version_serves(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk, "WRITE_BATCH", 2)
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu"})
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w")
    ModelRegistry(settings.model_dir).publish(weights, {})
    service = ModelService(settings, loader=None)  # type: ignore[arg-type]
    _fake_scoring(service, monkeypatch)
    source = RegistrySource([{"id": i, "data": {}} for i in range(1, 6)], lambda batches: None)
    progress = run_bulk_scoring(
        project=1,
        source=source,
        service=service,
        schema=None,  # type: ignore[arg-type]
        is_expert=lambda task: False,
        chunk=2,
    )
    assert progress.state == "done" and progress.scored == 5 and progress.reason is None
    assert source.batches == [[1, 2], [3, 4], [5]]
