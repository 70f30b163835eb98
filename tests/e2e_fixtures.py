"""Session fixtures for the end-to-end tests: a real Label Studio 1.23, the real backend process, a project.

Imported by tests/test_e2e.py. Expensive pieces are cached under ``.work/test-cache`` (the tiny initial model
and an initialised, empty Label Studio data folder, so that later sessions skip the ~35 s database setup).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from demo import labelstudio as lsh

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".work" / "test-cache"
LS_TEMPLATE = CACHE / "ls-template-1.23.2"
INITIAL_WEIGHTS = CACHE / "e2e-initial-yolov8n-96.pt"
SYNTH_PRESET, SYNTH_SEED = "tiny", 7
TRAIN_IMGSZ = 96


@dataclass
class E2EEnv:
    """What the end-to-end tests share (mutable: tests record the training they triggered)."""

    ls: lsh.LabelStudioServer
    backend: lsh.BackendProcess
    client: Any
    project: int
    ml_id: int
    dataset: Any  # synth.SynthDataset
    data_dir: Path
    document_root: Path
    label_config: str


def _initial_weights(dataset: Any, work: Path) -> Path:
    """A yolov8n trained 2 epochs at 96 px on the tiny set's expert labels (cached across sessions)."""
    if INITIAL_WEIGHTS.exists():
        return INITIAL_WEIGHTS
    from model.dataset import LabeledImage, write_yolo_dataset
    from model.train import train_detector

    def labeled(records: list[Any]) -> list[LabeledImage]:
        return [LabeledImage(path=r.path, labels=r.expert, width=r.width, height=r.height) for r in records]

    train = [r for r in dataset.images if r.split == "train"]
    val = [r for r in dataset.images if r.split == "val"] or train[:2]
    data_yaml = write_yolo_dataset(
        work / "initial-ds", train=labeled(train), val=labeled(val), names=["deposit"]
    )
    result = train_detector(
        data_yaml=data_yaml,
        out_dir=work / "initial-run",
        epochs=2,
        imgsz=TRAIN_IMGSZ,
        batch=8,
        seed=0,
        device="cpu",
        val=False,
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.weights, INITIAL_WEIGHTS)
    return INITIAL_WEIGHTS


def _label_studio_data(target: Path, document_root: Path) -> None:
    """Copy a cached, initialised Label Studio data folder to ``target`` (creating the cache once)."""
    if not (LS_TEMPLATE / "label_studio.sqlite3").exists():
        shutil.rmtree(LS_TEMPLATE, ignore_errors=True)
        with lsh.LabelStudioServer(LS_TEMPLATE, document_root=document_root, startup_timeout=240):
            pass
    shutil.copytree(LS_TEMPLATE, target, ignore=shutil.ignore_patterns("*.log"))


CONTROL_IMAGE_ID = "control/no-crowd-labels"


def _control_task(dataset: Any, document_root: Path) -> dict[str, Any]:
    """A task without crowd labels: with nothing to contradict, it must rank below noisy crowd-labelled tasks.

    (A 2-epoch model finds few deposits, so every crowd-labelled task tends to look equally suspicious.)
    """
    record = next(r for r in dataset.images if r.split == "val")
    rel = Path(record.path).relative_to(document_root)
    return {
        "data": {
            "image": f"/data/local-files/?d={rel}",
            "image_id": CONTROL_IMAGE_ID,
            "width": record.width,
            "height": record.height,
            "crowd_labels": [],
        }
    }


def _require_label_studio() -> None:
    """Skip where Label Studio's environment is missing (a bare ``pytest``), except under CI (``CI`` set, as
    ``.ci/run`` does, after ``make test`` built it): there a missing server fails the end-to-end tests."""
    if not lsh.LS_BIN.exists():
        message = "Label Studio is not installed in .venv-ls (run `make setup-ls`; make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EEnv]:
    """Synthetic data, a tiny model, Label Studio and backend processes, a project wired to the backend."""
    _require_label_studio()
    import synth

    base = tmp_path_factory.mktemp("e2e")
    document_root = base / "root"
    data_dir = document_root / "data"
    dataset = synth.generate(SYNTH_PRESET, SYNTH_SEED).write(data_dir, document_root=document_root)
    weights = _initial_weights(dataset, base)
    _label_studio_data(base / "ls", document_root)
    ls = lsh.LabelStudioServer(base / "ls", document_root=document_root, startup_timeout=240)
    env = {
        "LABEL_STUDIO_URL": ls.url,
        "LABEL_STUDIO_API_KEY": ls.token,
        "MODEL_DIR": str(base / "models"),
        "MODEL_WEIGHTS": str(weights),
        "DEVICE": "cpu",
        "LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "TRAIN_MIN_ANNOTATIONS": "1",
        "TRAIN_EPOCHS": "1",
        "TRAIN_IMGSZ": str(TRAIN_IMGSZ),
        "TRAIN_BATCH": "8",
        "LOG_LEVEL": "DEBUG",
    }
    backend = lsh.BackendProcess(None, env, log_path=base / "backend.log")
    with ls, backend:
        client = ls.client()
        label_config = (data_dir / "label_studio" / "label_config.xml").read_text()
        project = lsh.create_project(client, "e2e active label cleaning", label_config)
        lsh.add_local_storage(client, project, data_dir)
        tasks = json.loads((data_dir / "label_studio" / "tasks.json").read_text())
        lsh.import_tasks(client, project, [*tasks, _control_task(dataset, document_root)])
        ml_id = lsh.connect_backend(client, project, backend.url, title="e2e backend")
        yield E2EEnv(
            ls=ls,
            backend=backend,
            client=client,
            project=project,
            ml_id=ml_id,
            dataset=dataset,
            data_dir=data_dir,
            document_root=document_root,
            label_config=label_config,
        )


def backend_versions(backend: lsh.BackendProcess) -> list[str]:
    """Version names the backend's registry lists (``GET /versions``)."""
    resp = requests.get(f"{backend.url}/versions", timeout=10)
    resp.raise_for_status()
    return [v if isinstance(v, str) else str(v.get("version")) for v in resp.json()["versions"]]


def wait_for_new_version(backend: lsh.BackendProcess, known: list[str], *, timeout: float = 180) -> str:
    """Poll ``/versions`` until a version not in ``known`` appears; returns it (fails with /health)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [v for v in backend_versions(backend) if v not in known]
        if new:
            return sorted(new)[-1]
        time.sleep(2)
    health = requests.get(f"{backend.url}/health", timeout=10).json()
    raise AssertionError(f"no new model version after {timeout:.0f} s; /health: {health}")


@dataclass
class LabelStudioOnly:
    """A Label Studio server without a backend, for tests of the Label Studio side alone (the importer)."""

    ls: lsh.LabelStudioServer
    client: Any
    document_root: Path


@pytest.fixture(scope="module")
def label_studio_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioOnly]:
    """One Label Studio 1.23 per test module, from the cached initialised data folder (about 5 s to start)."""
    _require_label_studio()
    base = tmp_path_factory.mktemp("ls-only")
    document_root = base / "root"
    document_root.mkdir()
    _label_studio_data(base / "ls", document_root)
    with lsh.LabelStudioServer(base / "ls", document_root=document_root, startup_timeout=240) as ls:
        yield LabelStudioOnly(ls=ls, client=ls.client(), document_root=document_root)
