"""The `herald` command's side of the API: where it is, the key, requests, the event stream.

The key comes from `HERALD_API_KEY`, else from the local stack's `dev.json` (written by
`make run` in `HERALD_HOME`, `.herald` by default); the API's address from `HERALD_API_URL`,
else `dev.json`, else the local default."""

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from settings import Refused, Settings, checked_settings, read_dev_file

KEY_VARIABLE = "HERALD_API_KEY"
URL_VARIABLE = "HERALD_API_URL"
TIMEOUT = httpx.Timeout(30.0)
# Items per page when the CLI reads a whole list (the API's largest page).
PAGE = 1000
# The event stream sends something about once a second while the batch runs.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=120.0)
# An event stream that drops, or cannot be opened, is tried again this many times in a row,
# this far apart, before the command fails.
RECONNECTS = 5
RECONNECT_SECONDS = 1.0
# What a proxy before the API answers while the API restarts: the stream is tried again.
RESTARTING = frozenset({502, 503, 504})


class _Restarting(Exception):
    """The stream's request was answered as while the API restarts (RESTARTING)."""


class CliError(Exception):
    """A failure to tell the user in one line; the command exits with `EXIT_ERROR`."""


class ApiError(CliError):
    """The API's refusal: its status and the code and message of its first error."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"{code} ({status_code}): {message}")
        self.status_code = status_code
        self.code = code


@dataclass(frozen=True)
class Event:
    """One server-sent event: `status` (a lifecycle event) or `progress`."""

    name: str
    data: dict[str, Any]
    id: int | None


@dataclass(frozen=True)
class Config:
    api_url: str
    key: str

    @classmethod
    def load(cls) -> "Config":
        """The key and address from the environment; what it lacks from dev.json and Herald's
        settings, which are read only then (an operator's client, given both, needs neither:
        not a server's settings, nor a dev.json it may not read)."""
        key = os.environ.get(KEY_VARIABLE, "").strip()
        url = os.environ.get(URL_VARIABLE, "").strip()
        dev: dict[str, Any] = {}
        # dev.json's address only with its own key: a key from the environment never goes to
        # an address read from a file in whatever folder the command runs in.
        if not key:
            dev_file = _settings().home / "dev.json"
            try:
                dev = read_dev_file(dev_file)
            except (OSError, ValueError) as error:
                raise CliError(f"cannot read {dev_file}: {error}") from error
            key = str(dev.get("api_key") or "").strip()
            if not key:
                raise CliError(
                    f"no API key: set {KEY_VARIABLE}, or start the local stack (`make run`)"
                    f" which writes one to {dev_file}"
                )
        _check_key(key)
        url = url or str(dev.get("api_url") or _settings().api_url)
        try:
            scheme = httpx.URL(url).scheme
        except httpx.InvalidURL as error:
            raise CliError(f"the API's address {url!r} is not a URL: {error}") from error
        if scheme not in ("http", "https"):
            raise CliError(f"the API's address {url!r} is not an http:// or https:// URL")
        return cls(api_url=url.rstrip("/"), key=key)


def _settings() -> Settings:
    """Herald's settings, for the local stack's home and address: an environment they refuse
    is the command's error, its problems on one line (no server starts here)."""
    try:
        return checked_settings()
    except Refused as refused:
        problems = "; ".join(str(refused).splitlines())
        raise CliError(f"the HERALD_ settings are not valid: {problems}") from refused


def _check_key(key: str) -> None:
    """A key is printable ASCII (a header value): one pasted with a non-breaking space or a
    carriage return (a file with Windows line ends) is refused here, naming the character
    alone, never the key (an HTTP library's error quotes the whole header)."""
    for character in key:
        if not (character.isascii() and character.isprintable()):
            raise CliError(
                f"the API key holds a character no key has ({character!r}):"
                f" check {KEY_VARIABLE}, else dev.json's"
            )


class Herald:
    """Herald's own API (`/v1/...`), answers unwrapped from the `{data, errors}` envelope."""

    def __init__(self, config: Config) -> None:
        self._http = httpx.Client(
            base_url=config.api_url, headers={"authorization": config.key}, timeout=TIMEOUT
        )

    def __enter__(self) -> "Herald":
        return self

    def __exit__(self, *_: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise CliError(f"cannot reach the API at {self._http.base_url}: {error}") from error
        _raise_for_error(response)
        try:
            return response.json()["data"]
        except (ValueError, KeyError, TypeError) as error:
            raise _not_herald(response, "no JSON `data`") from error

    def every(self, path: str, items: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list endpoint, page after page by its `next_cursor`."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            after = {"cursor": cursor} if cursor else {}
            page = self.call("GET", path, params={**params, "limit": PAGE, **after})
            found += page[items]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    def attach(self, file: Path) -> dict[str, Any]:
        with file.open("rb") as content:
            return self.call(
                "POST",
                "/v1/files/attach",
                data={"file_type": "batches"},
                files={"file": (file.name, content)},
            )

    def download(self, path: str, out: BinaryIO, media_type: str, **params: str) -> None:
        """The answer's body, written to `out`, when it is of `media_type`."""
        try:
            with self._http.stream("GET", path, params=params) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                given = response.headers.get("content-type", "")
                if given.split(";")[0].strip().lower() != media_type:
                    raise _not_herald(response, f"{given or 'no content type'}, not {media_type}")
                for chunk in response.iter_bytes():
                    out.write(chunk)
        except httpx.HTTPError as error:
            raise CliError(f"the download stopped: {error}") from error

    def events(self, batch_id: str, after: int = 0) -> Iterator[Event]:
        """The batch's event stream, from the event after `after`, until it ends after the
        final event; a dropped connection is opened again after the last event seen
        (`Last-Event-ID`), one that cannot be made (the API restarting, or a proxy before it
        answering 502, 503 or 504 meanwhile) is tried again up to `RECONNECTS` times in a
        row."""
        last, failures = after, 0
        while True:
            headers = {"last-event-id": str(last)}
            path = f"/v1/sms/batch/{batch_id}/events"
            try:
                with self._http.stream(
                    "GET", path, headers=headers, timeout=STREAM_TIMEOUT
                ) as response:
                    if response.status_code in RESTARTING:
                        raise _Restarting(f"the API answered {response.status_code}")
                    if response.is_error:
                        response.read()
                        _raise_for_error(response)
                    for event in parse_events(response.iter_lines()):
                        failures = 0
                        if event.id is not None:
                            last = event.id
                        yield event
                    return
            except (
                httpx.NetworkError,
                httpx.TimeoutException,
                httpx.RemoteProtocolError,
                _Restarting,
            ) as error:
                failures += 1
                if failures > RECONNECTS:
                    raise CliError(
                        f"cannot reach the API at {self._http.base_url} for the event stream:"
                        f" {error}"
                    ) from error
                time.sleep(RECONNECT_SECONDS)
            except httpx.HTTPError as error:
                raise CliError(f"the event stream failed: {error}") from error


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events from a stream's lines (`event:`, `id:`, `data:`, blank line)."""
    name, data, event_id = "message", "", None
    for line in lines:
        if not line:
            if data:
                yield Event(name, json.loads(data), event_id)
            name, data, event_id = "message", "", None
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data += value
        elif field == "id":
            event_id = int(value)


def _not_herald(response: httpx.Response, what: str) -> CliError:
    """An answer that is not Herald's: the address is likely another web server's."""
    return CliError(
        f"{response.request.url} answered {response.status_code} with {what}:"
        f" is it Herald's API? (its address is {URL_VARIABLE}, else dev.json's)"
    )


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        errors = response.json()["errors"]
        code, message = errors[0]["error"], errors[0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        # A proxy's error page, say: its first words, on the one line an error takes.
        code, message = "HTTP_ERROR", " ".join(response.text[:200].split())
    raise ApiError(response.status_code, code, message)
