"""The Makefile: setup makes working venvs; the checks on other seeds run the protocol they name."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _simulate_args(*make_args: str) -> list[str]:
    """The arguments `make -n` would pass to bench.simulate (nothing is run)."""
    proc = subprocess.run(["make", "-n", *make_args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "-m bench.simulate" in line]
    assert len(lines) == 1, proc.stdout
    words = shlex.split(lines[0])
    return words[words.index("bench.simulate") + 1 :]


def _options(args: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for i, word in enumerate(args):
        if word.startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
            found.setdefault(word, []).append(value)
    return found


def _commands(stdout: str) -> list[str]:
    """``make -n``'s commands, without make's own messages (under an outer make, as in ``make test``, it
    prints "make[1]: Entering directory ..." around them)."""
    return [line for line in stdout.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]


def test_simulate_check_runs_the_reported_protocol_on_other_seeds() -> None:
    reported = _options(_simulate_args("simulate"))
    check = _options(_simulate_args("simulate-check", "SEEDS=200,201"))
    assert reported["--seed-list"] == ["0,1,2,3,4"] and check["--seed-list"] == ["200,201"]
    assert check["--out"] != reported["--out"]  # never resumes from, or overwrites, the reported run
    for key in ("--seed-list", "--out"):
        del reported[key], check[key]
    assert check == reported


def test_simulate_check_passes_each_noise_override_and_keeps_its_own_folder() -> None:
    plain = _options(_simulate_args("simulate-check", "SEEDS=200"))
    noisy = _options(
        _simulate_args("simulate-check", "SEEDS=200", "NOISE=missed_rate=0.35 localization_iou=0.3,0.6")
    )
    assert noisy["--noise"] == ["missed_rate=0.35", "localization_iou=0.3,0.6"]
    assert "--noise" not in plain
    assert noisy["--out"] != plain["--out"]
    assert noisy["--out"][0].endswith("check-200-missed_rate-0.35_localization_iou-0.3-0.6")


def test_simulate_check_with_session_runs_the_session_protocol_in_a_folder_of_its_own() -> None:
    session = _options(_simulate_args("simulate-session"))
    check = _options(_simulate_args("simulate-check", "SEEDS=200,201", "SESSION=1"))
    reported_protocol = _options(_simulate_args("simulate-check", "SEEDS=200,201"))
    assert check["--out"] != reported_protocol["--out"]  # the two protocols never share a run folder
    assert check["--out"][0].endswith("check-200-201-session")
    assert "--verdict-only" in check and "--verdict-only" not in reported_protocol
    for key in ("--seed-list", "--out"):
        del session[key], check[key]
    assert check == session


def test_the_held_out_targets_run_seeds_5_6_7_with_their_own_protocol() -> None:
    heldout = _options(_simulate_args("simulate-heldout"))
    heldout_session = _options(_simulate_args("simulate-heldout-session"))
    assert heldout["--seed-list"] == heldout_session["--seed-list"] == ["5,6,7"]
    # simulate-heldout always runs the reported protocol
    assert _options(_simulate_args("simulate-heldout", "SESSION=1")) == heldout
    assert heldout == _options(_simulate_args("simulate-check", "SEEDS=5,6,7"))
    assert heldout_session == _options(_simulate_args("simulate-check", "SEEDS=5,6,7", "SESSION=1"))


def test_the_noise_check_target_runs_the_session_protocol_on_its_seeds_and_mix() -> None:
    noise = _options(_simulate_args("simulate-noise-session"))
    assert noise["--seed-list"] == ["200,201"]
    assert noise["--noise"] == ["missed_rate=0.35", "localization_iou=0.3,0.6"]
    assert noise == _options(
        _simulate_args(
            "simulate-check", "SEEDS=200,201", "NOISE=missed_rate=0.35 localization_iou=0.3,0.6", "SESSION=1"
        )
    )


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("simulate", "quick"),
        ("simulate-session", "session"),
        ("simulate-heldout", "heldout"),
        ("simulate-heldout-session", "heldout-session"),
        ("simulate-noise-session", "noise-session"),
    ],
)
def test_each_published_run_is_copied_from_the_folder_it_ran_in(target: str, name: str) -> None:
    """A publishing target must copy the run it just made, not another folder's results."""
    out = _options(_simulate_args(target))["--out"][0]
    proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    copies = [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("cp ")]
    assert len(copies) == 1, proc.stdout
    assert copies[0][1] == f"{out}/results.json" and copies[0][-1] == f"docs/results/{name}/"
    block = [line for line in proc.stdout.splitlines() if "-m bench.readme" in line]
    assert len(block) == 1 and f"docs/results/{name}/results.json README.md" in block[0]
    if name != "quick":
        assert f"--block {name} " in block[0]
    assert _commands(proc.stdout)[-1].endswith("readme-overview")  # the overview table is rewritten last


def test_publish_check_copies_the_check_it_names_and_lists_it_in_the_overview_only() -> None:
    args = ["SEEDS=300,301,302", "SESSION=1"]
    out = _options(_simulate_args("simulate-check", *args))["--out"][0]
    proc = subprocess.run(
        ["make", "-n", "publish-check", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    lines = _commands(proc.stdout)
    copies = [shlex.split(line) for line in lines if line.startswith("cp ")]
    assert len(copies) == 1 and copies[0][1] == f"{out}/results.json"
    assert copies[0][-1] == f"docs/results/{Path(out).name}/"
    assert not [line for line in lines if "-m bench.readme" in line]  # no block of its own
    assert lines[-1].endswith("readme-overview")


def test_the_overview_lists_the_reported_run_first_and_every_published_run() -> None:
    proc = subprocess.run(
        ["make", "-n", "readme-overview"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    line = next(line for line in proc.stdout.splitlines() if "--block overview" in line)
    paths = [a for a in shlex.split(line) if a.endswith("results.json")]
    assert paths[0] == "docs/results/quick/results.json"
    published = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs" / "results").glob("*/results.json"))
    assert sorted(paths) == published


@pytest.mark.parametrize(
    "make_args",
    [["simulate"], ["simulate-heldout-session"], ["publish-check", "SEEDS=300,301,302", "SESSION=1"]],
    ids=lambda a: a[0],
)
def test_publishing_checks_the_run_before_replacing_anything_and_renders_it_with_the_current_code(
    make_args: list[str],
) -> None:
    proc = subprocess.run(["make", "-n", *make_args], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = _commands(proc.stdout)
    check = next(i for i, line in enumerate(lines) if "-m bench.report --check " in line)
    removal = next(i for i, line in enumerate(lines) if line.startswith("mkdir -p docs/results/"))
    copy = next(i for i, line in enumerate(lines) if line.startswith("cp "))
    render = [i for i, line in enumerate(lines) if "-m bench.report docs/results/" in line]
    assert check < removal < copy < render[0] and len(render) == 1
    source = shlex.split(lines[copy])[1]
    assert shlex.split(lines[check])[-1] == source  # the run it copies is the run it checked
    published = shlex.split(lines[copy])[-1]
    assert shlex.split(lines[render[0]])[-1] == f"{published}results.json"  # rendered where published


def test_republish_renders_every_published_run_and_rewrites_each_block() -> None:
    proc = subprocess.run(["make", "-n", "republish"], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = _commands(proc.stdout)
    assert any(
        "for f in docs/results/*/results.json" in line and "-m bench.report $f" in line for line in lines
    )
    published = {p.parent.name for p in (REPO / "docs" / "results").glob("*/results.json")}
    blocks = {
        "quick": "results",
        **{n: n for n in ("session", "heldout", "heldout-session", "noise-session")},
    }
    written = " ".join(
        line for line in lines if "-m bench.readme " in line and "--block overview" not in line
    )
    for name, block in blocks.items():
        if name in published:
            flag = "" if block == "results" else f"--block {block} "
            assert f"-m bench.readme {flag}docs/results/{name}/results.json README.md" in written
    assert "--block overview" in lines[-1] or lines[-1].endswith("readme-overview")  # the table last


FAKE_PYTHON = """#!/bin/bash
# A stand-in for $(PYTHON): answers --version with $FAKE_VERSION and makes a venv whose python answers
# `-m pip --version` for Python 3.11 and does nothing else; every call is logged.
echo "python $*" >> "$FAKE_LOG"
case "$1" in
  --version) echo "Python $FAKE_VERSION" ;;
  -m)
    [ "$2" = venv ] || exit 1
    dir="${!#}"
    [ "$3" = --clear ] && rm -rf "$dir"
    mkdir -p "$dir/bin"
    printf '%s\\n' '#!/bin/bash' 'echo "venv $*" >> "$FAKE_LOG"' \\
      '[ "$*" = "-m pip --version" ] && echo "pip 26.3 from /x/pip (python 3.11)"' 'exit 0' \\
      > "$dir/bin/python"
    chmod +x "$dir/bin/python" ;;
esac
"""


def _scratch_setup(tmp_path: Path, version: str) -> tuple[Path, dict[str, str]]:
    """A folder holding the Makefile, empty requirements and a fake interpreter reporting ``version``.

    Returns:
        The folder to run make in, and the environment that makes the fake log its calls to ``log.txt``.
    """
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.txt", "requirements-dev.txt"):
        (tmp_path / name).write_text("")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    # an outer make (make test) must not pass its flags on to this one
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(FAKE_LOG=str(tmp_path / "log.txt"), FAKE_VERSION=version)
    return tmp_path, env


def test_setup_makes_the_venv_again_when_its_python_has_no_pip(tmp_path: Path) -> None:
    """An interrupted ``python -m venv`` (Ctrl-C in ensurepip, Debian without python3-venv) leaves a python
    without pip; setup must not take it for a venv, or every later ``make`` fails in pip install."""
    folder, env = _scratch_setup(tmp_path, "3.11.9")
    broken = folder / ".venv" / "bin" / "python"
    broken.parent.mkdir(parents=True)
    broken.write_text('#!/bin/bash\necho "No module named pip" >&2\nexit 1\n')
    broken.chmod(0o755)
    make = ["make", "setup", f"PYTHON={folder / 'fake-python'}"]
    proc = subprocess.run(make, cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (folder / "log.txt").read_text().splitlines()
    assert "python -m venv --clear .venv" in log
    installs = [line for line in log if line.startswith("venv -m pip install")]
    assert installs[-1] == "venv -m pip install -q -r requirements.txt -r requirements-dev.txt"
    assert (folder / ".venv" / ".installed").exists()
    assert "installing" in proc.stdout  # a line before the minutes pip -q is silent

    (folder / "log.txt").unlink()  # a requirements change reinstalls into the venv, which is kept
    os.utime(folder / "requirements.txt", (time.time() + 5, time.time() + 5))
    proc = subprocess.run(make, cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (folder / "log.txt").read_text().splitlines()
    assert not [line for line in log if line.startswith("python ")]
    assert "venv -m pip install -q -r requirements.txt -r requirements-dev.txt" in log


@pytest.mark.parametrize("version", ["3.12.1", "3.10.14"])
def test_setup_refuses_a_python_other_than_3_11_in_one_line_before_making_a_venv(
    tmp_path: Path, version: str
) -> None:
    folder, env = _scratch_setup(tmp_path, version)
    fake = folder / "fake-python"
    proc = subprocess.run(
        ["make", "setup", f"PYTHON={fake}"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    message = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert message == [
        f"setup: .venv needs Python 3.11, but PYTHON={fake} is Python {version}: "
        "run make again with PYTHON=python3.11 (or its path)"
    ]
    assert not (folder / ".venv").exists()


def test_demo_passes_demo_args_to_python_m_demo() -> None:
    proc = subprocess.run(
        ["make", "-n", "demo", "DEMO_ARGS=--threads 1 --no-wait"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    demo = [shlex.split(line) for line in _commands(proc.stdout) if "-m demo" in line]
    assert len(demo) == 1 and demo[0][demo[0].index("demo") + 1 :] == ["--threads", "1", "--no-wait"]


def test_every_recipe_runs_with_ultralytics_offline() -> None:
    """ultralytics otherwise sends usage events and asks PyPI for a newer version on every training."""
    proc = subprocess.run(
        ["make", "-s", "--eval", '_offline: ; @echo "$$YOLO_OFFLINE"', "_offline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "1", proc.stderr
