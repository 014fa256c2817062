"""The `herald` command against addresses where no API answers as Herald's, and with a local
configuration it cannot use: each failure is one line on stderr and exit code 3, never a
traceback. No stack: nothing here reaches Herald."""

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import typer
from aiohttp import web
from typer.testing import CliRunner

import settings
from cli import client, main
from cli.client import CliError, Config, Herald
from cli.output import BatchProgress
from deploy.local.processes import free_port
from tests.support.cli import Cli, Run, clean_env
from tests.support.web import served


@asynccontextmanager
async def another_web_server() -> AsyncIterator[str]:
    """A web server that is not Herald's: an HTML page at every path but `/v1/sms/batches`,
    where it answers JSON without `data`; its address."""

    async def page(request: web.Request) -> web.Response:
        if request.path == "/v1/sms/batches":
            return web.json_response({"items": []})
        return web.Response(text="<html><body>It works!</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    async with served(app) as url:
        yield url


BATCH_ID = "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10"


def assert_refused(run: Run, message: str) -> None:
    """The run failed as a request does: exit 3 and `message` alone on stderr."""
    assert (run.code, run.stdout, run.stderr) == (3, "", f"herald: {message}\n")


def test_an_event_stream_that_cannot_connect_is_tried_again_then_is_a_cli_error() -> None:
    # Nothing listens on the port: each connection is refused, as while the API restarts.
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()

    with Herald(Config(api_url=url, key="key")) as api, pytest.raises(CliError) as raised:
        list(api.events("0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10"))

    assert str(raised.value).startswith(f"cannot reach the API at {url} for the event stream:")
    assert time.monotonic() - started >= client.RECONNECTS * client.RECONNECT_SECONDS


async def test_an_address_where_another_web_server_answers_is_one_line_and_exit_3(
    tmp_path: Path,
) -> None:
    async with another_web_server() as url:
        cli = Cli({**clean_env(tmp_path), "HERALD_API_URL": url, "HERALD_API_KEY": "k"}, tmp_path)
        html = await cli("numbers")
        without_data = await cli("batches")
        ledger = tmp_path / "ledger.csv"
        exported = await cli("export", BATCH_ID, "-o", str(ledger))

    hint = "is it Herald's API? (its address is HERALD_API_URL, else dev.json's)"
    data = "answered 200 with no JSON `data`:"
    assert_refused(html, f"{url}/v1/sms/numbers?limit=1000 {data} {hint}")
    assert_refused(without_data, f"{url}/v1/sms/batches?limit=50 {data} {hint}")
    page = "answered 200 with text/html; charset=utf-8, not text/csv:"
    assert_refused(exported, f"{url}/v1/sms/batch/{BATCH_ID}/messages?format=csv {page} {hint}")
    assert not ledger.exists()


async def test_a_key_with_a_character_no_key_has_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """A key pasted with a non-breaking space in it: headers are ASCII, so no request is made
    (one around it is stripped, as the API strips it)."""
    env = {**clean_env(tmp_path), "HERALD_API_URL": "http://127.0.0.1:1"}
    cli = Cli({**env, "HERALD_API_KEY": "hk_a\u00a0bc"}, tmp_path)

    assert_refused(
        await cli("numbers"),
        "the API key holds a character no key has ('\\xa0'): check HERALD_API_KEY, else dev.json's",
    )


def test_a_message_the_carrier_could_not_deliver_counts_as_failed_as_in_the_final_event() -> None:
    progress = BatchProgress(BATCH_ID, quiet=True)

    progress.show(
        {"recipients": 5, "counts": {"sent": 1, "delivered": 1, "undelivered": 2, "failed": 1}},
        "failed",
    )

    assert (progress.sent, progress.failed) == (2, 3)


def test_the_rate_counts_only_what_was_sent_since_the_batch_was_first_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch followed mid-way (`herald follow`, a retry) had sent 100,000 before: 500 more
    in 10 s is 50 a second, not 10,050."""
    clock = iter([1000.0, 1010.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    progress = BatchProgress(BATCH_ID, quiet=True)
    progress.update(status="in_progress", total=200_000, sent=100_000)
    progress.update(sent=100_500)

    assert progress.rate() == 50


async def test_a_dev_json_or_an_api_address_it_cannot_use_is_one_line_and_exit_3(
    tmp_path: Path,
) -> None:
    """dev.json is read for a key the environment does not give."""
    cli = Cli(clean_env(tmp_path), tmp_path)
    dev = tmp_path / "dev.json"

    dev.write_text('{"api_key": "k", ')
    truncated = await cli("numbers")
    dev.write_text(json.dumps(["k"]))
    a_list = await cli("numbers")
    dev.unlink()
    keyed = {**cli.env, "HERALD_API_KEY": "k"}
    bad_port = await cli("numbers", env={**keyed, "HERALD_API_URL": "http://localhost:80a"})
    no_scheme = await cli("numbers", env={**keyed, "HERALD_API_URL": "localhost:8000"})

    assert_refused(
        truncated,
        f"cannot read {dev}: Expecting property name enclosed in double quotes:"
        " line 1 column 18 (char 17)",
    )
    assert_refused(a_list, f"cannot read {dev}: not a JSON object")
    assert_refused(
        bad_port, "the API's address 'http://localhost:80a' is not a URL: Invalid port: '80a'"
    )
    assert_refused(
        no_scheme, "the API's address 'localhost:8000' is not an http:// or https:// URL"
    )


def test_a_key_from_the_environment_never_goes_to_dev_jsons_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dev.json in the folder a command runs in (anyone's checkout) names its own API: an
    operator's key, set in the environment, goes to the configured address, not there."""
    (tmp_path / "dev.json").write_text(
        json.dumps({"api_key": "local", "api_url": "https://elsewhere.example"})
    )
    for name in [name for name in os.environ if name.startswith("HERALD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HERALD_HOME", str(tmp_path))
    monkeypatch.setenv("HERALD_API_KEY", "operator")
    settings.get_settings.cache_clear()
    try:
        operator = Config.load()
        monkeypatch.delenv("HERALD_API_KEY")
        settings.get_settings.cache_clear()
        local = Config.load()
    finally:
        settings.get_settings.cache_clear()

    assert (operator.key, operator.api_url) == ("operator", settings.get_settings().api_url)
    assert (local.key, local.api_url) == ("local", "https://elsewhere.example")


async def test_a_usage_error_exits_2_before_anything_is_sent(tmp_path: Path) -> None:
    # As README and `herald --help` say: 2, a failed batch's code too. Nothing listens at
    # the address: a command that reached for it would exit 3.
    down = f"http://127.0.0.1:{free_port()}"
    cli = Cli({**clean_env(tmp_path), "HERALD_API_URL": down, "HERALD_API_KEY": "k"}, tmp_path)

    missing = await cli("status")
    unknown = await cli("export", "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10", "--json")

    assert (missing.code, missing.stdout) == (2, "")
    assert "Missing argument" in missing.stderr
    assert (unknown.code, unknown.stdout) == (2, "")
    assert "No such option" in unknown.stderr


async def test_an_event_stream_a_proxy_answers_503_for_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy before the API answers 502, 503 or 504 while the API restarts: the stream is
    opened again, as when its connection cannot be made."""
    monkeypatch.setattr(client, "RECONNECT_SECONDS", 0.01)
    answers = [502, 503, 504]

    async def events(request: web.Request) -> web.Response:
        if answers:
            return web.Response(status=answers.pop(0), text="<html>Bad gateway</html>")
        done = json.dumps({"status": "completed"})
        body = f"id: 3\nevent: status\ndata: {done}\n\n"
        return web.Response(text=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_get(f"/v1/sms/batch/{BATCH_ID}/events", events)
    async with served(app) as url:
        with Herald(Config(api_url=url, key="key")) as api:
            got = await asyncio.to_thread(lambda: list(api.events(BATCH_ID)))

    assert [(e.name, e.data, e.id) for e in got] == [("status", {"status": "completed"}, 3)]


@asynccontextmanager
async def a_stream_that_ends_early(batch_id: str) -> AsyncIterator[str]:
    """An API whose batch `batch_id` is `queued` and whose event stream of it ends at once,
    as a stream ends early (its key revoked, say); its address."""

    async def batch(request: web.Request) -> web.Response:
        queued = {"batch_id": batch_id, "status": "queued", "recipients": 2, "counts": {}}
        return web.json_response({"data": queued})

    async def events(request: web.Request) -> web.Response:
        return web.Response(text="", content_type="text/event-stream")

    app = web.Application()
    app.router.add_get(f"/v1/sms/batch/{batch_id}", batch)
    app.router.add_get(f"/v1/sms/batch/{batch_id}/events", events)
    async with served(app) as url:
        yield url


async def test_follow_gives_up_on_a_stream_that_keeps_ending_before_the_batch_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch_id = "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10"
    monkeypatch.setattr(main, "REOPEN_SECONDS", 0.01)
    async with a_stream_that_ends_early(batch_id) as url:
        with Herald(Config(api_url=url, key="key")) as api, pytest.raises(CliError) as raised:
            await asyncio.to_thread(main._follow, api, batch_id, True)

    assert str(raised.value) == (
        f"the event stream of batch {batch_id} ended while it is still queued:"
        f" `herald follow {batch_id}` follows it again (a run terminated through Temporal"
        f" ends so: `herald retry {batch_id}` runs it again)"
    )


@asynccontextmanager
async def a_batch_with_many_events(
    batch_id: str, events: int, reads: list[str]
) -> AsyncIterator[str]:
    """An API whose batch `batch_id` is `in_progress` when first read and `completed` after,
    and whose event stream gives `events` progress events at once, as to a stream opened
    late; each read of the batch is added to `reads`. Its address."""
    counts = {"sent": 2}
    found: dict[str, object] = {
        "batch_id": batch_id,
        "name": None,
        "code": None,
        "reason": None,
        "rows_total": 2,
    }
    found |= {"recipients": 2, "rejected": 0, "counts": counts, "temporal_ui_url": None}

    async def batch(request: web.Request) -> web.Response:
        reads.append(request.path)
        status = "in_progress" if len(reads) == 1 else "completed"
        return web.json_response({"data": {**found, "status": status}})

    async def stream(request: web.Request) -> web.Response:
        progress = json.dumps({"status": "in_progress", "sent": 1, "failed": 0})
        body = "".join(f"event: progress\ndata: {progress}\n\n" for _ in range(events))
        done = json.dumps({"status": "completed"})
        body += f"id: 1\nevent: status\ndata: {done}\n\n"
        return web.Response(text=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_get(f"/v1/sms/batch/{batch_id}", batch)
    app.router.add_get(f"/v1/sms/batch/{batch_id}/events", stream)
    async with served(app) as url:
        yield url


@pytest.mark.parametrize("as_json", [True, False])
async def test_follow_reads_the_counts_at_most_once_a_second_however_many_events_come(
    as_json: bool,
) -> None:
    # A read of the batch for each event: a stream opened on a long batch gave its hundreds
    # of events at once, and the key's rate refused the hundred-and-first (RATE_LIMITED).
    reads: list[str] = []
    async with a_batch_with_many_events(BATCH_ID, 300, reads) as url:
        with Herald(Config(api_url=url, key="key")) as api:
            code = await asyncio.to_thread(main._follow, api, BATCH_ID, as_json)

    assert code == main.EXIT_OK
    # The first read, (in a terminal or in lines) one as the events come, the last.
    assert 2 <= len(reads) <= 4


async def test_a_batch_id_is_read_without_its_line_end_and_one_that_is_no_id_is_a_usage_error(
    tmp_path: Path,
) -> None:
    reads: list[str] = []
    async with a_batch_with_many_events(BATCH_ID, 0, reads) as url:
        cli = Cli({**clean_env(tmp_path), "HERALD_API_URL": url, "HERALD_API_KEY": "k"}, tmp_path)
        pasted = await cli("status", f"{BATCH_ID}\r\n", "--json")
        shown = list(reads)
        other = await cli("status", f"{BATCH_ID}/messages")

    assert pasted.code == 0, pasted.stderr
    assert json.loads(pasted.stdout)["batch_id"] == BATCH_ID
    assert shown == [f"/v1/sms/batch/{BATCH_ID}"]
    assert (other.code, other.stdout) == (2, "")
    assert "is not a batch id" in other.stderr
    assert reads == shown


def test_the_cli_runs_as_a_module_too() -> None:
    """`python -m cli.main`, as the installed `herald` script runs it."""
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert "Usage: herald" in run.stdout


def test_the_help_shows_no_value_after_a_flag_and_a_readable_type_for_a_time() -> None:
    """Each command's `--help`: a flag (`--follow`, `--json`, `--help`) takes no value, so its
    row names no type, and `--schedule` reads `<time>`, not its strptime formats."""
    command = typer.main.get_command(main.app)
    assert isinstance(command, typer.core.TyperGroup)
    names = [name for name in command.commands if name != "keys"]  # keys: argparse's help
    runner = CliRunner()
    helps = {
        name: runner.invoke(main.app, [*name.split(), "--help"], env={"COLUMNS": "200"})
        for name in ["", *names]
    }

    assert {name: run.exit_code for name, run in helps.items()} == dict.fromkeys(helps, 0)
    shown = "".join(run.output for run in helps.values())
    assert "--follow" in shown and "--json" in shown
    assert "<bool>" not in shown
    assert "--schedule        <time>" in helps["send"].output.replace("│", "")
    assert "%Y" not in shown


@asynccontextmanager
async def an_api_answering(keys: list[str]) -> AsyncIterator[str]:
    """An API answering as Herald's does at `/v1/sms/numbers` and `/v1/sms/batches` (one
    batch, its name holding a tab and a line end), each request's key appended to `keys`;
    and as a proxy does at `/v1/sms/batch/{id}`: 502 with an HTML page of several lines."""

    async def numbers(request: web.Request) -> web.Response:
        keys.append(request.headers["authorization"])
        return web.json_response({"data": {"numbers": [], "next_cursor": None}, "errors": []})

    async def batches(request: web.Request) -> web.Response:
        keys.append(request.headers["authorization"])
        batch = {"batch_id": BATCH_ID, "name": "spring\tsale\nday 1\\2", "status": "completed"}
        return web.json_response({"data": {"batches": [batch], "next_cursor": None}})

    async def proxy_error(request: web.Request) -> web.Response:
        page = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n</body>\n</html>\n"
        return web.Response(status=502, text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/v1/sms/numbers", numbers)
    app.router.add_get("/v1/sms/batches", batches)
    app.router.add_get("/v1/sms/batch/{batch_id}", proxy_error)
    async with served(app) as url:
        yield url


async def test_a_key_is_sent_without_its_line_end_and_one_holding_a_control_is_never_shown(
    tmp_path: Path,
) -> None:
    """`export HERALD_API_KEY="$(cat key.txt)"` keeps a Windows line end's `\\r`: the key is
    sent without it (the API strips it too). A control character inside a key is refused by
    naming it, never by an error quoting the header, which printed the whole key."""
    keys: list[str] = []
    async with an_api_answering(keys) as url:
        env = {**clean_env(tmp_path), "HERALD_API_URL": url}
        read_from_a_file = await Cli({**env, "HERALD_API_KEY": "hk_secret\r"}, tmp_path)("numbers")
        with_a_space = await Cli({**env, "HERALD_API_KEY": " hk_secret "}, tmp_path)("numbers")
        inner = await Cli({**env, "HERALD_API_KEY": "hk_sec\rret"}, tmp_path)("numbers")

    assert (read_from_a_file.code, with_a_space.code) == (0, 0), read_from_a_file.stderr
    assert keys == ["hk_secret", "hk_secret"]
    assert_refused(
        inner,
        "the API key holds a character no key has ('\\r'): check HERALD_API_KEY, else dev.json's",
    )
    assert "hk_sec" not in inner.stderr


async def test_a_client_given_its_key_and_address_reads_neither_the_servers_settings_nor_dev_json(
    tmp_path: Path,
) -> None:
    """An operator's client on a machine where the server's settings are set for production
    (and incomplete for a server), or where dev.json is not readable: with HERALD_API_KEY and
    HERALD_API_URL it needs neither. Without the address, settings it cannot use are one line
    and exit 3, not the server's refusal to start (exit 2, a failed batch's code)."""
    (tmp_path / "dev.json").write_text('{"api_key": "k", ')
    production = {**clean_env(tmp_path), "HERALD_ENV": "production", "HERALD_API_PORT": "x"}
    keys: list[str] = []
    async with an_api_answering(keys) as url:
        given = {**production, "HERALD_API_URL": url, "HERALD_API_KEY": "k"}
        listed = await Cli(given, tmp_path)("numbers")
    no_address = await Cli({**production, "HERALD_API_KEY": "k"}, tmp_path)("numbers")

    assert (listed.code, listed.stderr, keys) == (0, "", ["k"])
    unparsed = await Cli({**clean_env(tmp_path), "HERALD_PRICES": "x"}, tmp_path)("numbers")

    assert no_address.code == 3, no_address.stderr
    assert no_address.stderr.startswith("herald: the HERALD_ settings are not valid: ")
    assert "HERALD_API_PORT" in no_address.stderr and len(no_address.stderr.splitlines()) == 1
    # A value no JSON reads: pydantic-settings refuses it before validating (a traceback).
    assert unparsed.code == 3, unparsed.stderr
    assert unparsed.stderr.startswith("herald: the HERALD_ settings are not valid: ")
    assert '"prices"' in unparsed.stderr and len(unparsed.stderr.splitlines()) == 1


async def test_plain_rows_keep_one_line_each_and_a_proxys_error_page_is_one_line(
    tmp_path: Path,
) -> None:
    async with an_api_answering([]) as url:
        cli = Cli({**clean_env(tmp_path), "HERALD_API_URL": url, "HERALD_API_KEY": "k"}, tmp_path)
        listed = await cli("batches")
        proxied = await cli("status", BATCH_ID)

    assert listed.stdout.splitlines() == [
        "batch_id\tname\tstatus\tagent_number\trecipients\tcreated_at",
        f"{BATCH_ID}\tspring\\tsale\\nday 1\\\\2\tcompleted\t-\t-\t-",
    ]
    assert_refused(
        proxied,
        "HTTP_ERROR (502): <html> <head><title>502 Bad Gateway</title></head> <body> </body>"
        " </html>",
    )


@pytest.mark.parametrize("out", [".", "", "folder"])
async def test_an_export_to_a_folder_is_one_line_and_exit_3_before_any_request(
    tmp_path: Path, out: str
) -> None:
    (tmp_path / "folder").mkdir()
    down = f"http://127.0.0.1:{free_port()}"
    cli = Cli({**clean_env(tmp_path), "HERALD_API_URL": down, "HERALD_API_KEY": "k"}, tmp_path)

    exported = await cli("export", BATCH_ID, "-o", out)

    assert_refused(exported, f"cannot write {Path(out)}: it is a folder, not a file")
    assert sorted(os.listdir(tmp_path)) == ["folder"]


def test_rows_waiting_for_their_window_are_shown_as_some_of_the_pending_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`waiting_for_window` counts `pending` rows (docs/API.md): listed as a status of its
    own, the messages added up to more than the recipients."""
    batch = {
        "batch_id": BATCH_ID,
        "name": None,
        "status": "in_progress",
        "code": None,
        "reason": None,
        "rows_total": 5,
        "recipients": 5,
        "rejected": 0,
        "counts": {"sent": 3, "pending": 2, "waiting_for_window": 2, "rejected": 0},
        "temporal_ui_url": None,
    }

    main._summary(batch)

    shown = capsys.readouterr().out
    assert "messages pending: 2\n" in shown
    assert "messages pending, of which waiting for window: 2\n" in shown
