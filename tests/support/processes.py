"""Processes the tests start and watch end."""

import psutil


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` not ended (a zombie, not yet reaped, has ended)."""
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            pass
    return left
