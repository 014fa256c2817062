"""Keep the local stack up: a child that dies is started again, as a process manager in
production would, so that killing a worker mid-batch shows the batch finishing instead of
the stack ending.

PostgreSQL and Temporal start again on their data directories; the workers and the API ride
out their absence meanwhile. A child that keeps dying right after its start (a bad setting,
a port taken) is given up on, and then the whole stack stops with its log.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from deploy.local.processes import ManagedProcess


@dataclass(frozen=True)
class RestartPolicy:
    first_delay: float = 0.5
    max_delay: float = 15.0
    # A child that dies sooner than this after its start failed fast; only repeated fast
    # failures make the supervisor give up, so a child killed now and then is always restarted.
    fast: float = 10.0
    give_up_after: int = 5


class GaveUp(Exception):
    """A child failed fast `give_up_after` times in a row."""

    def __init__(self, process: ManagedProcess, failures: int) -> None:
        super().__init__(
            f"{process.name} exited {failures} times in a row within seconds of its start; "
            f"stopping.\n{process.log_tail()}"
        )


@dataclass
class _Child:
    process: ManagedProcess
    started_at: float
    fast_failures: int = 0
    restarts: int = 0
    due: float | None = None


def _exit_reason(process: ManagedProcess) -> str:
    code = process.process.returncode if process.process is not None else None
    if code is None:
        return "exited"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


@dataclass
class Supervisor:
    processes: list[ManagedProcess]
    say: Callable[[str], None]
    policy: RestartPolicy = RestartPolicy()
    clock: Callable[[], float] = time.monotonic
    _children: dict[str, _Child] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        now = self.clock()
        self._children = {p.name: _Child(p, now) for p in self.processes}

    def restarts(self, name: str) -> int:
        return self._children[name].restarts

    def tick(self) -> None:
        """Notice dead children and start those whose back-off has passed; raise GaveUp."""
        now = self.clock()
        for child in self._children.values():
            process = child.process
            if process.running():
                continue
            if child.due is None:
                lived = now - child.started_at
                child.fast_failures = child.fast_failures + 1 if lived < self.policy.fast else 0
                if child.fast_failures >= self.policy.give_up_after:
                    raise GaveUp(process, child.fast_failures)
                delay = min(
                    self.policy.first_delay * 2 ** max(child.fast_failures - 1, 0),
                    self.policy.max_delay,
                )
                child.due = now + delay
                self.say(
                    f"{process.name} {_exit_reason(process)} after {lived:.1f}s; "
                    f"starting it again in {delay:.1f}s"
                )
            if now >= child.due:
                # What is left of its process group (a killed PostgreSQL's backends) goes
                # first: it would hold the shared memory and ports the new one needs.
                process.stop(timeout=5)
                process.start()
                child.started_at, child.due = self.clock(), None
                child.restarts += 1
                self.say(f"{process.name} started again (pid {process.pid})")
