"""Request limits: body size (413 `PAYLOAD_TOO_LARGE`) and per-key rate (429 `RATE_LIMITED`)."""

from collections.abc import AsyncIterator

import asyncpg

from settings import Settings
from store.accounts import create_account, create_api_key
from tests.support.stack import Account, api_client, error_code


async def test_a_json_body_over_the_limit_is_refused_before_it_is_read(
    settings: Settings, account: Account
) -> None:
    big = {"file_id": "x", "name": "n" * 5000, "global": {"agent_number": "+15005550006"}}
    async with api_client(settings.model_copy(update={"max_batch_body_bytes": 2048})) as api:
        declared = await api.post("/v1/sms/batch", headers=account.headers, json=big)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000  # JSON whitespace: valid, and no Content-Length announces it

        chunked = await api.post(
            "/v1/sms/batch",
            headers=account.headers | {"content-type": "application/json"},
            content=chunks(),
        )
        small = await api.post("/v1/sms/batch", headers=account.headers, json={"file_id": "x"})

    assert (declared.status_code, error_code(declared)) == (413, "PAYLOAD_TOO_LARGE")
    assert "content-length" not in chunked.request.headers
    assert (chunked.status_code, error_code(chunked)) == (413, "PAYLOAD_TOO_LARGE")
    assert small.status_code == 400  # under the limit: refused for what it says, not its size


async def test_only_a_route_that_takes_a_file_takes_a_body_of_an_uploads_size(
    settings: Settings, account: Account
) -> None:
    # Bodies are read (and forms parsed) before the key or the carrier's signature is checked:
    # elsewhere a multipart body has the limit of any body.
    body = {"file": ("f.csv", b"phone_number\n" + b"1" * 20_000, "text/csv")}
    limits = {"max_body_bytes": 4096, "max_upload_bytes": 1_000_000}
    async with api_client(settings.model_copy(update=limits)) as api:
        elsewhere = [
            await api.post(path, files=body)
            for path in ("/v1/webhooks/twilio/inbound", "/v1/sms/numbers", "/v1/lists")
        ]
        upload = await api.post(
            "/v1/files/attach", headers=account.headers, files=body, data={"file_type": "batches"}
        )

    assert [(r.status_code, error_code(r)) for r in elsewhere] == [(413, "PAYLOAD_TOO_LARGE")] * 3
    assert upload.status_code == 200, upload.text


async def test_a_request_with_two_content_types_is_refused_before_its_body_is_read(
    settings: Settings,
) -> None:
    """The size limit read the last Content-Type (an upload's, 40 MiB) and the body check the
    first (JSON, read and parsed whole before any key): a 40 MiB JSON body passed both, and
    was parsed for anyone."""
    limits = {"max_body_bytes": 4096, "max_upload_bytes": 1_000_000}
    body = b"[" + b"[]," * 10_000 + b"[]]"
    async with api_client(settings.model_copy(update=limits)) as api:
        refused = await api.post(
            "/v1/files/attach",
            content=body,
            headers=[
                ("content-type", "application/json"),
                ("content-type", "multipart/form-data; boundary=x"),
            ],
        )

    assert (refused.status_code, error_code(refused)) == (400, "INVALID_REQUEST")
    assert "one Content-Type" in refused.text


async def test_each_key_has_its_own_request_rate(
    settings: Settings, pool: asyncpg.Pool, account: Account
) -> None:
    other = (await create_api_key(pool, await create_account(pool, "rate-other"))).key
    limited = settings.model_copy(update={"rate_limit_per_second": 0.5, "rate_limit_burst": 3})
    async with api_client(limited) as api:
        burst = [await api.get("/v1/sms/batches", headers=account.headers) for _ in range(3)]
        refused = await api.get("/v1/sms/batches", headers=account.headers)
        another_key = await api.get("/v1/sms/batches", headers={"authorization": other})

    assert [r.status_code for r in burst] == [200, 200, 200]
    assert (refused.status_code, error_code(refused)) == (429, "RATE_LIMITED")
    assert 1 <= int(refused.headers["retry-after"]) <= 2
    assert another_key.status_code == 200


async def test_a_keys_request_rate_is_shared_by_every_api_process(
    settings: Settings, account: Account
) -> None:
    """Two API apps, each with its own pool, as two processes would be: the key's burst is
    spent once between them, not once in each."""
    limited = settings.model_copy(update={"rate_limit_per_second": 0.01, "rate_limit_burst": 3})
    async with api_client(limited) as first, api_client(limited) as second:
        answers = [
            await api.get("/v1/sms/batches", headers=account.headers)
            for api in (first, second, first, second)
        ]

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert error_code(answers[-1]) == "RATE_LIMITED"
