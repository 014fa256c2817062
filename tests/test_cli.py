"""The `herald` command as users run it: the installed console script, a process of its own,
against the API served on a real port by the session's stack; and once in a real terminal
(tmux), its screen read while `herald send --follow` shows a batch's progress."""

import asyncio
import csv
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.local.processes import free_port
from settings import Settings
from tests.support.builders import csv_bytes, unique_numbers
from tests.support.cli import HERALD, Cli, clean_env
from tests.support.sending import eventually, served_api
from tests.support.stack import Account

# The tests that read the command's screen in a real terminal.
IN_TERMINAL = pytest.mark.skipif(
    shutil.which("tmux") is None,
    reason="tmux is not installed: `make test` installs it with apt-get when run as root",
)


@pytest.fixture
async def cli(settings: Settings, account: Account, tmp_path: Path) -> AsyncIterator[Cli]:
    async with served_api(settings) as served:
        env = {
            **clean_env(tmp_path / "home"),
            "HERALD_API_URL": served.api_url,
            "HERALD_API_KEY": account.key,
        }
        yield Cli(env, tmp_path)


def recipients(tmp_path: Path, numbers: list[str], name: str = "recipients.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(csv_bytes(["phone_number", "first_name"], [[n, "Ada"] for n in numbers]))
    return path


async def test_send_follow_ends_completed_with_exit_0_in_plain_lines(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    file = recipients(tmp_path, unique_numbers(5))

    sent = await cli.send(
        file, account.agent_number, "--name", "cli", "--follow", message="Hi {{first_name}}!"
    )

    assert sent.code == 0, sent.stderr
    assert "\x1b[" not in sent.stdout
    assert "status: completed\n" in sent.stdout
    assert "rows_total: 5\n" in sent.stdout
    assert "messages sent: 5\n" in sent.stdout
    assert "completed\t5/5\tsent 5\tfailed 0\tskipped 0\n" in sent.stdout


async def test_a_partial_batch_exits_1_and_json_gives_each_event_then_the_summary(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    file = recipients(tmp_path, [*unique_numbers(3), "+15005550001"])

    sent = await cli.send(file, account.agent_number, "--follow", "--json")

    assert sent.code == 1, sent.stderr
    lines = sent.json_lines()
    # The batch's id first, in hand should following it fail.
    assert lines[0]["event"] == "started"
    assert lines[0]["data"]["batch_id"] == lines[-1]["data"]["batch_id"]
    statuses = [line["data"]["status"] for line in lines if line["event"] == "status"]
    assert statuses[0] == "validating" and statuses[-1] == "completed_partial"
    assert lines[-1]["event"] == "summary"
    assert lines[-1]["data"]["counts"] == {"sent": 3, "failed": 1, "rejected": 0}

    retried = await cli("retry", lines[-1]["data"]["batch_id"], "--statuses", "failed", "--json")
    assert retried.code == 0, retried.stderr
    assert retried.json_lines()[0]["action"] == "retry"
    assert retried.json_lines()[0]["rows"] == 1
    # At once, while the retry's run may have recorded no event yet: the stream of the batch
    # ends at the run before's final event, and follow opens it again for the new run's.
    followed = await cli("follow", lines[-1]["data"]["batch_id"])
    assert followed.code == 1, followed.stderr
    assert "status: completed_partial\n" in followed.stdout


async def test_a_failed_batch_exits_2(cli: Cli, account: Account, tmp_path: Path) -> None:
    # No row can be sent: the batch fails at validation (`no_valid_recipients`).
    file = recipients(tmp_path, ["not a number"])

    sent = await cli.send(file, account.agent_number, "--follow")

    assert sent.code == 2, sent.stderr
    assert "status: failed\n" in sent.stdout


async def test_a_dry_run_shows_its_reason_and_its_estimated_cost_by_country(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    priced = recipients(tmp_path, unique_numbers(2))
    unsendable = recipients(tmp_path, ["not a number"], name="unsendable.csv")

    sendable = await cli.send(priced, account.agent_number, "--dry-run")
    refused = await cli.send(unsendable, account.agent_number, "--dry-run")
    refused_json = await cli.send(unsendable, account.agent_number, "--dry-run", "--json")

    assert sendable.code == 0, sendable.stderr
    assert "code: -\nrows_total: 2\n" in sendable.stdout
    assert "estimated_cost: 0.0166 USD\nunknown_messages: 0\n" in sendable.stdout
    assert (
        "country\tmessages\tsegments\tprice_per_segment\tcost\nUS\t2\t2\t0.0083\t0.0166\n"
        in sendable.stdout
    )
    assert refused.code == 2, refused.stderr
    reason = refused_json.json_lines()[0]["reason"]
    assert reason
    assert f"code: no_valid_recipients\nreason: {reason}\nrows_total: 1\n" in refused.stdout


async def test_reads_list_status_errors_export_and_numbers(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    good = unique_numbers(2)
    file = recipients(tmp_path, [*good, "not a number"])
    sent = await cli.send(file, account.agent_number, "--follow", "--json")
    batch_id = sent.json_lines()[-1]["data"]["batch_id"]

    listed = await cli("batches", "--json")
    status = await cli("status", batch_id)
    rejected = await cli("errors", batch_id)
    exported = await cli("export", batch_id, "-o", str(tmp_path / "out.csv"))
    numbers = await cli("numbers")

    assert [b["batch_id"] for b in listed.json_lines()[0]["batches"]] == [batch_id]
    assert f"batch_id: {batch_id}\n" in status.stdout
    assert "status: completed_partial\n" in status.stdout
    # The rejected row once, as a row (it was shown as "messages rejected" too).
    assert "rejected: 1\n" in status.stdout and "messages rejected" not in status.stdout
    assert rejected.stdout.splitlines() == [
        "row_number\tvalue\tcode\tmessage",
        f"3\tnot a number\tinvalid_number\t{rejected.stdout.split(chr(9))[-1].strip()}",
    ]
    assert exported.code == 0, exported.stderr
    with (tmp_path / "out.csv").open(encoding="utf-8-sig") as out:
        rows = list(csv.DictReader(out))
    assert sorted(row["phone_number"] for row in rows) == sorted(good)
    assert numbers.stdout.splitlines()[0] == "number\tkind\tchannel\tmps\twebhook"
    assert numbers.stdout.splitlines()[1].startswith(f"{account.agent_number}\tnumber\tsms\t")


async def test_an_export_that_fails_leaves_the_file_there_as_it_was_and_exits_3(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    sent = await cli.send(recipients(tmp_path, unique_numbers(1)), account.agent_number, "--json")
    batch_id = sent.json_lines()[0]["batch_id"]
    ledger = tmp_path / "ledger.csv"
    ledger.write_text("the export before\n")
    down = {**cli.env, "HERALD_API_URL": f"http://127.0.0.1:{free_port()}"}

    unknown = await cli("export", "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10", "-o", str(ledger))
    bad_status = await cli("export", batch_id, "--status", "lost", "-o", str(ledger))
    unreachable = await cli("export", batch_id, "-o", str(ledger), env=down)
    no_folder = await cli("export", batch_id, "-o", str(tmp_path / "missing" / "ledger.csv"))

    assert ledger.read_text() == "the export before\n"
    assert [run.code for run in (unknown, bad_status, unreachable, no_folder)] == [3, 3, 3, 3]
    assert "NOT_FOUND (404)" in unknown.stderr
    assert bad_status.stderr.startswith("herald: INVALID_REQUEST (400)"), bad_status.stderr
    assert "Connection refused" in unreachable.stderr
    assert no_folder.stderr == (
        f"herald: cannot write {tmp_path / 'missing' / 'ledger.csv'}: No such file or directory\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["ledger.csv", "recipients.csv"]


async def test_pause_resume_and_cancel_steer_a_batch_and_follow_exits_2(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    file = recipients(tmp_path, unique_numbers(3))
    started = await cli.send(
        file, account.agent_number, "--schedule", "2099-01-01T00:00:00+00:00", "--json"
    )
    batch_id = started.json_lines()[0]["batch_id"]

    paused = await cli("pause", batch_id)
    resumed = await cli("resume", batch_id)
    cancelled = await cli("cancel", batch_id, "--reason", "wrong list")
    followed = await cli("follow", batch_id)

    assert (paused.code, resumed.code, cancelled.code) == (0, 0, 0)
    assert paused.stdout == f"pause: sent to batch {batch_id}\n"
    assert followed.code == 2, followed.stderr
    assert "status: cancelled\n" in followed.stdout
    assert "reason: wrong list\n" in followed.stdout


async def test_the_key_and_address_come_from_dev_json_and_failures_exit_3(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    home = tmp_path / "dev-home"
    home.mkdir()
    dev = {"api_url": cli.env["HERALD_API_URL"], "api_key": account.key}
    (home / "dev.json").write_text(json.dumps(dev))

    from_dev = await cli("numbers", "--json", env=clean_env(home))
    no_key = await cli("numbers", env=clean_env(tmp_path / "empty"))
    unknown = await cli("status", "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10")

    assert from_dev.code == 0, from_dev.stderr
    assert [n["number"] for n in from_dev.json_lines()[0]] == [account.agent_number]
    assert no_key.code == 3
    assert no_key.stderr == (
        "herald: no API key: set HERALD_API_KEY, or start the local stack (`make run`) which"
        f" writes one to {tmp_path / 'empty' / 'dev.json'}\n"
    )
    assert unknown.code == 3
    assert "NOT_FOUND (404)" in unknown.stderr


async def in_terminal(cli: Cli, command: str) -> str:
    """The screen of a real terminal (tmux, 160 by 50) where bash ran `command`, once it ended
    (its exit code is shown as `exit=N`)."""
    socket = f"herald-test-{secrets.token_hex(4)}"
    variables = [f"{name}={cli.env[name]}" for name in ("HERALD_API_URL", "HERALD_API_KEY")]

    async def tmux(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            "tmux", "-L", socket, *args, stdout=asyncio.subprocess.PIPE, env=cli.env
        )
        out, _ = await process.communicate()
        return out.decode()

    await tmux(
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "50",
        *[part for variable in variables for part in ("-e", variable)],
        "bash",
        "-c",
        f"{command}; echo exit=$?; sleep 600",
    )
    try:
        return await eventually(lambda: tmux("capture-pane", "-p"), lambda shown: "exit=" in shown)
    finally:
        await tmux("kill-server")


@IN_TERMINAL
async def test_send_follow_in_a_terminal_shows_a_progress_bar_and_a_summary(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    file = recipients(tmp_path, unique_numbers(40))

    screen = await in_terminal(
        cli, f"{HERALD} send {file} --from '{account.agent_number}' --message Hi --follow"
    )

    assert "exit=0" in screen, screen
    bar = next(line for line in screen.splitlines() if "40/40" in line)
    assert "completed" in bar and "━" in bar
    assert "sent 40 failed 0 skipped 0" in bar
    assert "ETA" in bar
    assert "│ status" in screen and "completed" in screen
    assert "│ messages sent" in screen
    assert "batch " in screen and " started" in screen


@IN_TERMINAL
async def test_a_name_or_a_path_is_shown_as_written_never_read_as_markup(
    cli: Cli, account: Account, tmp_path: Path
) -> None:
    name = "[/] [sale] [link=https://example.com]x"
    file = recipients(tmp_path, unique_numbers(1))
    sent = await cli.send(file, account.agent_number, "--name", name, "--follow", "--json")
    batch_id = sent.json_lines()[-1]["data"]["batch_id"]
    # A folder `[` and in it a file `] [sale].csv`: the path reads `.../[/] [sale].csv`.
    (tmp_path / "[").mkdir()
    ledger = tmp_path / "[" / "] [sale].csv"

    exported = await cli("export", batch_id, "-o", str(ledger))
    screen = await in_terminal(cli, f"{HERALD} batches && {HERALD} status {batch_id}")

    assert exported.code == 0, exported.stderr
    assert exported.stdout == f"wrote {ledger}\n"
    assert "exit=0" in screen, screen
    assert screen.count(f" {name} ") == 2, screen
