"""A resumed benchmark's wall time: every invocation of the same command on the same folder counts."""

from __future__ import annotations

import json
import logging
import time

import pytest

from bench.wallclock import LEDGER, WallClock


def _record(folder, name, *, command, seconds, finished):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(
        json.dumps({"command": command, "started": "x", "seconds": seconds, "finished": finished})
    )


def test_the_record_is_refreshed_while_the_invocation_runs(tmp_path):
    with WallClock(tmp_path, "cmd", every=0.05) as clock:
        time.sleep(0.3)
        running = json.loads(clock.path.read_text())
    assert running["finished"] is False
    assert running["command"] == "cmd"
    assert 0.05 <= running["seconds"] <= clock.seconds
    done = json.loads(clock.path.read_text())
    assert done["finished"] is True
    assert done["seconds"] == pytest.approx(clock.seconds)
    assert clock.path.parent == tmp_path / LEDGER


def test_total_sums_the_same_command_only_and_counts_killed_invocations(tmp_path, caplog):
    folder = tmp_path / LEDGER
    _record(folder, "a.json", command="cmd", seconds=3600.0, finished=False)  # killed at its last refresh
    _record(folder, "b.json", command="cmd", seconds=1800.0, finished=True)
    _record(folder, "c.json", command="other", seconds=99999.0, finished=True)
    (folder / "d.json").write_text("{half a rec")
    with caplog.at_level(logging.WARNING), WallClock(tmp_path, "cmd", every=3600) as clock:
        pass
    total = clock.total()
    assert total.invocations == 3
    assert total.finished == 2
    assert total.seconds == pytest.approx(5400.0 + clock.seconds)
    assert "d.json" in caplog.text


def test_a_failed_invocation_is_recorded_as_not_finished(tmp_path):
    clock = WallClock(tmp_path, "cmd", every=3600)
    with pytest.raises(RuntimeError), clock:
        raise RuntimeError("training crashed")
    assert json.loads(clock.path.read_text())["finished"] is False
    assert clock.total().finished == 0


def test_two_invocations_at_once_write_separate_records(tmp_path):
    with WallClock(tmp_path, "cmd", every=3600) as one, WallClock(tmp_path, "cmd", every=3600) as two:
        assert one.path != two.path
    assert one.total().invocations == 2


@pytest.mark.parametrize("every", [0, -1.0])
def test_refresh_period_must_be_positive(tmp_path, every):
    with pytest.raises(ValueError, match="every: expected seconds > 0"):
        WallClock(tmp_path, "cmd", every=every)
