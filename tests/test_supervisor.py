"""The launcher's supervisor on real child processes: restarts, back-off, giving up."""

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from deploy.local.processes import SETPRIV, ManagedProcess
from deploy.local.supervisor import GaveUp, RestartPolicy, Supervisor
from tests.support.processes import still_running


def child(tmp_path: Path, code: str) -> ManagedProcess:
    return ManagedProcess("child", [sys.executable, "-c", code], tmp_path / "child.log").start()


def tick_until(supervisor: Supervisor, done: object, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        supervisor.tick()
        time.sleep(0.02)


def test_a_killed_child_is_started_again_each_time(tmp_path: Path) -> None:
    process = child(tmp_path, "import time; time.sleep(60)")
    said: list[str] = []
    # fast=0: no death counts as fast, however soon, so the supervisor never gives up.
    supervisor = Supervisor([process], said.append, RestartPolicy(first_delay=0.01, fast=0.0))
    pids = [process.pid]
    try:
        for restart in range(1, 4):
            os.kill(process.pid, signal.SIGKILL)
            tick_until(supervisor, lambda r=restart: supervisor.restarts("child") == r)
            pids.append(process.pid)
        assert process.running()
    finally:
        process.stop()

    assert supervisor.restarts("child") == 3
    assert len(set(pids)) == 4
    assert sum("was killed by signal 9" in line for line in said) == 3
    assert said[-1] == f"child started again (pid {pids[-1]})"


def test_a_child_that_keeps_failing_at_start_is_given_up_on(tmp_path: Path) -> None:
    process = child(tmp_path, "import sys; print('bad setting'); sys.exit(3)")
    said: list[str] = []
    policy = RestartPolicy(first_delay=0.01, max_delay=0.05, fast=30.0, give_up_after=3)
    supervisor = Supervisor([process], said.append, policy)

    with pytest.raises(GaveUp) as gave_up:
        tick_until(supervisor, lambda: False)

    assert supervisor.restarts("child") == 2
    assert "exited 3 times in a row" in str(gave_up.value)
    assert "bad setting" in str(gave_up.value)
    assert [line.split(" after ")[0] for line in said if "again in" in line] == [
        "child exited with code 3"
    ] * 2


@pytest.mark.skipif(SETPRIV is None, reason="no setpriv that sets the parent-death signal")
def test_a_child_ends_when_its_launcher_is_killed_outright(tmp_path: Path) -> None:
    launcher = (
        "import sys, time; from pathlib import Path;"
        " from deploy.local.processes import ManagedProcess;"
        " p = ManagedProcess('child', [sys.executable, '-c', 'import time; time.sleep(60)'],"
        f" Path({str(tmp_path / 'child.log')!r})).start();"
        " print(p.pid, flush=True); time.sleep(60)"
    )
    parent = ManagedProcess("launcher", [sys.executable, "-c", launcher], tmp_path / "l.log")
    parent.start()
    try:
        deadline = time.monotonic() + 20
        while not parent.log_tail().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        children = [psutil.Process(int(parent.log_tail().strip()))]
        assert still_running(children) == children

        os.kill(parent.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while still_running(children) and time.monotonic() < deadline:
            time.sleep(0.05)

        assert still_running(children) == []
    finally:
        parent.stop()
