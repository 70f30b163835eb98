"""Bulk scoring (backend.bulk): which tasks are scored, progress, resuming, and the write-back's calls.

The end-to-end test against a real Label Studio is tests/test_e2e_bulk.py.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_backend_process import LABEL_CONFIG, _tasks

from backend.bulk import BulkProgress, LabelStudioWriter, ProgressFile, run_bulk_scoring, scoring_state
from backend.images import ImageLoader
from backend.labelconfig import parse_label_config
from backend.service import ModelService, ScoredTask
from backend.settings import ExpertPolicy, Settings
from backend.training import expert_annotation

V = "v0002-20261128T000000"
OLD = "v0001-20261127T000000"
ALL_POLICY = ExpertPolicy.parse("all")


def _data(**extra):
    """The data of a task this backend scored with version V (every field it writes)."""
    fields = {"discrepancy": 0.2, "priority": 0.3, "noise_grade": "minor", "noise_types": "missed:1"}
    return {**fields, "model_version": V, **extra}


def expert(task):
    return expert_annotation(task, ALL_POLICY) is not None


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ({"data": {}}, "score"),
        ({"data": {"model_version": OLD}}, "score"),
        ({"data": _data()}, "done"),  # listed without predictions: the fields decide
        ({"data": _data(), "predictions": [{"model_version": V}]}, "done"),
        # Scored by this version before the backend wrote `priority`: scored again, so the field appears.
        ({"data": {k: v for k, v in _data().items() if k != "priority"}}, "score"),
        (
            {"data": _data(), "predictions": [{"model_version": OLD}]},
            "score",
        ),  # lost its prediction
        ({"data": _data(score_error="task 3: image not found")}, "score"),
        ({"data": _data(score_error=""), "predictions": [{"model_version": V}]}, "done"),
        ({"data": {}, "annotations": [{"id": 1, "result": []}]}, "expert"),
        (  # a (crowd) annotation changed after the prediction: scored again
            {
                "data": _data(),
                "predictions": [{"model_version": V, "created_at": "2026-11-28T09:00:00Z"}],
                "annotations": [{"id": 1, "updated_at": "2026-11-28T09:30:00+00:00"}],
            },
            "score",
        ),
        (
            {
                "data": _data(),
                "predictions": [{"model_version": V, "created_at": "2026-11-28T09:00:00Z"}],
                "annotations": [{"id": 1, "updated_at": "2026-11-28T08:30:00+00:00"}],
            },
            "done",
        ),
    ],
)
def test_scoring_state(task, expected):
    crowd_only = lambda t: False  # noqa: E731 - the two timestamp cases carry crowd annotations
    is_expert = expert if "updated_at" not in str(task) else crowd_only
    assert scoring_state(task, V, is_expert) == expected


def test_progress_rate_and_eta():
    progress = BulkProgress(project=3, version=V, total=100, done=40, scored=30, skipped=10)
    progress.started = time.time() - 10.0
    out = progress.as_dict()
    assert out["tasks_per_s"] == pytest.approx(3.0, abs=0.1)
    assert out["eta_s"] == pytest.approx(60 / 3.0, rel=0.05)
    progress.state, progress.updated = "done", progress.started + 10.0
    assert progress.as_dict()["eta_s"] == 0.0
    assert BulkProgress.from_dict(progress.as_dict()) == progress
    assert BulkProgress(project=1).as_dict()["eta_s"] is None  # no rate yet


class PagedSource:
    """Tasks in pages of ``page`` with the project's total; records what is published."""

    def __init__(self, tasks: list[dict[str, Any]], page: int = 4) -> None:
        self._tasks = tasks
        self._page = page
        self.published: list[ScoredTask] = []
        self.batches: list[int] = []
        self.pages_read = 0

    def label_config(self, project):
        return LABEL_CONFIG

    def tasks(self, project):
        return self._tasks

    def task_pages(self, project, page_size):
        for start in range(0, len(self._tasks), self._page):
            self.pages_read += 1
            yield self._tasks[start : start + self._page], len(self._tasks)

    def publish(self, scored):
        self.published.extend(scored)
        self.batches.append(len(scored))
        for item in scored:  # what Label Studio would now hold
            task = next(t for t in self._tasks if t["id"] == item.task_id)
            task["data"] = {**task["data"], **item.writeback()}


def _service(tmp_path: Path, root: Path) -> ModelService:
    from backend_helpers import tiny_weights

    settings = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "MODEL_WEIGHTS": str(tiny_weights()),
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "DEVICE": "cpu",
        }
    )
    service = ModelService(settings, loader=ImageLoader(document_root=root))
    service.publish_initial()
    return service


def test_bulk_scoring_pages_chunks_stops_and_resumes(tmp_path):
    root = tmp_path / "files"
    tasks = _tasks(root, n=11, n_expert=2)
    tasks[5]["data"]["image"] = "/data/local-files/?d=imgs/missing.png"
    source = PagedSource(tasks, page=4)
    service = _service(tmp_path, root)
    schema = parse_label_config(LABEL_CONFIG)
    seen: list[BulkProgress] = []
    stop = threading.Event()

    def on_progress(progress: BulkProgress) -> None:
        seen.append(BulkProgress.from_dict(progress.as_dict()))
        if progress.done >= 2:  # after the first page (2 expert tasks): stop after the next chunk
            stop.set()

    common = {
        "project": 1,
        "source": source,
        "service": service,
        "schema": schema,
        "is_expert": expert,
        "chunk": 3,
    }
    first = run_bulk_scoring(**common, on_progress=on_progress, stop=stop)
    assert first.state == "stopped" and first.done < 11
    assert first.total == 11 and seen[0].done == 0
    assert all(a.done <= b.done for a, b in itertools.pairwise(seen))
    n_first = len(source.published)
    assert n_first == 3 and first.scored == 3  # one chunk, written before stopping

    second = run_bulk_scoring(**common)  # resumes: what the first run wrote is skipped
    assert second.state == "done" and second.done == second.total == 11
    assert second.expert == 2 and second.failed == 1
    assert second.skipped == sum(s.ok for s in source.published[:n_first])
    assert second.scored + second.skipped == 8
    scored_ids = [s.task_id for s in source.published if s.ok]
    assert sorted(scored_ids) == [3, 4, 5, 7, 8, 9, 10, 11]  # each once; 6 (missing image) failed

    pages_before = source.pages_read
    third = run_bulk_scoring(**common)
    assert (third.scored, third.skipped, third.failed) == (0, 8, 1)
    assert source.pages_read - pages_before == 3  # 11 tasks in pages of 4


def test_scored_chunks_are_written_back_in_batches(tmp_path, monkeypatch):
    import backend.bulk as bulk

    monkeypatch.setattr(bulk, "WRITE_BATCH", 6)
    root = tmp_path / "files"
    source = PagedSource(_tasks(root, n=11, n_expert=2), page=4)
    done = run_bulk_scoring(
        project=1,
        source=source,
        service=_service(tmp_path, root),
        schema=parse_label_config(LABEL_CONFIG),
        is_expert=expert,
        chunk=3,
    )
    assert done.state == "done" and done.scored == 9
    # pages of 4 (2 expert tasks on the first): chunks of 3 are predicted as they fill, written 6 at a time
    assert source.batches == [6, 3]


def test_bulk_scoring_needs_a_positive_chunk(tmp_path):
    with pytest.raises(ValueError, match="chunk"):
        run_bulk_scoring(
            project=1,
            source=PagedSource([]),
            service=None,  # type: ignore[arg-type]
            schema=parse_label_config(LABEL_CONFIG),
            is_expert=expert,
            chunk=0,
        )


class RecordingClient:
    """Records the SDK calls the writer makes (the real calls are checked in tests/test_e2e_bulk.py)."""

    def __init__(self, fail_import: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_import = fail_import
        self._lock = threading.Lock()
        outer = self

        class Projects:
            def import_predictions(self, id, request):
                outer._record("import", (id, [r.task for r in request]))
                if outer.fail_import:
                    raise RuntimeError("400: invalid prediction")

        class Tasks:
            def update(self, id, data, request_options=None):
                outer._record("update", (id, data))
                outer._record("update_query", (request_options or {}).get("additional_query_parameters"))

            def get(self, id):
                raise AssertionError("no GET per task: the listing gave the data")

        class Predictions:
            def delete(self, id):
                outer._record("delete", id)

        self.projects, self.tasks, self.predictions = Projects(), Tasks(), Predictions()

    def _record(self, name, args):
        with self._lock:
            self.calls.append((name, args))


def _scored(task_id: int, *, ok: bool = True) -> ScoredTask:
    from backend.protocol import TaskFields

    if not ok:
        return ScoredTask(task_id, {"model_version": V, "error": "x"}, None, error="task: image not found")
    fields = TaskFields(
        discrepancy=0.5, priority=0.6, noise_grade="minor", noise_types="missed:1", model_version=V
    )
    return ScoredTask(task_id, {"result": [], "score": 0.5, "model_version": V}, fields)


def test_writer_imports_once_per_chunk_and_merges_listed_data():
    client = RecordingClient()
    writer = LabelStudioWriter(client, 7, threads=2)
    pairs = [
        (_scored(1), {"id": 1, "data": {"image": "a", "crowd_labels": []}, "predictions": []}),
        (_scored(2), {"id": 2, "data": {"image": "b"}, "predictions": [{"id": 9, "model_version": OLD}]}),
        (_scored(3), {"id": 3, "data": {"image": "c"}, "predictions": [{"id": 5, "model_version": V}]}),
        (_scored(4, ok=False), {"id": 4, "data": {"image": "d"}, "predictions": []}),
        (_scored(5), {"id": 5, "data": {"image": "e"}, "predictions": [{"id": 6, "model_version": "crowd"}]}),
    ]
    assert writer.write(pairs) == set()
    writer.close()
    imports = [args for name, args in client.calls if name == "import"]
    assert imports == [(7, [1, 2, 5])]  # one call; task 3 already holds this version's prediction
    assert [args for name, args in client.calls if name == "delete"] == [9]  # only our older version
    updates = dict(args for name, args in client.calls if name == "update")
    assert updates[1] == {"image": "a", "crowd_labels": [], **_scored(1).writeback()}
    assert updates[4] == {"image": "d", "score_error": "task: image not found"}
    assert set(updates) == {1, 2, 3, 4, 5}
    queries = [args for name, args in client.calls if name == "update_query"]
    assert queries == [{"review": "1"}] * 5  # Label Studio's lean task query (backend.bulk.LEAN_UPDATE)


def test_writer_replaces_a_stale_prediction_of_the_same_version():
    client = RecordingClient()
    writer = LabelStudioWriter(client, 7)
    stale = {
        "id": 1,
        "data": {"image": "a"},
        "predictions": [{"id": 3, "model_version": V, "created_at": "2026-11-28T09:00:00Z"}],
        "annotations": [{"id": 8, "updated_at": "2026-11-28T09:10:00Z"}],  # a crowd annotation came later
    }
    assert writer.write([(_scored(1), stale)]) == set()
    writer.close()
    assert [args for name, args in client.calls if name == "import"] == [(7, [1])]
    assert [args for name, args in client.calls if name == "delete"] == [3]


def test_writer_leaves_tasks_unmarked_when_the_import_fails():
    client = RecordingClient(fail_import=True)
    writer = LabelStudioWriter(client, 7)
    pairs = [
        (_scored(1), {"id": 1, "data": {}, "predictions": [{"id": 9, "model_version": OLD}]}),
        (_scored(2, ok=False), {"id": 2, "data": {}}),
    ]
    assert writer.write(pairs) == {1}
    writer.close()
    assert [args[0] for name, args in client.calls if name == "update"] == [2]  # 1 keeps its old fields
    assert [name for name, _ in client.calls if name == "delete"] == []  # and its older prediction


def test_progress_file_round_trip(tmp_path):
    store = ProgressFile(tmp_path / "bulk")
    progress = BulkProgress(project=4, version=V, total=10, done=3, scored=3)
    store.save(progress)
    (tmp_path / "bulk" / "project-9.json").write_text("{not json")
    assert store.load_all() == [BulkProgress.from_dict(progress.as_dict())]


def test_a_backend_started_after_a_crash_resumes_the_unfinished_job(tmp_path):
    from backend_helpers import tiny_weights
    from fastapi.testclient import TestClient
    from test_backend_process import InjectedSource

    from backend.app import create_app

    root = tmp_path / "files"
    tasks = _tasks(root, n=4, n_expert=1)
    settings = Settings.from_env(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "MODEL_WEIGHTS": str(tiny_weights()),
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            "DEVICE": "cpu",
        }
    )
    store = ProgressFile(settings.scratch_dir / "bulk-scoring")
    store.save(BulkProgress(project=1, version=OLD, total=4, done=2, scored=1))  # as a killed run left it
    store.save(BulkProgress(project=2, version=OLD, state="done", total=3, done=3, scored=3))
    source = InjectedSource(tasks)
    app = create_app(settings, source=source)
    app.state.trainer._rescore_thread.join(120)
    assert [s.task_id for s in source.published] == [2, 3, 4]  # project 1 only; the expert task left out
    health = TestClient(app).get("/health").json()["bulk_scoring"]
    assert health["1"]["state"] == "done" and health["1"]["scored"] == 3 and health["1"]["expert"] == 1
    assert health["2"]["state"] == "done" and health["2"]["version"] == OLD  # the earlier run, as it was
