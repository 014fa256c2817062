"""The `herald` command's client (cli/client.py) against addresses where no API answers as
Herald's: each failure is a `CliError`, the one line the command prints, never a traceback."""

import time

import pytest

from cli import client
from cli.client import CliError, Config, Herald
from deploy.local.processes import free_port


def test_an_event_stream_that_cannot_connect_is_tried_again_then_is_a_cli_error() -> None:
    # Nothing listens on the port: each connection is refused, as while the API restarts.
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()

    with Herald(Config(api_url=url, key="key")) as api, pytest.raises(CliError) as raised:
        list(api.events("0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10"))

    assert str(raised.value).startswith(f"cannot reach the API at {url} for the event stream:")
    assert time.monotonic() - started >= client.RECONNECTS * client.RECONNECT_SECONDS
