"""The demo's process plumbing without Label Studio: environments, proxies, the run lock, option checks."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests

from demo import labelstudio as lsh
from demo.__main__ import OptionsChangedError, generate_dataset, parse_args
from demo.runlock import DemoAlreadyRunningError, DemoLock


class _Recorder(Mapping[str, str]):
    """An environment that records every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings should look names up, not list the environment")

    def __len__(self) -> int:
        return len(self.values)


def test_backend_variables_cover_what_settings_read(tmp_path: Path) -> None:
    from backend.settings import Settings

    env = _Recorder(
        {
            "MODEL_DIR": str(tmp_path),
            "TILE_SIZE": "256",
            "CROWD_SOURCE": "annotations",
            "EXPERT_MODE": "ground_truth",
        }
    )
    Settings.from_env(env)
    # Every declared name is read in this configuration, and nothing else: no stale or missing entry.
    assert env.read == lsh.backend_variables(), env.read ^ lsh.backend_variables()
    assert {"BASIC_AUTH_USER", "BASIC_AUTH_PASS", "REDIS_URL", "TASKS_FILE", "WORK_DIR"} <= env.read
    assert {"TRAIN_EPOCHS", "TILE_OVERLAP", "LSM_MATCH_IOU"} <= lsh.backend_variables()


def test_backend_environ_drops_backend_settings_keeps_the_rest() -> None:
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
        "REDIS_URL": "redis://x",
        "TASKS_FILE": "/t.json",
        "WORK_DIR": "/w",
        "TRAIN_EPOCHS": "99",
        "TILE_SIZE": "512",
        "LSM_MATCH_IOU": "0.3",
    }
    assert lsh.backend_environ(inherited) == {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8"}


def test_label_studio_environ_wins_over_the_users_settings() -> None:
    inherited = {
        "PATH": "/usr/bin",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/elsewhere",
        "HEARTEX_DJANGO_DB": "default",
        "LABEL_STUDIO_PORT": "1",
        "DATABASE_NAME": "/other.sqlite3",
        "LOCAL_FILES_SERVING_ENABLED": "false",
        "HOST": "http://example.org",
    }
    env = lsh.label_studio_environ(
        inherited, {"LOCAL_FILES_DOCUMENT_ROOT": "/root", "LOCAL_FILES_SERVING_ENABLED": "true"}
    )
    assert env == {
        "PATH": "/usr/bin",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/root",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
    }


@pytest.fixture
def local_server() -> Iterator[str]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_localhost_bypasses_a_bogus_proxy(monkeypatch: pytest.MonkeyPatch, local_server: str) -> None:
    env: dict[str, str] = {"http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    for name in ("http_proxy", "HTTP_PROXY", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", env["http_proxy"])
    monkeypatch.setenv("no_proxy", "example.org")
    with pytest.raises(requests.exceptions.ProxyError):  # the premise: the proxy gets 127.0.0.1 traffic
        requests.get(local_server, timeout=5)
    lsh.bypass_proxies_for_localhost()
    assert os.environ["no_proxy"] == "example.org,127.0.0.1,localhost"
    assert os.environ["NO_PROXY"] == "127.0.0.1,localhost"
    assert requests.get(local_server, timeout=5).text == "ok"
    lsh.bypass_proxies_for_localhost()  # idempotent
    assert os.environ["no_proxy"] == "example.org,127.0.0.1,localhost"


def test_lock_refuses_a_second_demo(tmp_path: Path) -> None:
    second = DemoLock(tmp_path / "demo.pid")
    with DemoLock(tmp_path / "demo.pid"), pytest.raises(DemoAlreadyRunningError, match="another --work"):
        second.acquire()
    with DemoLock(tmp_path / "demo.pid"):  # released: free again
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"  # zombie: dead


def test_lock_ends_the_groups_a_killed_demo_left(tmp_path: Path) -> None:
    # An orphan in its own session, as a killed demo's server would be (its parent, sh, exits at once).
    spawn = "setsid sleep 60 >/dev/null 2>&1 & echo $!"
    orphan = int(subprocess.run(["sh", "-c", spawn], capture_output=True, text=True, check=True).stdout)
    # `echo $!` can run before the child has called setsid(): wait until it leads its own group, as a server
    # started by ManagedProcess does before Popen returns (start_new_session, then exec).
    deadline = time.monotonic() + 10
    while os.getpgid(orphan) != orphan and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        crashed = DemoLock(tmp_path / "demo.pid")
        crashed.acquire()
        crashed.add_group(orphan)
        assert crashed._file is not None
        crashed._file.close()  # dies without cleanup: the lock goes, the file still lists the group
        crashed._file = None
        with DemoLock(tmp_path / "demo.pid"):
            assert not _alive(orphan)
            assert json.loads((tmp_path / "demo.pid").read_text())["groups"] == []
    finally:
        if _alive(orphan):
            os.kill(orphan, 9)


def test_children_die_with_the_demo() -> None:
    """A child started with PR_SET_PDEATHSIG gets SIGTERM when its parent dies without cleanup."""
    code = (
        "import os, subprocess, sys; from demo.labelstudio import _die_with_parent; "
        "p = subprocess.Popen(['sleep', '60'], start_new_session=True, "
        "preexec_fn=_die_with_parent(os.getpid())); print(p.pid, flush=True); os._exit(0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=lsh.REPO
    )
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, 9)
        raise AssertionError("the child outlived its parent")


def test_reused_data_of_other_options_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "label_studio").mkdir(parents=True)
    (data / "label_studio" / "tasks.json").write_text("[]")
    (data / "manifest.json").write_text(json.dumps({"preset": "tiny", "seed": 3}))
    generate_dataset(data, tmp_path, preset="tiny", seed=3)  # same options: reused, nothing run
    with pytest.raises(OptionsChangedError, match=r"--preset tiny --seed 3.*make clean.*--work"):
        generate_dataset(data, tmp_path, preset="quick", seed=3)
    with pytest.raises(OptionsChangedError):
        generate_dataset(data, tmp_path, preset="tiny", seed=4)


def test_device_defaults_to_the_device_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE", "cpu")
    assert parse_args([]).device == "cpu"
    assert parse_args(["--device", "cuda"]).device == "cuda"
    monkeypatch.delenv("DEVICE")
    assert parse_args([]).device == "auto"
