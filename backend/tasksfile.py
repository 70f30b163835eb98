"""A task source without Label Studio: tasks and the labelling config from one JSON file (``TASKS_FILE``).

For offline runs, the load benchmark and the queue tests: the file is ``{"label_config": "<View>...",
"tasks": [...]}`` with tasks as Label Studio exports them (``id``, ``data``, ``annotations``). New scores
are appended to ``WORK_DIR/scores.jsonl``, one JSON object per task (``task``, ``prediction``, ``fields``).
The file is read on every training, so editing it between trainings is how new expert annotations arrive.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from backend.service import ScoredTask
from backend.settings import Settings
from backend.training import TaskSource

__all__ = ["TasksFileSource", "source_factory"]


class TasksFileSource:
    """:class:`backend.training.TaskSource` over a JSON file.

    Args:
        path: the tasks file.
        scores: where published scores are appended (JSON lines).
    """

    def __init__(self, path: Path, scores: Path) -> None:
        self.path = path
        self.scores = scores

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"TASKS_FILE: cannot read {self.path} as JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list):
            raise ValueError(f'TASKS_FILE: expected {{"label_config": "...", "tasks": [...]}} in {self.path}')
        return doc

    def label_config(self, project: int | None) -> str:
        return str(self._read().get("label_config") or "")

    def tasks(self, project: int | None) -> list[dict[str, Any]]:
        return [dict(t) for t in self._read()["tasks"]]

    def publish(self, scored: Sequence[ScoredTask]) -> None:
        lines = "".join(
            json.dumps({"task": s.task_id, "prediction": s.prediction, "fields": s.writeback()}) + "\n"
            for s in scored
        )
        self.scores.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.scores, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, lines.encode())  # one append per chunk: concurrent workers do not interleave lines
        finally:
            os.close(fd)


def source_factory(settings: Settings) -> Callable[[Settings], TaskSource] | None:
    """A factory of :class:`TasksFileSource` when ``TASKS_FILE`` is set, else None (Label Studio)."""
    if settings.tasks_file is None:
        return None
    path = settings.tasks_file
    return lambda s: TasksFileSource(path, s.scratch_dir / "scores.jsonl")
