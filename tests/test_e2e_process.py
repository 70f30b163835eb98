"""demo.labelstudio's process management with real child processes (no Label Studio needed)."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from demo.labelstudio import ManagedProcess, ProcessStartError, free_port

# A tiny health server that spawns a grandchild in its process group, like Label Studio's workers.
HEALTH_SERVER = textwrap.dedent(
    """
    import http.server, json, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[2], "w").write(str(child.pid))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "UP"}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_free_port_skips_a_busy_preferred_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = free_port(taken)
        assert port != taken
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # really free


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Label Studio and the backend pick their ports before either binds: a port still free is not handed
    out again (a CI run once started the backend on Label Studio's port)."""
    first = free_port()
    assert free_port(first) != first  # free, but already handed out
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports) and first not in ports


def test_start_waits_for_health_and_stop_ends_the_whole_group(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(HEALTH_SERVER)
    pid_file = tmp_path / "grandchild.pid"
    proc = ManagedProcess(
        [sys.executable, str(script), str(port), str(pid_file)],
        env=dict(os.environ),
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=tmp_path / "log.txt",
        name="health server",
        startup_timeout=30,
        grace=5,
    )
    with proc:
        assert proc.healthy() and proc.running()
        leader = proc.proc.pid if proc.proc else -1
        grandchild = int(pid_file.read_text())
        assert _alive(grandchild)
    assert not proc.running()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_alive(leader) or _alive(grandchild)):
        time.sleep(0.1)
    assert not _alive(leader) and not _alive(grandchild)
    proc.stop()  # idempotent


@pytest.mark.parametrize(
    ("code", "timeout", "message"),
    [
        ("import sys; print('bad config'); sys.exit(3)", 30, "exited with code 3"),
        ("import time; time.sleep(60)", 1.5, "not UP after"),
    ],
)
def test_start_failure_reports_the_log_tail(tmp_path: Path, code: str, timeout: float, message: str) -> None:
    proc = ManagedProcess(
        [sys.executable, "-c", code],
        env=dict(os.environ),
        health_url=f"http://127.0.0.1:{free_port()}/health",
        log_path=tmp_path / "log.txt",
        name="broken",
        startup_timeout=timeout,
        grace=2,
    )
    with pytest.raises(ProcessStartError, match=message) as err:
        proc.start()
    if "exited" in message:
        assert "bad config" in str(err.value)
    assert not proc.running()


def test_startup_timeout_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="startup_timeout"):
        ManagedProcess(
            ["true"], env={}, health_url="http://x", log_path=tmp_path / "l", name="n", startup_timeout=0
        )
