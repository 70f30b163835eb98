"""Versioned model checkpoints in a folder, published atomically; a restart finds the latest good one.

Layout::

    model_dir/
      LATEST                          # one line: the current version name
      LOCK                            # flock'ed while a version is claimed and LATEST is written
      versions/v0003-20261128T021500/
        weights.pt
        meta.json

Several processes may publish into one registry (workers training different projects): claiming the next
number, renaming the version into place and updating ``LATEST`` happen under an exclusive ``flock`` of
``LOCK`` (POSIX; on NFS, Linux maps it to a POSIX lock), and a publish never moves ``LATEST`` back
to an older version than the one it names. Only :meth:`ModelRegistry.activate` (a rollback) does.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.pt"
META_NAME = "meta.json"
LATEST_NAME = "LATEST"
LOCK_NAME = "LOCK"
"""Locked (``flock``) by every process while it claims a version and writes ``LATEST``."""
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
        A crash leaves either the old or the new state. The number is claimed and ``LATEST`` written under
        the registry's lock, so concurrent publishers (other processes too) take turns, and ``LATEST`` is not
        moved back to an older version than the one it names.

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
            # Claim, rename and LATEST as one step across processes: otherwise a publisher that claimed v6
            # could write LATEST after one that claimed v7 did, and v7 would never serve.
            with self._locked():
                name = self._claim(staging, record)
                _fsync_dir(self.versions_dir)
                self._advance_latest(name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("published model version %s", name)
        return self.get(name)

    def _claim(self, staging: Path, record: Mapping[str, Any]) -> str:
        """Rename ``staging`` to the next free version name (with its meta written); the name."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for _attempt in range(100):
            existing = [v.number for v in self.versions()]
            existing += [
                _version_number(p.name) for p in self.versions_dir.iterdir() if _VERSION.match(p.name)
            ]
            name = f"v{max(existing, default=0) + 1:04d}-{stamp}"
            _write_synced(staging / META_NAME, json.dumps({**record, "version": name}, indent=2))
            try:
                os.rename(staging, self.versions_dir / name)  # fails if a writer without the lock took it
            except OSError:
                continue
            return name
        raise RuntimeError(f"could not claim a version name in {self.versions_dir}")

    def _advance_latest(self, name: str) -> None:
        """Point ``LATEST`` at ``name`` unless it names a newer complete version already (the caller holds
        the lock; this guards against a writer that does not take it, e.g. an older backend)."""
        try:
            current = (self.model_dir / LATEST_NAME).read_text(encoding="utf-8").strip()
        except OSError:
            current = ""
        found = self._load(current) if current else None
        if found is not None and (found.number, found.version) > (_version_number(name), name):
            logger.warning(
                "LATEST names the newer %s; %s published without becoming the latest", current, name
            )
            return
        self._write_latest(name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the registry's exclusive lock (``LOCK_NAME``, ``flock``: released if the process dies)."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.model_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def activate(self, version: str) -> ModelVersion:
        """Make a published version the latest again (a rollback), atomically.

        Every process reading this registry (backend replicas, workers) serves it from its next request; a
        later :meth:`publish` makes the new version the latest as usual.

        Raises:
            KeyError: no complete version of that name.
        """
        with self._locked():
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
