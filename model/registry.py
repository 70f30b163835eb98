"""Versioned model checkpoints in a folder, published atomically; a restart finds the latest good one.

Layout::

    model_dir/
      LATEST                          # one line: the current version name
      versions/v0003-20261128T021500/
        weights.pt
        meta.json
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.pt"
META_NAME = "meta.json"
LATEST_NAME = "LATEST"
LEGACY_FAMILY = "yolo"
"""The detector family of versions whose meta names none (published before families were recorded)."""
_VERSION = re.compile(r"^v(\d{4,})-(\d{8}T\d{6})$")


@dataclass(frozen=True)
class ModelVersion:
    """One published checkpoint.

    Attributes:
        version: sortable name ``v<NNNN>-<UTC yyyymmddThhmmss>``.
        weights: path of its ``weights.pt``.
        meta: its metadata (the caller's, plus ``version`` and ``published_at``); ``"family"`` names the
            detector family that loads the weights (see ``model.detector.load_detector``).
    """

    version: str
    weights: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The detector family that wrote the weights (``meta["family"]``; older versions: YOLO)."""
        return str(self.meta.get("family", LEGACY_FAMILY))

    @property
    def number(self) -> int:
        """The running number in the version name."""
        return _version_number(self.version)


def _version_number(name: str) -> int:
    match = _VERSION.match(name)
    if match is None:
        raise ValueError(f"version: expected a name like 'v0003-20261128T021500', got {name!r}")
    return int(match.group(1))


def is_version_name(name: str) -> bool:
    """Whether ``name`` has the form of a version this registry publishes (``v0003-20261128T021500``)."""
    return bool(_VERSION.match(name))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync directories
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


class ModelRegistry:
    """Checkpoints of one model, newest last.

    Args:
        model_dir: the registry folder (created on first publish).
    """

    def __init__(self, model_dir: Path | str) -> None:
        self.model_dir = Path(model_dir)
        self.versions_dir = self.model_dir / "versions"

    def _load(self, name: str) -> ModelVersion | None:
        """The version if its folder is complete (weights and readable meta), else None."""
        try:
            _version_number(name)
        except ValueError:
            return None
        folder = self.versions_dir / name
        weights = folder / WEIGHTS_NAME
        try:
            meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or not weights.is_file():
            return None
        return ModelVersion(version=name, weights=weights, meta=meta)

    def versions(self) -> list[ModelVersion]:
        """Complete versions, oldest first; temporary and incomplete folders are skipped."""
        if not self.versions_dir.is_dir():
            return []
        found = [self._load(p.name) for p in self.versions_dir.iterdir() if p.is_dir()]
        return sorted((v for v in found if v is not None), key=lambda v: (v.number, v.version))

    def get(self, version: str) -> ModelVersion:
        """A published version by name.

        Raises:
            KeyError: no complete version of that name.
        """
        found = self._load(version)
        if found is None:
            known = [v.version for v in self.versions()]
            raise KeyError(
                f"version: no complete model version {version!r} in {self.versions_dir}; have {known}"
            )
        return found

    def latest(self) -> ModelVersion | None:
        """The version named in ``LATEST``, else the newest complete one, else None."""
        try:
            name = (self.model_dir / LATEST_NAME).read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
        found = self._load(name) if name else None
        if found is not None:
            return found
        every = self.versions()
        if every and name:
            logger.warning(
                "LATEST names %r, which is not a complete version; using %s", name, every[-1].version
            )
        return every[-1] if every else None

    def publish(self, weights: Path | str, meta: Mapping[str, Any] | None = None) -> ModelVersion:
        """Copy a checkpoint in as the next version and make it the latest, atomically.

        The version folder is assembled in a temporary folder and renamed into place; ``LATEST`` is
        written to a temporary file, fsynced and renamed over the old one.
        A crash leaves either the old or the new state.

        Args:
            weights: the checkpoint file to copy.
            meta: JSON-serialisable metadata (e.g. training metrics, data size, ``"family"``).

        Returns:
            The new version.

        Raises:
            FileNotFoundError: no file at ``weights``.
            TypeError: ``meta`` is not JSON-serialisable, or its ``"family"`` is not a string.
        """
        source = Path(weights)
        if not source.is_file():
            raise FileNotFoundError(f"weights: no checkpoint file at {source}")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        record = {**dict(meta or {}), "published_at": datetime.now(UTC).isoformat(timespec="seconds")}
        if not isinstance(record.get("family", LEGACY_FAMILY), str):
            raise TypeError(f"meta.family: expected a detector family name, got {record['family']!r}")
        try:
            json.dumps(record)
        except (TypeError, ValueError) as err:
            raise TypeError(f"meta: expected JSON-serialisable values ({err})") from err
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.versions_dir))
        try:
            shutil.copyfile(source, staging / WEIGHTS_NAME)
            with open(staging / WEIGHTS_NAME, "rb+") as handle:
                os.fsync(handle.fileno())
            for _attempt in range(100):
                existing = [v.number for v in self.versions()]
                existing += [
                    _version_number(p.name) for p in self.versions_dir.iterdir() if _VERSION.match(p.name)
                ]
                name = f"v{max(existing, default=0) + 1:04d}-{stamp}"
                _write_synced(staging / META_NAME, json.dumps({**record, "version": name}, indent=2))
                try:
                    os.rename(staging, self.versions_dir / name)  # fails if another writer took the name
                except OSError:
                    continue
                break
            else:
                raise RuntimeError(f"could not claim a version name in {self.versions_dir}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.versions_dir)
        self._write_latest(name)
        logger.info("published model version %s", name)
        return self.get(name)

    def activate(self, version: str) -> ModelVersion:
        """Make a published version the latest again (a rollback), atomically.

        Every process reading this registry (backend replicas, workers) serves it from its next request; a
        later :meth:`publish` makes the new version the latest as usual.

        Raises:
            KeyError: no complete version of that name.
        """
        found = self.get(version)
        self._write_latest(found.version)
        logger.info("activated model version %s", found.version)
        return found

    def _write_latest(self, name: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".LATEST-", dir=self.model_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(name + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.model_dir / LATEST_NAME)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.model_dir)
