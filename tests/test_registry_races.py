"""model.registry under concurrent publishers: LATEST never moves back, publishes take turns across processes.

The interleavings are forced (a hook inside one publish runs the other; a second process holds the lock); a
publisher blocked on the registry's ``flock`` is seen in ``/proc/locks`` (Linux), so nothing waits on a timer.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import model.registry as registry_module
from model.registry import ModelRegistry

LOCK_FILE = "LOCK"


def _weights(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def _latest_name(model_dir: Path) -> str:
    return (model_dir / "LATEST").read_text().strip()


def _blocked_on(lock_path: Path) -> bool:
    """Whether some process or thread waits for an flock of ``lock_path`` (a ``->`` line of /proc/locks)."""
    try:
        inode = lock_path.stat().st_ino
    except FileNotFoundError:  # a registry without the lock never blocks
        return False
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and any(t.endswith(f":{inode}") for t in line.split()) for line in lines)


def _wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux /proc/locks")


def test_a_publish_that_claimed_an_older_number_does_not_move_latest_back(tmp_path, monkeypatch):
    """Worker A claims v2; before A writes LATEST, worker B publishes v3 (B waits for A's lock, if any)."""
    model_dir = tmp_path / "models"
    registry = ModelRegistry(model_dir)
    registry.publish(_weights(tmp_path / "v1.pt", b"1"), {})
    real_write = ModelRegistry._write_latest
    outcome: dict[str, object] = {}
    b_thread: list[threading.Thread] = []

    def publish_b() -> None:
        outcome["b"] = ModelRegistry(model_dir).publish(_weights(tmp_path / "b.pt", b"b"), {"worker": "B"})

    def write_latest(self: ModelRegistry, name: str) -> None:
        if threading.current_thread().name == "publisher-a" and not b_thread:
            thread = threading.Thread(target=publish_b, name="publisher-b")
            b_thread.append(thread)
            thread.start()
            # B either runs to its end (no lock) or waits for the lock A holds.
            _wait_until(lambda: not thread.is_alive() or _blocked_on(model_dir / LOCK_FILE))
        real_write(self, name)

    monkeypatch.setattr(ModelRegistry, "_write_latest", write_latest)

    def publish_a() -> None:
        outcome["a"] = registry.publish(_weights(tmp_path / "a.pt", b"a"), {"worker": "A"})

    a_thread = threading.Thread(target=publish_a, name="publisher-a")
    a_thread.start()
    a_thread.join(60)
    b_thread[0].join(60)
    a, b = outcome["a"], outcome["b"]
    assert a.number == 2 and b.number == 3  # type: ignore[attr-defined]
    assert _latest_name(model_dir) == b.version == registry.latest().version  # type: ignore[attr-defined,union-attr]


def test_latest_is_not_moved_back_by_a_publish_racing_a_writer_without_the_lock(tmp_path, monkeypatch):
    """An older backend (no lock) publishes v3 between this publish's rename of v2 and its LATEST write."""
    model_dir = tmp_path / "models"
    registry = ModelRegistry(model_dir)
    registry.publish(_weights(tmp_path / "v1.pt", b"1"), {})
    newer = "v0003-20990101T000000"
    real_fsync_dir = registry_module._fsync_dir

    def fsync_dir(path: Path) -> None:
        real_fsync_dir(path)
        if path == registry.versions_dir and not (path / newer).exists():
            folder = path / newer
            folder.mkdir()
            (folder / "weights.pt").write_bytes(b"3")
            (folder / "meta.json").write_text(f'{{"version": "{newer}"}}')
            (model_dir / "LATEST").write_text(newer + "\n")

    monkeypatch.setattr(registry_module, "_fsync_dir", fsync_dir)
    published = registry.publish(_weights(tmp_path / "v2.pt", b"2"), {})
    assert published.number == 2
    assert _latest_name(model_dir) == newer and registry.latest().version == newer  # type: ignore[union-attr]


def test_a_publish_waits_while_another_process_holds_the_registry_lock(tmp_path):
    """Two processes on one registry folder (two workers): the second publish waits for the first's lock."""
    model_dir = tmp_path / "models"
    registry = ModelRegistry(model_dir)
    first = registry.publish(_weights(tmp_path / "v1.pt", b"1"), {})
    holder_code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code, str(model_dir / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        done: list[str] = []
        thread = threading.Thread(
            target=lambda: done.append(registry.publish(_weights(tmp_path / "v2.pt", b"2"), {}).version)
        )
        thread.start()
        _wait_until(lambda: bool(done) or _blocked_on(model_dir / LOCK_FILE))
        assert not done, "published while another process held the registry lock"
        assert _latest_name(model_dir) == first.version
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(30)
    thread.join(60)
    assert done and done[0].startswith("v0002-") and _latest_name(model_dir) == done[0]


def test_activate_still_rolls_back_and_the_next_publish_moves_forward(tmp_path):
    registry = ModelRegistry(tmp_path / "models")
    first = registry.publish(_weights(tmp_path / "v1.pt", b"1"), {})
    registry.publish(_weights(tmp_path / "v2.pt", b"2"), {})
    assert registry.activate(first.version) == first
    assert registry.latest() == first  # an explicit rollback may move LATEST back
    third = registry.publish(_weights(tmp_path / "v3.pt", b"3"), {})
    assert third.number == 3 and registry.latest() == third
