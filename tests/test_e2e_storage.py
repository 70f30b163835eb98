"""End to end: Label Studio projects on S3 storage (a local moto S3 server) scored and trained by the backend.

One Label Studio 1.23.2, one moto server, one backend process for the module. Two projects read the same
bucket through Label Studio's S3 storage (``s3_endpoint`` = moto), synced into tasks whose data is
``s3://bucket/key``: *presign* (Label Studio answers the backend's resolve request with a redirect to a
presigned moto URL) and *proxy* (Label Studio streams the bytes itself). The backend holds no S3
credentials. moto records every request it serves (``MOTO_ENABLE_RECORDING``), with headers: that record
shows the Label Studio key never reached the S3 host and which side fetched each object.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from backend_helpers import disc_image, png_bytes, tiny_weights
from e2e_fixtures import LabelStudioOnly, backend_versions, label_studio_only, wait_for_new_version

from demo import labelstudio as lsh
from formats.labelstudio import detections_to_regions
from selection.detections import Detections

__all__ = ["label_studio_only"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.e2e

BUCKET = "tem-images"
SIZE = 96
# key -> discs (cx, cy, r) in pixels; the same three images under each project's prefix.
IMAGES = {
    "img0.png": [(30.0, 30.0, 9.0), (66.0, 60.0, 8.0)],
    "img1.png": [(48.0, 48.0, 10.0)],
    "img2.png": [(20.0, 70.0, 8.0), (70.0, 25.0, 9.0)],
}
MODES = ("presign", "proxy")
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<RectangleLabels name="label" toName="image"><Label value="deposit"/></RectangleLabels></View>'
)


class MotoServer(lsh.ManagedProcess):
    """moto's S3 server on 127.0.0.1, recording every request it serves (JSON lines) to ``recording``."""

    def __init__(self, base: Path) -> None:
        self.recording = base / "moto-requests.jsonl"
        self.url = f"http://127.0.0.1:{lsh.free_port()}"
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        argv = [
            str(lsh.BACKEND_PYTHON),
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            self.url.rsplit(":", 1)[1],
        ]
        super().__init__(
            argv,
            env=env,
            health_url=f"{self.url}/moto-api/data.json",
            log_path=base / "moto.log",
            name="moto S3",
            startup_timeout=60,
        )

    def healthy(self) -> bool:
        try:
            return requests.get(self.health_url, timeout=3).status_code == 200
        except requests.RequestException:
            return False

    def requests(self) -> list[dict[str, Any]]:
        """Every request served so far: ``{"method", "url", "headers", ...}``."""
        if not self.recording.exists():
            return []
        return [json.loads(line) for line in self.recording.read_text().splitlines() if line.strip()]


@dataclass
class S3Env:
    ls: lsh.LabelStudioServer
    client: Any
    moto: MotoServer
    backend: lsh.BackendProcess
    projects: dict[str, int]  # mode -> project id
    ml_ids: dict[str, int]
    work_dir: Path


def _header(request: dict[str, Any], name: str) -> str:
    return next((v for k, v in request["headers"].items() if k.lower() == name.lower()), "")


def _object_gets(moto: MotoServer, mode: str) -> list[dict[str, Any]]:
    """GETs of the images under ``mode``'s prefix."""
    prefix = f"/{BUCKET}/{mode}/"
    return [r for r in moto.requests() if r["method"] == "GET" and urlparse(r["url"]).path.startswith(prefix)]


def _stored_tasks(env: S3Env, mode: str) -> list[dict[str, Any]]:
    """The project's tasks with their data as stored (``resolve_uri=false``: no proxy URLs)."""
    project = str(env.projects[mode])
    resp = requests.get(
        f"{env.ls.url}/api/tasks",
        params={"project": project, "fields": "all", "resolve_uri": "false", "page_size": "100"},
        headers=env.ls.headers,
        timeout=30,
    )
    resp.raise_for_status()
    return list(resp.json()["tasks"])


def _add_s3_storage(ls: lsh.LabelStudioServer, project: int, moto: MotoServer, mode: str) -> None:
    """Label Studio's S3 source storage on the moto bucket (the fields of the storage form), then a sync."""
    body: dict[str, Any] = {
        "project": project,
        "title": f"moto {mode}",
        "bucket": BUCKET,
        "prefix": mode,
        "use_blob_urls": True,
        "presign": mode == "presign",
        "presign_ttl": 15,
        "aws_access_key_id": "moto-key",
        "aws_secret_access_key": "moto-secret",
        "region_name": "us-east-1",
        "s3_endpoint": moto.url,
    }
    resp = requests.post(f"{ls.url}/api/storages/s3", json=body, headers=ls.headers, timeout=60)
    assert resp.status_code == 201, resp.text
    storage = resp.json()["id"]
    resp = requests.post(f"{ls.url}/api/storages/s3/{storage}/sync", headers=ls.headers, timeout=120)
    assert resp.status_code == 200, resp.text


def _training_after_job(env: S3Env, timeout: float = 120) -> dict[str, Any]:
    """``/health``'s training status once the running job is over."""
    deadline = time.monotonic() + timeout
    while True:
        training = dict(requests.get(f"{env.backend.url}/health", timeout=10).json()["training"])
        if training["state"] != "running" or time.monotonic() > deadline:
            return training
        time.sleep(1)


@pytest.fixture(scope="module")
def s3(label_studio_only: LabelStudioOnly, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Env]:
    import boto3

    base = tmp_path_factory.mktemp("e2e-s3")
    weights = tiny_weights()
    moto = MotoServer(base)
    with moto:
        s3_client = boto3.client(
            "s3",
            endpoint_url=moto.url,
            aws_access_key_id="moto-key",
            aws_secret_access_key="moto-secret",
            region_name="us-east-1",
        )
        s3_client.create_bucket(Bucket=BUCKET)
        for mode in MODES:
            for i, (key, discs) in enumerate(IMAGES.items()):
                body = png_bytes(disc_image(SIZE, discs, seed=i))
                s3_client.put_object(Bucket=BUCKET, Key=f"{mode}/{key}", Body=body, ContentType="image/png")
        ls = label_studio_only.ls
        env = {
            "LABEL_STUDIO_URL": ls.url,
            "LABEL_STUDIO_API_KEY": ls.token,
            "MODEL_DIR": str(base / "models"),
            "MODEL_WEIGHTS": str(weights),
            "WORK_DIR": str(base / "work"),
            "DEVICE": "cpu",
            "TRAIN_MIN_ANNOTATIONS": "1000",  # training only from the Train button, once
            "TRAIN_EPOCHS": "1",
            "TRAIN_IMGSZ": str(SIZE),
            "TRAIN_BATCH": "8",
        }
        with lsh.BackendProcess(None, env, log_path=base / "backend.log") as backend:
            client = label_studio_only.client
            projects, ml_ids = {}, {}
            for mode in MODES:
                projects[mode] = lsh.create_project(client, f"S3 {mode}", LABEL_CONFIG)
                _add_s3_storage(ls, projects[mode], moto, mode)
                ml_ids[mode] = lsh.connect_backend(
                    client, projects[mode], backend.url, title=f"backend {mode}"
                )
            yield S3Env(ls, client, moto, backend, projects, ml_ids, base / "work")


def test_every_task_gets_a_scored_prediction_and_the_key_stays_with_label_studio(s3: S3Env) -> None:
    version = requests.get(f"{s3.backend.url}/health", timeout=10).json()["model_version"]
    for mode in MODES:
        stored = _stored_tasks(s3, mode)
        assert sorted(t["data"]["image"] for t in stored) == [f"s3://{BUCKET}/{mode}/{k}" for k in IMAGES]
        reply = lsh.retrieve_predictions(s3.ls, s3.projects[mode])
        tasks = lsh.wait_for_scores(s3.ls, s3.projects[mode], model_version=version, timeout=60)
        assert reply["processed_items"] == len(tasks) == len(IMAGES)
        for task in tasks:
            preds = [p for p in lsh.task_predictions(s3.ls, task["id"]) if p["model_version"] == version]
            assert len(preds) == 1 and 0.0 <= preds[0]["score"] <= 1.0, preds
        # The backend's write-back kept the stored reference (not Label Studio's per-task proxy URL).
        assert all(t["data"]["image"].startswith("s3://") for t in _stored_tasks(s3, mode))

    recorded = s3.moto.requests()
    assert recorded, "moto recorded nothing"
    assert not [r for r in recorded if s3.ls.token in json.dumps(r)], "the Label Studio key reached S3"
    # Presign: the backend fetched each object itself, from a presigned URL, with no Authorization header.
    direct = [r for r in _object_gets(s3.moto, "presign") if "X-Amz-Signature=" in r["url"]]
    assert {urlparse(r["url"]).path for r in direct} == {f"/{BUCKET}/presign/{k}" for k in IMAGES}
    assert all(_header(r, "User-Agent").startswith("python-requests") for r in direct), direct
    assert not [r for r in direct if _header(r, "Authorization")]
    # Proxy: only Label Studio (boto3, signing with the storage's credentials) fetched the objects.
    proxied = _object_gets(s3.moto, "proxy")
    assert {urlparse(r["url"]).path for r in proxied} == {f"/{BUCKET}/proxy/{k}" for k in IMAGES}
    assert all(_header(r, "Authorization").startswith("AWS4-HMAC-SHA256") for r in proxied), proxied
    assert not [r for r in proxied if "X-Amz-Signature=" in r["url"]]
    # Each object was downloaded once into the backend's cache.
    assert len(list((s3.work_dir / "image-cache").iterdir())) == len(MODES) * len(IMAGES)


def test_training_on_expert_annotations_reuses_the_cached_images(s3: S3Env) -> None:
    mode = "presign"
    before_gets = len(_object_gets(s3.moto, mode))
    before = backend_versions(s3.backend)
    annotated = []
    for task in _stored_tasks(s3, mode)[:2]:
        discs = IMAGES[task["data"]["image"].rsplit("/", 1)[1]]
        boxes = np.array([[cx - r, cy - r, cx + r, cy + r] for cx, cy, r in discs], np.float32)
        expert = Detections(xyxy=boxes, class_id=np.zeros(len(boxes), np.int64))
        result = detections_to_regions(
            expert, width=SIZE, height=SIZE, labels=["deposit"], from_name="label", to_name="image"
        )
        lsh.create_annotation(s3.client, task["id"], result)
        annotated.append(task["id"])
    resp = requests.post(
        f"{s3.ls.url}/api/ml/{s3.ml_ids[mode]}/train", json={}, headers=s3.ls.headers, timeout=60
    )
    assert resp.status_code == 200, resp.text
    version = wait_for_new_version(s3.backend, before)
    # The backend reports idle once it has also re-scored the non-expert task with the new version.
    training = _training_after_job(s3)
    assert training["state"] == "idle" and training["last_version"] == version, training
    # The job trained on the annotated tasks' images (copied from the cache into its folder) ...
    trained = {p.name for p in s3.work_dir.glob("job-*/images/*.png")}
    assert trained == {f"task{t}.png" for t in annotated}, trained
    # ... and nothing was downloaded again: no new GET reached S3 for the project's objects.
    assert len(_object_gets(s3.moto, mode)) == before_gets
