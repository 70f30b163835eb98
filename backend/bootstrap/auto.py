"""``BOOTSTRAP=auto``: the backend trains its first version on crowd labels when it has none."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.service import ModelService
    from backend.settings import Settings
    from backend.training import TrainingManager

logger = logging.getLogger(__name__)

__all__ = ["AutoBootstrap"]


class AutoBootstrap:
    """``BOOTSTRAP=auto``: queue a bootstrap for a project the first time it calls an empty backend.

    It acts only when every condition holds: ``BOOTSTRAP=auto``, Label Studio credentials set,
    ``MODEL_WEIGHTS`` unset, nothing in the registry; and once per project per process (a project without
    crowd labels fails once, visibly in ``/health``, and is not retried until the backend restarts).

    Args:
        settings: the backend settings.
        service: the model holder (its registry says whether a version exists).
        trainer: the training manager that runs the job (one job at a time, like webhook trainings).
    """

    def __init__(self, settings: Settings, service: ModelService, trainer: TrainingManager) -> None:
        self.settings = settings
        self.service = service
        self.trainer = trainer
        self._tried: set[int] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        s = self.settings
        return s.bootstrap == "auto" and s.label_studio_enabled and s.model_weights is None

    def maybe_start(self, project: int | None) -> bool:
        """Queue the bootstrap of ``project`` if the conditions hold; True when it was queued now."""
        if project is None or not self.enabled or self.service.latest_version() is not None:
            return False
        with self._lock:
            if project in self._tried:
                return False
            self._tried.add(project)
        status = self.trainer.request(project, kind="bootstrap")
        logger.info(
            "empty model registry: bootstrapping from project %s's crowd labels (%s)", project, status
        )
        return True

    def running_for(self, project: int | None) -> bool:
        """Whether a bootstrap was queued for ``project`` (for /predict's 503 message)."""
        with self._lock:
            return project in self._tried
