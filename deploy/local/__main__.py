"""`make run`: the whole local stack on one machine, started together, stopped together.

A child that dies is started again (deploy/local/supervisor.py); Ctrl-C (or SIGTERM, or
SIGHUP from a closed terminal) stops every process it started, in reverse order, and further
signals meanwhile are ignored.
"""

import subprocess
import sys
import time

from deploy.local.postgres import PostgresSetupError
from deploy.local.processes import ManagedProcess, NotReady
from deploy.local.stack import PortsTaken, Stop, launch, running, stop_on_signals
from deploy.local.supervisor import GaveUp, Supervisor
from settings import load_settings


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    settings = load_settings()
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
    except Stop as stop:
        sys.stdout.write(f"{stop}: stopped every process.\n")
        return 0
    except (GaveUp, PortsTaken) as failed:
        sys.stderr.write(f"{failed}\n")
        return 1
    except (NotReady, PostgresSetupError) as failed:
        sys.stderr.write(f"Not started: {failed}\n")
        return 1
    except subprocess.CalledProcessError as failed:
        # initdb's words are captured; another command's (useradd) went to the terminal.
        said = failed.stderr.decode(errors="replace") if failed.stderr else ""
        command = " ".join(failed.cmd)
        sys.stderr.write(f"Not started: {command} exited with status {failed.returncode}\n{said}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
