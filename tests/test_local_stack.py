"""`make run`'s launcher as a user runs it: ready, usable, stopped clean, data kept."""

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from deploy.local.processes import ephemeral_ports, free_port, http_ok
from deploy.local.stack import PORT_SETTINGS
from deploy.local.temporal import TEMPORAL_BIN
from tests.support.batches import FINAL
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.processes import still_running

READY_SECONDS = 90


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One home for the module's launches: data and history persist across them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["HERALD_HOME"] = str(tmp_path_factory.mktemp("herald-home"))
    return env


@contextmanager
def launched(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], dict]]:
    """Run the launcher until it prints ready; on exit send SIGINT and wait for it.

    Each launch takes fresh ports, outside the ephemeral range (`free_port`), so that
    neither another stack nor an outgoing connection holds one when a server restarts on it."""
    ports = {f"HERALD_{name}": str(free_port()) for name in PORT_SETTINGS}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "deploy.local"],
        env={**env, **ports},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + READY_SECONDS
        output = []
        assert launcher.stdout is not None
        while time.monotonic() < deadline:
            line = launcher.stdout.readline()
            output.append(line)
            if line.startswith("Herald is ready") or not line:
                break
        assert "Herald is ready" in "".join(output), "".join(output)
        dev = json.loads((Path(env["HERALD_HOME"]) / "dev.json").read_text())
        yield launcher, {**dev, "temporal_address": f"127.0.0.1:{ports['HERALD_TEMPORAL_PORT']}"}
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
        launcher.wait(60)


def test_ports_picked_for_servers_are_never_an_outgoing_connections() -> None:
    """A server restarted on its port (the supervisor's PostgreSQL and Temporal, the crash
    test's) finds it free: the port is outside the range the kernel gives connections."""
    ephemeral = ephemeral_ports()
    picked = [free_port() for _ in range(200)]

    assert [p for p in picked if p in ephemeral] == []
    assert len(set(picked)) > 100


def test_a_port_is_handed_out_once_per_process() -> None:
    """Free now is not enough: the two metrics ports of each worker, say, are only listened
    on once the workers start, so a port picked twice before would collide."""
    picked = [free_port() for _ in range(1000)]

    assert len(set(picked)) == len(picked)


def test_a_port_held_by_another_process_is_not_handed_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tests pick a stack's ports and its launcher, another process, picks its workers':
    a port one picked and does not listen on yet (the API starts last) is not the other's."""
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from deploy.local.processes import free_port\n"
            "print(*(free_port() for _ in range(20)), flush=True)\n"
            "input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        held = [int(port) for port in other.stdout.readline().split()]
        monkeypatch.setattr(
            "deploy.local.processes.random.sample",
            lambda candidates, k: held + [p for p in candidates if p not in held][:k],
        )

        assert len(held) == 20
        assert free_port() not in held
    finally:
        other.communicate("\n", timeout=30)


@pytest.mark.parametrize("name", PORT_SETTINGS)
def test_a_taken_port_stops_the_launcher_before_it_starts_anything(
    name: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    ports = {f"HERALD_{port}": str(free_port()) for port in PORT_SETTINGS}
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        ports[f"HERALD_{name}"] = str(other.getsockname()[1])
        launcher = subprocess.run(
            [sys.executable, "-m", "deploy.local"],
            env={**env, **ports, "HERALD_HOME": str(tmp_path / "home")},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    assert launcher.returncode == 1, launcher.stdout + launcher.stderr
    assert "Herald is ready" not in launcher.stdout
    taken = [line for line in launcher.stderr.splitlines() if "is taken" in line]
    assert len(taken) == 1, launcher.stderr
    assert f"127.0.0.1:{ports[f'HERALD_{name}']} " in taken[0]
    assert f"HERALD_{name}=" in taken[0]
    assert list((tmp_path / "home").iterdir()) == []


@pytest.mark.parametrize(
    ("stray_file", "said"),
    [
        # A data directory that holds anything but a cluster is refused, named, not replaced.
        ("postgres/stray.txt", "exists but is not empty"),
        # Temporal cannot open a folder as its SQLite file: its log's last lines.
        ("temporal.sqlite/stray.txt", "temporal exited; see "),
    ],
)
def test_a_failed_start_says_why_without_a_traceback(
    stray_file: str, said: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / stray_file).parent.mkdir(parents=True)
    (home / stray_file).write_text("in the way\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    ports = {f"HERALD_{port}": str(free_port()) for port in PORT_SETTINGS}
    launcher = subprocess.run(
        [sys.executable, "-m", "deploy.local"],
        env={**env, **ports, "HERALD_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert launcher.returncode == 1, launcher.stdout + launcher.stderr
    assert said in launcher.stderr
    assert "Traceback" not in launcher.stderr, launcher.stderr


def test_a_setting_the_launcher_refuses_is_named_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    launcher = subprocess.run(
        [sys.executable, "-m", "deploy.local"],
        env={**env, "HERALD_HOME": str(tmp_path), "HERALD_API_PORT": "not a port"},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert launcher.returncode == 2, launcher.stdout + launcher.stderr
    assert "HERALD_API_PORT" in launcher.stderr
    assert "Traceback" not in launcher.stderr, launcher.stderr


def test_the_stacks_readiness_is_asked_directly_whatever_proxy_the_environment_names(
    emulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy nothing listens on: asked through it, the emulator would seem down.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")

    assert http_ok(f"{emulator_url}/_emulator/health")


def command_line(process: psutil.Process) -> str:
    """The process's command line; empty once it has ended (a short-lived helper, listed a
    moment before)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def test_launcher_is_ready_then_leaves_no_process_behind(stack_env: dict[str, str]) -> None:
    with launched(stack_env) as (launcher, dev):
        children = psutil.Process(launcher.pid).children(recursive=True)
        command_lines = " ".join(command_line(c) for c in children)
        ready = httpx.get(f"{dev['api_url']}/readyz", timeout=5)
        ui = httpx.get(dev["temporal_ui_url"], timeout=5)
        docs = httpx.get(dev["docs_url"], timeout=5)
        dashboard = httpx.get(dev["dashboard_url"], timeout=5)
        numbers = httpx.get(
            f"{dev['api_url']}/v1/sms/numbers", headers={"authorization": dev["api_key"]}
        )
        scrapes = {k: httpx.get(v, timeout=5) for k, v in dev.items() if k.endswith("metrics_url")}

    assert launcher.returncode == 0
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "temporal": "ok"}
    assert ui.status_code == 200
    assert docs.status_code == 200
    assert dashboard.status_code == 200 and "<title>Herald dashboard</title>" in dashboard.text
    assert [n["number"] for n in numbers.json()["data"]["numbers"]] == [dev["agent_number"]]
    assert set(dev) >= {"api_key", "agent_number", "api_url", "temporal_ui_url", "emulator_url"}
    # The API, and each worker twice: Herald's series and the Temporal SDK's.
    assert len(scrapes) == 1 + 2 * 2
    for key, scrape in scrapes.items():
        assert scrape.status_code == 200, key
        assert ("temporal_" if "temporal" in key else "herald_") in scrape.text, key
    for part in ("postgres", "temporal", "deploy.local.emulator", "worker", "uvicorn"):
        assert part in command_lines
    assert still_running(children) == []


@contextmanager
def killed_after(processes: list[psutil.Process]) -> Iterator[None]:
    """Kill whatever of `processes` is still running on the way out: a launcher that left
    its children behind fails its test, and leaves nothing to the next."""
    try:
        yield
    finally:
        left = still_running(processes)
        for process in left:
            process.kill()
        psutil.wait_procs(left, timeout=10)


def the_api(launcher: subprocess.Popen[str]) -> psutil.Process:
    return next(c for c in psutil.Process(launcher.pid).children() if "uvicorn" in command_line(c))


def test_a_second_ctrl_c_while_the_stack_stops_still_stops_every_process(
    stack_env: dict[str, str],
) -> None:
    with launched(stack_env) as (launcher, _):
        children = psutil.Process(launcher.pid).children(recursive=True)
        with killed_after(children):
            api = the_api(launcher)
            launcher.send_signal(signal.SIGINT)
            # The API is stopped first: the launcher is now stopping the others.
            api.wait(30)
            launcher.send_signal(signal.SIGINT)
            launcher.wait(60)
            left = still_running(children)

    assert left == []
    assert launcher.returncode == 0


def test_a_closed_terminal_stops_every_process(stack_env: dict[str, str]) -> None:
    with launched(stack_env) as (launcher, _):
        children = psutil.Process(launcher.pid).children(recursive=True)
        with killed_after(children):
            launcher.send_signal(signal.SIGHUP)
            launcher.wait(60)
            left = still_running(children)
    assert launcher.stdout is not None
    said = launcher.stdout.read()

    assert left == []
    assert launcher.returncode == 0
    assert "SIGHUP: stopped every process." in said


def test_an_open_event_stream_holds_the_apis_stop_a_few_seconds_at_most(
    stack_env: dict[str, str],
) -> None:
    """A dashboard following a batch keeps its event stream open: the API closes it after
    its graceful-shutdown timeout, long before the launcher would kill it."""
    with launched(stack_env) as (launcher, dev):
        # Scheduled far ahead: the batch waits, and its stream stays open.
        file_id, started = start_dev_batch(
            dev, b"phone_number\n+12015550127\n", "later", schedule_at="2099-01-01T00:00:00Z"
        )
        assert started.status_code == 200, started.text
        api = the_api(launcher)
        children = psutil.Process(launcher.pid).children(recursive=True)
        with (
            killed_after(children),
            httpx.stream(
                "GET",
                f"{dev['api_url']}/v1/sms/batch/{file_id}/events",
                headers={"authorization": dev["api_key"]},
            ) as stream,
        ):
            # A second progress event: the stream has been open a while, and waits for more.
            progress = (line for line in stream.iter_lines() if line == "event: progress")
            next(progress), next(progress)
            signalled = time.monotonic()
            launcher.send_signal(signal.SIGINT)
            api.wait(30)
            stopped_after = time.monotonic() - signalled

    # Without a graceful-shutdown timeout the API waits for the stream until the launcher
    # kills it, 15 s after its signal.
    assert stopped_after < 10, stopped_after


def test_a_broken_dev_json_is_replaced_by_one_only_its_owner_may_read(tmp_path: Path) -> None:
    """As a launcher killed while writing it would have left it (before it wrote a temporary
    file and renamed it): the next start makes a new key, and the file holding it is 0600."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    home = tmp_path / "home"
    home.mkdir()
    (home / "dev.json").write_text('{\n  "api_key": "hk_')
    with launched({**env, "HERALD_HOME": str(home)}) as (_, dev):
        numbers = httpx.get(
            f"{dev['api_url']}/v1/sms/numbers", headers={"authorization": dev["api_key"]}
        )

    assert numbers.status_code == 200
    assert stat.S_IMODE((home / "dev.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir() if p.name.startswith(("dev", "."))) == ["dev.json"]


def test_restart_keeps_data_and_workflow_history(stack_env: dict[str, str]) -> None:
    with launched(stack_env) as (_, dev):
        headers = {"authorization": dev["api_key"]}
        added = httpx.post(
            f"{dev['api_url']}/v1/sms/numbers", headers=headers, json={"number": "+15005550010"}
        )
        assert added.status_code == 201, added.text
        file_id, started = start_dev_batch(dev, b"phone_number\n+12015550123\n", "persisted")
        assert started.status_code == 200, started.text

    with launched(stack_env) as (_, again):
        headers = {"authorization": again["api_key"]}
        numbers = httpx.get(f"{again['api_url']}/v1/sms/numbers", headers=headers).json()
        batch = httpx.get(f"{again['api_url']}/v1/sms/batch/{file_id}", headers=headers).json()
        described = subprocess.run(
            [
                str(TEMPORAL_BIN),
                "workflow",
                "describe",
                "--output",
                "json",
                "--address",
                again["temporal_address"],
                "--workflow-id",
                f"sms-batch-{file_id}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )

    assert again["api_key"] == dev["api_key"]
    assert "+15005550010" in [n["number"] for n in numbers["data"]["numbers"]]
    assert batch["data"]["workflow_id"] == f"sms-batch-{file_id}"
    assert described.returncode == 0, described.stderr
    assert f"sms-batch-{file_id}" in described.stdout


def start_dev_batch(
    dev: dict[str, str], content: bytes, message: str, **options: str
) -> tuple[str, httpx.Response]:
    """Attach `content` as the development account and start a batch of it with `message`
    and `options` (more fields of the request): (file_id, the start's response)."""
    headers = {"authorization": dev["api_key"]}
    attached = httpx.post(
        f"{dev['api_url']}/v1/files/attach",
        headers=headers,
        data={"file_type": "batches"},
        files={"file": ("r.csv", content, "text/csv")},
    )
    file_id = attached.json()["data"]["file_id"]
    started = httpx.post(
        f"{dev['api_url']}/v1/sms/batch",
        headers=headers,
        json={
            "file_id": file_id,
            "global": {"agent_number": dev["agent_number"], "agent_message": message},
            **options,
        },
    )
    return file_id, started


def wait_for_batch(
    dev: dict[str, str],
    file_id: str,
    done: Callable[[dict[str, Any]], bool],
    until: Callable[[dict[str, Any]], Any] | None = None,
    seconds: float = 30,
) -> dict[str, Any]:
    """The batch once it has finished and `done` holds for it, or as soon as `until` holds
    (`seconds` at most)."""
    deadline = time.monotonic() + seconds
    while True:
        batch = httpx.get(
            f"{dev['api_url']}/v1/sms/batch/{file_id}", headers={"authorization": dev["api_key"]}
        ).json()["data"]
        finished = batch["status"] in FINAL
        reached = until is not None and until(batch)
        if reached or (finished and done(batch)) or time.monotonic() > deadline:
            return batch
        time.sleep(0.3)


def test_the_emulators_receipts_reach_the_api_and_mark_messages_delivered(
    stack_env: dict[str, str],
) -> None:
    numbers = unique_numbers(30)
    with launched(stack_env) as (_, dev):
        headers = {"authorization": dev["api_key"]}
        # Answers take 0-1 s and a slice records them when its last is in: most receipts
        # (sent 50 ms after each answer) reach the API before their send is recorded.
        configured = httpx.post(
            f"{dev['emulator_url']}/_emulator/config",
            json={"latency_jitter_ms": 1000, "undelivered_rate": 0.3},
        )
        file_id, started = start_dev_batch(
            dev, csv_bytes(["phone_number"], [[n] for n in numbers]), "receipts"
        )
        batch = wait_for_batch(dev, file_id, lambda b: b["counts"].get("sent", 0) == 0)
        rows = httpx.get(
            f"{dev['api_url']}/v1/sms/batch/{file_id}/messages", headers=headers
        ).json()["data"]["messages"]
        # The module's stacks share one home: a batch of an earlier test may still be sending.
        received = httpx.get(
            f"{dev['emulator_url']}/_emulator/messages", params={"body_contains": "receipts"}
        ).json()

    assert configured.status_code == started.status_code == 200
    # Undelivered receipts that come before the batch ends count as failed in its final event.
    assert batch["status"] in ("completed", "completed_partial")
    counts = batch["counts"]
    assert counts["delivered"] + counts["undelivered"] == 30
    assert counts["delivered"] > 0 and counts["undelivered"] > 0
    assert {r["error_code"] for r in rows if r["status"] == "undelivered"} == {"30003"}
    assert sorted(m["to"] for m in received) == numbers
    # The StatusCallback URL is the receipts listener's, on its own port, each message's
    # with its own row's key.
    seqs = {r["to_number"]: r["seq"] for r in rows}
    assert sorted(m["status_callback"] for m in received) == sorted(
        f"{dev['receipts_url']}?m={file_id}.{seqs[m['to']]}.1" for m in received
    )
    assert urlsplit(dev["receipts_url"]).port != urlsplit(dev["api_url"]).port


def on_the_way(counts: dict[str, int]) -> int:
    """Rows the carrier took, whatever their receipts have said since."""
    return sum(counts.get(status, 0) for status in ("sent", "delivered", "undelivered"))


def test_workers_killed_mid_batch_are_started_again_and_the_batch_finishes(
    stack_env: dict[str, str],
) -> None:
    numbers = unique_numbers(2_000)
    # A dead worker's slice and workflows are taken over after the heartbeat and sticky
    # timeouts, and reconciliation waits out the carrier timeout and a margin (30, 10, 30
    # and 5 s by default): the supervision is under test here, not how long those waits are.
    quick = {
        **stack_env,
        "HERALD_SEND_HEARTBEAT_TIMEOUT_SECONDS": "3",
        "HERALD_STICKY_TIMEOUT_SECONDS": "2",
        "HERALD_CARRIER_TIMEOUT_SECONDS": "3",
        "HERALD_RECONCILE_MARGIN_SECONDS": "0.5",
    }
    with launched(quick) as (launcher, dev):
        # Slow answers, so the batch is still sending when its workers die.
        httpx.post(f"{dev['emulator_url']}/_emulator/config", json={"latency_ms": 100})
        file_id, started = start_dev_batch(
            dev, csv_bytes(["phone_number"], [[n] for n in numbers]), "survives"
        )
        started.raise_for_status()
        wait_for_batch(dev, file_id, lambda b: False, until=lambda b: on_the_way(b["counts"]))
        workers = [
            c
            for c in psutil.Process(launcher.pid).children()
            if c.cmdline()[1:3] == ["-m", "worker"]
        ]
        for worker in workers:
            worker.kill()
        httpx.post(f"{dev['emulator_url']}/_emulator/config", json={"latency_ms": 0})
        batch = wait_for_batch(dev, file_id, lambda b: True, seconds=300)
        still_running = launcher.poll() is None
    assert launcher.stdout is not None
    said = launcher.stdout.read()

    assert len(workers) == 2
    assert still_running
    assert batch["status"] in FINAL, batch
    counts = batch["counts"]
    # What was on the wire when the workers died is `uncertain`, never sent twice.
    assert on_the_way(counts) + counts.get("uncertain", 0) == len(numbers), counts
    for name in ("worker-0", "worker-1"):
        assert f"{name} was killed by signal 9" in said, said
        assert f"{name} started again" in said, said


def test_postgres_and_temporal_killed_are_started_again_on_their_data(
    stack_env: dict[str, str],
) -> None:
    with launched(stack_env) as (launcher, dev):
        headers = {"authorization": dev["api_key"]}
        before = httpx.get(f"{dev['api_url']}/v1/sms/numbers", headers=headers).json()["data"]
        killed = services(launcher.pid)
        for child in killed.values():
            child.kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            again = services(launcher.pid)
            if len(again) == 2 and not set(again.values()) & set(killed.values()):
                if http_ready(dev):
                    break
            time.sleep(0.5)
        after = httpx.get(f"{dev['api_url']}/v1/sms/numbers", headers=headers).json()["data"]
        file_id, started = start_dev_batch(dev, b"phone_number\n+12015550126\n", "again")
        started.raise_for_status()
        batch = wait_for_batch(dev, file_id, lambda b: True, seconds=60)
        still_running = launcher.poll() is None
    assert launcher.stdout is not None
    said = launcher.stdout.read()

    assert len(killed) == 2, killed
    assert still_running
    assert after == before
    assert batch["status"] == "completed", batch
    for name in ("postgres", "temporal"):
        assert f"{name} was killed by signal 9" in said, said
        assert f"{name} started again" in said, said


def services(launcher_pid: int) -> dict[str, psutil.Process]:
    """The launcher's PostgreSQL and Temporal processes, by name."""
    found = {}
    for child in psutil.Process(launcher_pid).children():
        try:
            command = child.cmdline()
        except psutil.ZombieProcess:
            continue  # killed, not yet reaped by the launcher
        if not command:
            continue  # starting or exiting: no command line to read
        program = Path(command[0]).name
        if program in ("postgres", "temporal"):
            found[program] = child
    return found


def http_ready(dev: dict[str, str]) -> bool:
    try:
        return httpx.get(f"{dev['api_url']}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def readme_tour() -> str:
    """The shell block that follows the `<!-- tour -->` marker in README.md."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    after = readme.split("<!-- tour -->", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def test_readme_quick_tour_runs_as_written(stack_env: dict[str, str], tmp_path: Path) -> None:
    # As the README asks: the virtualenv's `bin` (with `herald`) on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{stack_env.get('PATH', '')}"
    with launched(stack_env) as (_, dev):
        tour = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_tour()],
            cwd=tmp_path,
            env={**stack_env, "PATH": path},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        started = re.search(r"^batch (\S+) started$", tour.stdout, re.MULTILINE)
        assert started, tour.stdout + tour.stderr
        batch = wait_for_batch(dev, started[1], lambda b: b["counts"].get("sent", 0) == 0)
        received = httpx.get(f"{dev['emulator_url']}/_emulator/messages").json()

    assert tour.returncode == 0, tour.stderr
    assert f"{dev['agent_number']}\tnumber\tsms\t" in tour.stdout
    assert "rows_total: 3\nto_send: 3\n" in tour.stdout
    assert "completed\t3/3\tsent 3\tfailed 0\tskipped 0\n" in tour.stdout
    assert f"batch_id: {batch['batch_id']}\nname: tour\nstatus: completed\n" in tour.stdout
    assert (tmp_path / "ledger.csv").read_text(encoding="utf-8-sig").count("\n") == 4
    # Step 6, with curl: the batch started, then read back by its id.
    assert '"message":"SMS batch processing initiated via Temporal workflow"' in tour.stdout
    assert '"name":"curl tour"' in tour.stdout
    assert batch["status"] == "completed"
    assert batch["counts"] == {"delivered": 3, "rejected": 0}
    assert {(m["to"], m["body"]) for m in received} >= {
        ("+12015550123", "Hi Ada!"),
        ("+12015550124", "Hi Grace!"),
        ("+12015550125", "Hi Linus!"),
    }
