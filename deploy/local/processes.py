"""Child processes of the local stack: start in their own group, wait until ready, stop."""

import fcntl
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx


class NotReady(RuntimeError):
    pass


def _setpriv() -> str | None:
    """util-linux's setpriv, if it sets the parent-death signal (2.33 and later)."""
    found = shutil.which("setpriv") if sys.platform == "linux" else None
    if found is None:
        return None
    probe = [found, "--pdeathsig", "TERM", "--", "true"]
    ran = subprocess.run(probe, capture_output=True, check=False)
    return found if ran.returncode == 0 else None


# Linux's parent-death signal, set by setpriv just before the child's program runs: a launcher
# killed outright (SIGKILL, which no handler sees) takes its children with it, where they went
# on holding the stack's ports and data directory. Without such a setpriv, none.
SETPRIV = _setpriv()


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Ports are picked from here up to the kernel's ephemeral range, clear of the well-known
# ports of local services below it.
LOWEST_PICKED_PORT = 15000


def ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (Linux's default where unreadable)."""
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


# Every port free_port hands out is held, until this process ends, as a one-byte lock at its
# offset in this file: a POSIX record lock, released by the kernel when its holder exits. So a
# port picked by one process and not listened on yet (a worker's metrics port, an API started
# last) is not handed out by another: the tests pick a stack's ports, and its launcher, another
# process, picks its workers' ports.
PICKED_PORTS_FILE = Path(tempfile.gettempdir()) / f"herald-picked-ports-{os.getuid()}.lock"
_handing_out = threading.Lock()
_picked_ports: BinaryIO | None = None
_held: set[int] = set()


def _picked_ports_file() -> BinaryIO:
    """This process's one handle on the file: closing any handle on it would drop every lock
    this process holds, so it is opened once and kept open."""
    global _picked_ports
    if _picked_ports is None:
        descriptor = os.open(PICKED_PORTS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        _picked_ports = os.fdopen(descriptor, "r+b")
    return _picked_ports


def _hold(port: int) -> bool:
    """Whether this process now holds port, no process (itself included) having held it.
    A process's own locks never conflict with each other, hence the set beside them."""
    if port in _held:
        return False
    try:
        fcntl.lockf(_picked_ports_file(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False
    _held.add(port)
    return True


def free_port() -> int:
    """A port free now, outside the kernel's ephemeral range: no outgoing connection is ever
    given it, so a server stopped and started again on it (a restart on the same port) finds
    it still free. Random, so that stacks started side by side rarely pick the same one; never
    one handed out before by a process still running (it may not be listened on yet)."""
    candidates = _candidate_ports()
    with _handing_out:
        for port in random.sample(candidates, min(len(candidates), 400)):
            if port_free(port) and _hold(port):
                return port
    raise RuntimeError("no free port outside the ephemeral range")


@functools.cache
def _candidate_ports() -> list[int]:
    ephemeral = ephemeral_ports()
    return [p for p in range(LOWEST_PICKED_PORT, 65536) if p not in ephemeral] or list(
        range(1024, ephemeral.start)
    )


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR as servers set it, so
    that the connections of a stack stopped a moment ago (TIME_WAIT) do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    """Whether `url` (the stack's own, on this machine) answers 200; never through a proxy
    the environment names (`HTTP_PROXY`, which `NO_PROXY=localhost` does not keep from
    127.0.0.1)."""
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class ManagedProcess:
    """One child in its own session, so a terminal's Ctrl-C reaches only the launcher,
    which then stops children in order; signalled too if the launcher dies (SETPRIV)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    # The uid and gid it runs as (None: ours); switched to, it keeps no supplementary group.
    user: int | None = None
    group: int | None = None
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        argv = self.argv
        if SETPRIV is not None:
            argv = [SETPRIV, "--pdeathsig", signal.Signals(self.stop_signal).name, "--", *argv]
        self.process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            user=self.user,
            group=self.group,
            extra_groups=None if self.user is None else [],
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise NotReady(f"{self.name} exited; see {self.log_path}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise NotReady(f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}")

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15) -> None:
        """Signal the whole group, wait, then kill whatever is left of it."""
        if self.process is None:
            return
        pgid = self.process.pid
        if self.process.poll() is None:
            try:
                os.killpg(pgid, self.stop_signal)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
