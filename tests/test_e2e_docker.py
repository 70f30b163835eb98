"""Dockerfile and docker-compose.yml agree with the real entry point, settings and package layout.

No Docker engine runs here, so these check the files against the code they start: the compose YAML parses,
its backend environment passes ``Settings.from_env``, the image copies every package the backend imports,
and the CMD is the backend's real command line.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _resolve(value: object, tmp_path: Path) -> str:
    """Compose interpolation: ``${X:-default}`` -> default, ``${X:?msg}`` -> a stand-in value."""
    text = str(value)
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "0123456789abcdef0123456789abcdef01234567", text)


def test_compose_parses_with_both_services_and_a_gpu_reservation() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"label-studio", "backend", "worker", "redis"}
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:1.23")
    devices = services["backend"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["backend"]["build"] == "."
    assert services["backend"]["environment"]["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    # The backend reaches Label Studio by service name and Label Studio reaches it on a private address.
    ls_env = services["label-studio"]["environment"]
    for name, expected in {
        "SSRF_PROTECTION_ENABLED": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
    }.items():
        assert ls_env[name] == expected, name
    # Both containers see the images at the same document root, so /data/local-files/?d=... resolves in both.
    assert (
        ls_env["LOCAL_FILES_DOCUMENT_ROOT"] == services["backend"]["environment"]["LOCAL_FILES_DOCUMENT_ROOT"]
    )
    assert set(compose["volumes"]) >= {"models", "label-studio-data"}


def test_compose_backend_environment_is_valid_settings(tmp_path: Path) -> None:
    from backend.settings import Settings

    env = {k: _resolve(v, tmp_path) for k, v in _compose()["services"]["backend"]["environment"].items()}
    # Container paths stand in for host folders here.
    env["MODEL_DIR"] = str(tmp_path / "models")
    env["LOCAL_FILES_DOCUMENT_ROOT"] = str(tmp_path)
    settings = Settings.from_env(env)
    assert settings.label_studio_url == "http://label-studio:8080"
    assert settings.device == "auto"
    assert settings.model_weights is None


def test_compose_worker_and_redis_queue(tmp_path: Path) -> None:
    """The worker runs the queue entry point with the backend's registry; Redis keeps jobs across restarts."""
    from backend.settings import Settings

    services = _compose()["services"]
    worker, backend, redis = services["worker"], services["backend"], services["redis"]
    assert worker["command"] == ["python", "-m", "backend.worker"]
    assert worker["image"] == backend["image"]
    assert worker["environment"]["REDIS_URL"] == backend["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "models:/models" in worker["volumes"] and "models:/models" in backend["volumes"]
    assert worker["environment"]["MODEL_DIR"] == backend["environment"]["MODEL_DIR"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    env = {k: _resolve(v, tmp_path) for k, v in worker["environment"].items()}
    env.update(MODEL_DIR=str(tmp_path / "models"), LOCAL_FILES_DOCUMENT_ROOT=str(tmp_path))
    assert Settings.from_env(env).redis_url == "redis://redis:6379/0"
    out = subprocess.run(
        [sys.executable, "-m", "backend.worker", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--heartbeat-grace" in out.stdout, out.stderr


def _dockerfile_lines() -> list[str]:
    return [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip()]


def test_dockerfile_runs_the_backend_as_non_root_on_9090() -> None:
    lines = _dockerfile_lines()
    cmd = [line for line in lines if line.startswith("CMD [")][-1]
    assert ast.literal_eval(cmd[4:]) == ["python", "-m", "backend", "--host", "0.0.0.0", "--port", "9090"]
    assert "EXPOSE 9090" in lines
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    text = DOCKERFILE.read_text()
    assert "YOLO_CONFIG_DIR=" in text and "MPLCONFIGDIR=" in text
    assert "requirements.txt" in text


def _repo_imports(package: str) -> set[str]:
    """Top-level repo packages imported (transitively) by ``package``."""
    local = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists() or p.name == "backend"}
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for path in (REPO / name).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                todo += [m.split(".")[0] for m in mods if m.split(".")[0] in local]
    return seen


def test_dockerfile_copies_every_package_the_backend_imports() -> None:
    copied = {
        line.split()[1].rstrip("/")
        for line in _dockerfile_lines()
        if line.startswith("COPY ") and line.split()[1].endswith("/")
    }
    assert _repo_imports("backend") <= copied, _repo_imports("backend") - copied
    for name in copied:
        assert (REPO / name).is_dir(), name
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert not copied & ignored


def test_backend_cli_takes_the_dockerfile_arguments() -> None:
    if not (REPO / "backend" / "__main__.py").exists():
        pytest.fail("backend/__main__.py is missing: the image's CMD would fail")
    out = subprocess.run(
        [sys.executable, "-m", "backend", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "--host" in out.stdout and "--port" in out.stdout
