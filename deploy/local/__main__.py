"""`make run`: the whole local stack on one machine, started together, stopped together.

A child that dies is started again (deploy/local/supervisor.py); Ctrl-C (or SIGTERM, or
SIGHUP from a closed terminal) stops every process it started, in reverse order, and further
signals meanwhile are ignored.
"""

import sys
import time

from deploy.local.processes import ManagedProcess
from deploy.local.stack import PortsTaken, Stop, launch, running, stop_on_signals
from deploy.local.supervisor import GaveUp, Supervisor
from settings import Settings


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    stop_on_signals()
    started = time.monotonic()
    processes: list[ManagedProcess] = []
    try:
        with running(processes):
            info = launch(settings, processes)
            width = max(len(k) for k in info)
            lines = [f"  {k.ljust(width)}  {v}" for k, v in info.items()]
            sys.stdout.write(
                f"Herald is ready ({time.monotonic() - started:.1f}s). Ctrl-C stops it.\n"
                + "\n".join(lines)
                + f"\n  (also in {settings.home.resolve() / 'dev.json'})\n"
            )
            sys.stdout.flush()
            supervisor = Supervisor(processes, say)
            while True:
                supervisor.tick()
                time.sleep(0.5)
    except GaveUp as gave_up:
        sys.stderr.write(f"{gave_up}\n")
        return 1
    except Stop as stop:
        sys.stdout.write(f"{stop}: stopped every process.\n")
        return 0
    except PortsTaken as taken:
        sys.stderr.write(f"{taken}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
