"""Load and fault benchmark of the ML backend, against real processes on 127.0.0.1.

    python -m bench.load [--quick] [--out DIR]

Everything runs on this machine: ``python -m backend`` replicas, ``python -m backend.worker`` RQ workers and a
``redis-server`` (see ``bench/procs.py``), talking HTTP and Redis on loopback only; every loop is bounded in
requests and seconds, and every process is stopped at the end. The data is synthetic (dark discs on a noisy
background, 256 px PNGs) served as Label Studio Local Files; training data comes from a ``TASKS_FILE``, so
no Label Studio is needed. The first model is trained by the backend itself (``POST /train``) and cached.

Scenarios, printed as one table at the end:

1. **mixed batch**: one ``/predict`` of 100 tasks of which 5 are bad (2 missing files, 2 corrupt files, 1
   unreachable URL) -> status, predictions, per-task errors.
2. **latency during training**: ``/predict`` of one task, sequentially, idle and while a training runs in the
   same backend, for the old setting (training at nice 0 on every core), nice 10 and nice 19 (Linux's idle
   class) on all cores but one -> p50 / p99 and the p99 ratio.
3. **memory**: peak RSS of the backend process during a 10-task and a 1,000-task ``/predict``.
4. **concurrency** (3 replicas, 2 workers, Redis): 32 clients for 60 s, round robin over the replicas.
5. **webhook burst**: 50 ``START_TRAINING`` webhooks within 1 s across the 3 replicas -> trainings run.
6. **kill -9 of a worker** mid-training -> the job is retried and a new version published.
7. **kill -9 of a replica** while clients run -> errors on the surviving replicas.
8. **Redis kill -9 and restart** with a training running and a follow-up queued -> jobs lost.

``--quick`` shrinks counts and durations (a look in about three minutes); the full run takes about ten.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.procs import REPO, Proc, free_port, start_backend, start_redis, start_worker

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="deposit"/></RectangleLabels></View>'
)
IMAGE_SIZE = 256


@dataclass(frozen=True)
class Plan:
    """Counts and durations of one run."""

    latency_requests: int
    big_batch: int
    clients: int
    client_seconds: float
    burst: int
    replica_kill_seconds: float


FULL = Plan(
    latency_requests=200, big_batch=1000, clients=32, client_seconds=60, burst=50, replica_kill_seconds=15
)
QUICK = Plan(
    latency_requests=60, big_batch=300, clients=8, client_seconds=10, burst=50, replica_kill_seconds=6
)


@dataclass
class Row:
    scenario: str
    metric: str
    value: str
    target: str = ""


# ------------------------------------------------------------------------------------------------ data


def _disc_png(path: Path, discs: list[tuple[float, float, float]], seed: int) -> None:
    import cv2

    rng = np.random.default_rng(seed)
    image = rng.normal(170, 12, (IMAGE_SIZE, IMAGE_SIZE))
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    for cx, cy, r in discs:
        image[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 60
    cv2.imwrite(str(path), np.clip(image, 0, 255).astype(np.uint8))


def _region(cx: float, cy: float, r: float) -> dict[str, Any]:
    pct = 100.0 / IMAGE_SIZE
    return {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": IMAGE_SIZE,
        "original_height": IMAGE_SIZE,
        "value": {
            "x": (cx - r) * pct,
            "y": (cy - r) * pct,
            "width": 2 * r * pct,
            "height": 2 * r * pct,
            "rotation": 0,
            "rectanglelabels": ["deposit"],
        },
    }


def make_data(root: Path, *, n_images: int, n_expert: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n_images`` disc images under ``root/imgs`` as Label Studio tasks: the first ``n_expert`` with an
    expert annotation, every task with jittered crowd labels."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(n_images):
        discs = []
        for _ in range(int(rng.integers(2, 6))):
            r = float(rng.uniform(10, 22))
            cx, cy = rng.uniform(r, IMAGE_SIZE - r, 2)
            discs.append((float(cx), float(cy), r))
        _disc_png(root / "imgs" / f"{i}.png", discs, seed=seed * 100_000 + i)
        crowd = [
            {"x": (cx - r + rng.normal(0, 2)) / IMAGE_SIZE * 100, "y": (cy - r) / IMAGE_SIZE * 100,
             "width": 2 * r / IMAGE_SIZE * 100, "height": 2 * r / IMAGE_SIZE * 100, "label": "deposit"}
            for cx, cy, r in discs
        ]  # fmt: skip
        annotations = [{"id": 1000 + i, "completed_by": 1, "result": [_region(*d) for d in discs]}]
        tasks.append(
            {
                "id": i + 1,
                "data": {"image": f"/data/local-files/?d=imgs/{i}.png", "crowd_labels": crowd},
                "annotations": annotations if i < n_expert else [],
            }
        )
    return tasks


# --------------------------------------------------------------------------------------------- helpers


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if values else float("nan")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _predict_body(tasks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks], "label_config": LABEL_CONFIG}


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _versions(proc: Proc) -> list[str]:
    return list(requests.get(f"{proc.url}/versions", timeout=10).json()["versions"])


def _training(proc: Proc) -> dict[str, Any]:
    return dict(requests.get(f"{proc.url}/health", timeout=10).json()["training"])


def _is_training(proc: Proc) -> bool:
    return _training(proc)["state"] == "running"


class RssSampler:
    """Peak resident memory of one process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _sequential_latency(proc: Proc, task: dict[str, Any], n: int) -> tuple[list[float], int]:
    session = requests.Session()
    times, errors = [], 0
    body = _predict_body([task])
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            resp = session.post(f"{proc.url}/predict", json=body, timeout=60)
            ok = resp.status_code == 200 and "result" in resp.json()["results"][0]
        except requests.RequestException:
            ok = False
        times.append(time.perf_counter() - t0)
        errors += not ok
    return times, errors


def _clients(
    replicas: Callable[[], list[Proc]], task: dict[str, Any], *, clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` threads posting one-task predicts round robin over ``replicas()`` for ``seconds``.

    A replica that refuses connections is dropped by the client that saw it (as a load balancer's health
    check would); those failures are counted apart from errors of replicas that are up.
    """
    body = _predict_body([task])
    lock = threading.Lock()
    times: list[float] = []
    errors, refused = 0, 0
    dead: set[int] = set()
    deadline = time.monotonic() + seconds

    def run(k: int) -> None:
        nonlocal errors, refused
        session = requests.Session()
        i = k
        while time.monotonic() < deadline:
            live = [p for p in replicas() if p.port not in dead]
            if not live:
                return
            proc = live[i % len(live)]
            i += 1
            t0 = time.perf_counter()
            try:
                resp = session.post(f"{proc.url}/predict", json=body, timeout=60)
                ok = resp.status_code == 200 and "result" in resp.json()["results"][0]
            except requests.ConnectionError:
                with lock:
                    refused += 1
                    dead.add(proc.port)
                continue
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - t0
            with lock:
                times.append(elapsed)
                errors += not ok

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.monotonic() - start
    return {"n": len(times), "errors": errors, "refused": refused, "wall": wall, "times": times}


# ------------------------------------------------------------------------------------------- scenarios


class Bench:
    """One benchmark run: the data, the processes it started, the rows it measured."""

    def __init__(self, out: Path, plan: Plan) -> None:
        self.out = out
        self.plan = plan
        self.rows: list[Row] = []
        self.procs: list[Proc] = []
        self.root = out / "files"
        self.tasks = make_data(self.root, n_images=60, n_expert=40)
        self.tasks_file = out / "tasks.json"
        self.tasks_file.write_text(json.dumps({"label_config": LABEL_CONFIG, "tasks": self.tasks}))
        self.cpus = os.cpu_count() or 1

    def add(self, scenario: str, metric: str, value: Any, target: str = "") -> None:
        row = Row(scenario, metric, str(value), target)
        self.rows.append(row)
        print(f"  {scenario:<24} {metric:<42} {row.value:>16}  {target}", flush=True)

    def env(self, model_dir: Path, **extra: str) -> dict[str, str]:
        env = {
            "MODEL_DIR": str(model_dir),
            "LOCAL_FILES_DOCUMENT_ROOT": str(self.root),
            "TASKS_FILE": str(self.tasks_file),
            "DEVICE": "cpu",
            "LOG_LEVEL": "WARNING",
            "TRAIN_MIN_ANNOTATIONS": "1",
            "TRAIN_IMGSZ": "96",
            "TRAIN_EPOCHS": "2",
            "PREDICT_BATCH": "16",
        }
        env.update(extra)
        return env

    def start_backend(self, name: str, env: dict[str, str]) -> Proc:
        proc = start_backend(env, self.out / "logs" / f"{name}.log", wait_s=180)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def initial_weights(self) -> Path:
        """The first model: trained by the backend itself from the tasks file (cached across runs)."""
        cached = REPO / ".work" / "bench-load" / "initial-v1.pt"
        if cached.is_file():
            return cached
        print("training the initial model through the backend (POST /train)...", flush=True)
        models = self.out / "models-initial"
        proc = self.start_backend("initial", self.env(models, TRAIN_EPOCHS="3"))
        requests.post(f"{proc.url}/train?project=1", timeout=10)
        _wait_for(lambda: bool(_versions(proc)), 900, "the initial model")
        self.stop(proc)
        from model.registry import ModelRegistry

        latest = ModelRegistry(models).latest()
        assert latest is not None
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(latest.weights, cached)
        return cached

    # 1 -------------------------------------------------------------------------------------------------
    def mixed_batch(self, proc: Proc) -> None:
        good = [t for t in self.tasks if t["annotations"] == []] * 5
        tasks = [dict(t, id=1000 + i) for i, t in enumerate(good[:95])]
        (self.root / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        closed = free_port()
        bad = [
            "/data/local-files/?d=imgs/missing-1.png",
            "/data/local-files/?d=imgs/missing-2.png",
            "/data/local-files/?d=imgs/corrupt.png",
            "/data/local-files/?d=imgs/corrupt.png",
            f"http://127.0.0.1:{closed}/unreachable.png",
        ]
        for k, url in enumerate(bad):
            tasks.insert(10 + 19 * k, {"id": 2000 + k, "data": {"image": url, "crowd_labels": []}})
        resp = requests.post(f"{proc.url}/predict", json=_predict_body(tasks), timeout=300)
        results = resp.json().get("results", [])
        errors = [r for r in results if "error" in r]
        self.add("mixed batch 100 (5 bad)", "HTTP status", resp.status_code, "200")
        self.add("", "results / predictions / errors",
                 f"{len(results)}/{len(results) - len(errors)}/{len(errors)}", "100/95/5")  # fmt: skip
        placed = all("error" in results[10 + 19 * k] for k in range(5)) if len(results) == 100 else False
        self.add("", "errors on exactly the bad tasks", "yes" if placed else "no", "yes")

    # 2 -------------------------------------------------------------------------------------------------
    def latency_during_training(self, weights: Path) -> None:
        n = self.plan.latency_requests
        task = self.tasks[-1]
        configs = [
            ("nice 0, all cores", {"TRAIN_NICE": "0", "TRAIN_THREADS": str(self.cpus)}),
            ("nice 10, cores-1 (default)", {}),
            ("nice 19, cores-1", {"TRAIN_NICE": "19"}),
        ]
        for k, (label, extra) in enumerate(configs):
            env = self.env(
                self.out / f"models-latency-{k}",
                MODEL_WEIGHTS=str(weights),
                TRAIN_EPOCHS="200",
                TRAIN_IMGSZ="256",
                TRAIN_BATCH="8",
                **extra,
            )
            proc = self.start_backend("latency", env)
            _sequential_latency(proc, task, 10)  # load the model, warm up
            idle, idle_err = _sequential_latency(proc, task, n)
            requests.post(f"{proc.url}/train?project=1", timeout=10)
            _wait_for(partial(_is_training, proc), 60, "the training to start")
            time.sleep(15)  # the job writes its dataset and loads the model before the first epoch
            busy, busy_err = _sequential_latency(proc, task, n)
            still = _training(proc)["state"] == "running"
            self.stop(proc)  # ends the training child with it
            p99_idle, p99_busy = _percentile(idle, 99), _percentile(busy, 99)
            self.add(f"latency: {label}", "idle p50 / p99", f"{_ms(_percentile(idle, 50))} / {_ms(p99_idle)}")
            self.add("", "training p50 / p99", f"{_ms(_percentile(busy, 50))} / {_ms(p99_busy)}")
            self.add("", "p99 training / idle", f"{p99_busy / p99_idle:.2f}x", "<= 1.5x")
            self.add("", "errors (idle + training)", idle_err + busy_err, "0")
            self.add("", "training ran throughout", "yes" if still else "no", "yes")

    # 3 -------------------------------------------------------------------------------------------------
    def memory(self, weights: Path) -> None:
        proc = self.start_backend("memory", self.env(self.out / "models-memory", MODEL_WEIGHTS=str(weights)))
        pool = list(self.tasks)
        small = [dict(pool[i % len(pool)], id=i + 1) for i in range(10)]
        big = [dict(pool[i % len(pool)], id=i + 1) for i in range(self.plan.big_batch)]
        requests.post(f"{proc.url}/predict", json=_predict_body(small[:2]), timeout=120)  # load the model
        import psutil

        base = psutil.Process(proc.popen.pid).memory_info().rss
        with RssSampler(proc.popen.pid) as s10:
            r10 = requests.post(f"{proc.url}/predict", json=_predict_body(small), timeout=600)
        t0 = time.monotonic()
        with RssSampler(proc.popen.pid) as sbig:
            rbig = requests.post(f"{proc.url}/predict", json=_predict_body(big), timeout=600)
        seconds = time.monotonic() - t0
        self.stop(proc)
        mib = 2**20
        self.add("memory", "RSS after warm-up", f"{base / mib:.0f} MiB")
        self.add("", "peak RSS, 10-task /predict", f"{s10.peak / mib:.0f} MiB")
        self.add("", f"peak RSS, {len(big)}-task /predict", f"{sbig.peak / mib:.0f} MiB", "flat")
        self.add("", f"{len(big)}-task request: status, seconds", f"{rbig.status_code}, {seconds:.1f} s")
        assert r10.status_code == 200

    # 4-8 -----------------------------------------------------------------------------------------------
    def cluster(self, weights: Path) -> None:
        redis_dir = self.out / "redis"
        redis = start_redis(redis_dir)
        self.procs.append(redis)
        url = f"redis://127.0.0.1:{redis.port}/0"
        env = self.env(self.out / "models-cluster", MODEL_WEIGHTS=str(weights), REDIS_URL=url)
        replicas = [self.start_backend(f"replica{i}", env) for i in range(3)]
        fast = ["--monitor-interval", "2", "--heartbeat-grace", "5", "--maintenance-interval", "5"]
        workers = {}
        for name in ("w1", "w2"):
            workers[name] = start_worker(env, self.out / "logs" / f"{name}.log", name=name, args=fast)
            self.procs.append(workers[name])
        task = self.tasks[-1]
        for proc in replicas:
            _sequential_latency(proc, task, 3)  # load the model in each replica

        from redis import Redis

        rdb: Any = Redis.from_url(url)  # the bench reads the queue's keys (see backend/jobs.py), never writes

        def stats() -> dict[str, float]:
            return {k.decode(): float(v) for k, v in rdb.hgetall("alc:stats").items()}

        def drained() -> bool:
            return _training(replicas[0])["queue"]["training"] == 0

        # 4: concurrency
        res = _clients(lambda: replicas, task, clients=self.plan.clients, seconds=self.plan.client_seconds)
        scenario = f"{self.plan.clients} clients x {self.plan.client_seconds:.0f} s, 3 replicas"
        self.add(scenario, "requests, errors", f"{res['n']}, {res['errors'] + res['refused']}", "errors 0")
        self.add("", "throughput", f"{res['n'] / res['wall']:.1f} req/s")
        self.add(
            "", "p50 / p99", f"{_ms(_percentile(res['times'], 50))} / {_ms(_percentile(res['times'], 99))}"
        )

        # 5: webhook burst
        before = stats().get("runs", 0)
        versions_before = len(_versions(replicas[0]))
        answers: list[int] = []
        hook: dict[str, Any] = {"action": "START_TRAINING", "project": {"id": 1}}

        def send(k: int) -> None:
            time.sleep(k / self.plan.burst)  # spread over one second
            try:
                resp = requests.post(f"{replicas[k % 3].url}/webhook", json=hook, timeout=10)
                answers.append(resp.status_code if resp.json().get("status") != "error" else 500)
            except requests.RequestException:
                answers.append(0)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(self.plan.burst)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent_s = time.monotonic() - t0
        _wait_for(lambda: drained() and stats().get("runs", 0) > before, 900, "the burst's trainings")
        runs = int(stats().get("runs", 0) - before)
        self.add(f"{self.plan.burst} webhooks in {sent_s:.1f} s, 3 replicas", "answered 200",
                 f"{answers.count(200)}/{self.plan.burst}", "all")  # fmt: skip
        self.add("", "trainings run / versions published",
                 f"{runs} / {len(_versions(replicas[0])) - versions_before}", "<= 2")  # fmt: skip

        # 6: kill -9 of a worker mid-training
        before, versions_before = stats().get("runs", 0), len(_versions(replicas[0]))
        requests.post(f"{replicas[1].url}/train?project=1", timeout=10)
        holder: list[str] = []

        def started() -> bool:
            from rq.job import Job

            job_id = rdb.get("alc:train:1:lock")
            if job_id is None:
                return False
            name = Job.fetch(job_id.decode(), connection=rdb).worker_name
            holder[:] = [name] if name else []
            return bool(holder)

        _wait_for(started, 120, "a worker to take the job")
        time.sleep(3)
        workers[holder[0]].kill()
        t_kill = time.monotonic()
        _wait_for(lambda: len(_versions(replicas[0])) > versions_before and drained(), 900, "the retried job")
        recovered = time.monotonic() - t_kill
        self.add(f"kill -9 worker {holder[0]} mid-training", "new version published after retry",
                 f"yes, {recovered:.0f} s after the kill", "yes")  # fmt: skip
        self.add(
            "", "trainings finished (the killed one never did)", int(stats().get("runs", 0) - before), "1"
        )
        name = holder[0]
        workers[name] = start_worker(env, self.out / "logs" / f"{name}-2.log", name=f"{name}-2", args=fast)
        self.procs.append(workers[name])

        # 7: kill -9 of a replica while clients run
        victim = replicas[2]
        killer = threading.Timer(self.plan.replica_kill_seconds / 3, victim.kill)
        killer.start()
        res = _clients(lambda: replicas, task, clients=8, seconds=self.plan.replica_kill_seconds)
        killer.join()
        counts = f"{res['n']}, {res['errors']}"
        self.add("kill -9 of 1 of 3 replicas", "requests to the others, errors", counts, "errors 0")
        self.add("", "p99 meanwhile", _ms(_percentile(res["times"], 99)))
        replicas = replicas[:2]

        # 8: Redis kill -9 and restart with jobs in flight
        before, versions_before = stats().get("runs", 0), len(_versions(replicas[0]))
        first = requests.post(f"{replicas[0].url}/train?project=2", timeout=10).json()["status"]
        _wait_for(lambda: rdb.get("alc:train:2:lock") is not None, 120, "the training to start")
        second = requests.post(f"{replicas[1].url}/train?project=2", timeout=10).json()["status"]
        time.sleep(1.5)  # appendfsync everysec: the follow-up is on disk
        redis.kill()
        time.sleep(2)
        redis2 = start_redis(redis_dir, port=redis.port)
        self.procs.append(redis2)
        _wait_for(
            lambda: stats().get("runs", 0) >= before + 2 and drained(),
            900,
            "both jobs after the Redis restart",
        )
        alive = sum(w.alive() for w in workers.values())
        self.add("Redis kill -9 + restart", "requests answered", f"{first} + {second}")
        self.add("", "workers still up", f"{alive}/{len(workers)}", "all")
        self.add("", "trainings finished / versions published",
                 f"{int(stats()['runs'] - before)} / {len(_versions(replicas[0])) - versions_before}",
                 "2 (none lost)")  # fmt: skip

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts and durations")
    parser.add_argument("--out", type=Path, default=REPO / ".work" / "bench-load" / "run")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".work" / "yolo-config"))
    os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".work" / "mpl"))
    bench = Bench(args.out, plan)
    start = time.monotonic()
    print(f"bench.load ({'quick' if args.quick else 'full'}) on {bench.cpus} CPUs; logs in {args.out}/logs")
    try:
        weights = bench.initial_weights()
        proc = bench.start_backend("mixed", bench.env(args.out / "models-mixed", MODEL_WEIGHTS=str(weights)))
        bench.mixed_batch(proc)
        bench.stop(proc)
        bench.latency_during_training(weights)
        bench.memory(weights)
        bench.cluster(weights)
    finally:
        bench.close()
    print(f"\nbench.load: {len(bench.rows)} figures in {time.monotonic() - start:.0f} s\n")
    width = max(len(r.scenario) for r in bench.rows)
    print(f"{'scenario':<{width}}  {'figure':<44} {'measured':>24}  target")
    for row in bench.rows:
        print(f"{row.scenario:<{width}}  {row.metric:<44} {row.value:>24}  {row.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
