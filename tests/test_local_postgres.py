"""The local stack's PostgreSQL starts from a project no other user may enter (a clone in a
`mktemp -d` folder or in /root), run as root or not, and changes no folder's permissions."""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from deploy.local.postgres import dsn, postgres_process, postgres_ready
from deploy.local.processes import free_port


def modes(path: Path, top: Path) -> dict[Path, int]:
    """The mode of `path` and of every folder above it up to `top`. (Not beyond: other test
    sessions on this machine share /tmp/pytest-of-<user>, whose mode pytest itself resets.)"""
    folders = [folder for folder in [path, *path.parents] if folder.is_relative_to(top)]
    return {folder: folder.stat().st_mode for folder in folders}


async def start_and_query(data_dir: Path, log_path: Path, query: str = "SELECT 1") -> object:
    """Start PostgreSQL on `data_dir`, run `query`, stop it: the query's first value."""
    port = free_port()
    pg = postgres_process(data_dir, port, log_path, ephemeral=True).start()
    try:
        await asyncio.to_thread(pg.wait_until, lambda: postgres_ready(port), 60)
        connection = await asyncpg.connect(dsn(port))
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()
    finally:
        await asyncio.to_thread(pg.stop)


async def test_postgres_starts_from_a_folder_only_its_owner_may_enter(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o700)
    home = locked / "clone" / ".herald"
    home.mkdir(parents=True)
    before = modes(home, tmp_path)

    answer = await start_and_query(home / "postgres", home / "logs" / "postgres.log")

    assert answer == 1
    assert modes(home, tmp_path) == before
    assert oct(locked.stat().st_mode & 0o777) == oct(0o700)


async def test_a_removed_homes_cluster_is_gone_after_the_next_start(tmp_path: Path) -> None:
    """As `make bench` and the test sessions remove their homes: no cluster stays behind."""
    first, second = tmp_path / "first", tmp_path / "second"
    await start_and_query(first / "postgres", first / "postgres.log")
    cluster = (first / "postgres").resolve()
    # What a later start's initdb, cut short, would have left beside it.
    beside = cluster.with_name(cluster.name + ".initdb")
    beside.mkdir()
    shutil.rmtree(first)

    await start_and_query(second / "postgres", second / "postgres.log")

    assert not cluster.exists()
    assert not beside.exists()


async def test_a_moved_projects_data_is_kept(tmp_path: Path) -> None:
    """A clone moved or renamed: its `.herald/postgres` still leads to its data."""
    clone, moved = tmp_path / "clone", tmp_path / "moved"
    await start_and_query(
        clone / ".herald" / "postgres", clone / "postgres.log", "CREATE TABLE kept AS SELECT 42"
    )
    clone.rename(moved)

    answer = await start_and_query(
        moved / ".herald" / "postgres", moved / "postgres.log", "SELECT * FROM kept"
    )

    assert answer == 42


@pytest.fixture
def fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty place for PostgreSQL's runtime folder, as on a machine that never ran it: in
    a folder the PostgreSQL user may enter (pytest's own folders are root's alone)."""
    parent = Path(tempfile.mkdtemp(prefix="herald-runtime-", dir="/var/tmp"))
    parent.chmod(0o711)
    runtime = parent / "herald-postgres"
    monkeypatch.setattr("deploy.local.postgres.RUNTIME", runtime)
    try:
        yield runtime
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(
    os.geteuid() != 0, reason="only a run as root places PostgreSQL under the runtime folder"
)
async def test_postgres_starts_on_a_machine_without_its_runtime_folder(
    tmp_path: Path, fresh_runtime: Path
) -> None:
    answer = await start_and_query(tmp_path / "postgres", tmp_path / "postgres.log")

    assert answer == 1
    assert (tmp_path / "postgres").resolve().is_relative_to(fresh_runtime)


def ids_of(status: str) -> list[str]:
    """The group ids of a /proc/<pid>/status: real, effective, saved, filesystem, and the
    supplementary groups."""
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return fields["Gid"].split() + fields["Groups"].split()


def test_postgres_and_its_files_are_in_no_group_of_roots(tmp_path: Path) -> None:
    """Run by root, PostgreSQL runs as its own user in that user's group alone: root's group
    and supplementary groups are not passed on to it, nor to initdb."""
    port = free_port()
    pg = postgres_process(tmp_path / "postgres", port, tmp_path / "postgres.log").start()
    try:
        pg.wait_until(lambda: postgres_ready(port), 60)
        status = Path(f"/proc/{pg.pid}/status").read_text()
    finally:
        pg.stop()
    cluster = (tmp_path / "postgres").resolve()
    groups = {path.stat().st_gid for path in [cluster, *cluster.rglob("*")]}

    assert "0" not in ids_of(status), status
    assert 0 not in groups


async def test_postgres_listens_on_tcp_alone_so_no_socket_path_limits_the_projects(
    tmp_path: Path,
) -> None:
    home = tmp_path / ("deep-" * 20) / ".herald"

    answer = await start_and_query(
        home / "postgres", home / "postgres.log", "SHOW unix_socket_directories"
    )

    assert answer == ""


def cut_short_in_initdb(data_dir: Path) -> None:
    """A first start on `data_dir` killed, with its initdb, once initdb has begun writing."""
    starting = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            " from deploy.local.postgres import postgres_process;"
            " postgres_process(Path(sys.argv[1]), 5, Path(sys.argv[1] + '.log'))",
            str(data_dir),
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and starting.poll() is None:
            # As root the cluster is elsewhere, `data_dir` a link to it.
            cluster = data_dir.resolve()
            beside = cluster.with_name(cluster.name + ".initdb")
            if (cluster / "PG_VERSION").exists() or (beside / "PG_VERSION").exists():
                break
            time.sleep(0.01)
        assert starting.poll() is None, "initdb ended before it could be cut short"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(starting.pid, signal.SIGKILL)
        starting.wait()


async def test_a_first_start_cut_short_in_initdb_leaves_no_half_made_cluster(
    tmp_path: Path,
) -> None:
    """The next start makes the cluster anew, where it found initdb's first file and took the
    rest for made."""
    data_dir = tmp_path / "home" / "postgres"
    cut_short_in_initdb(data_dir)

    assert not (data_dir / "PG_VERSION").exists()
    assert await start_and_query(data_dir, tmp_path / "postgres.log") == 1
