"""Every error code of the batch and file endpoints, in the `{data, errors}` envelope."""

import uuid

import asyncpg
import httpx
import pytest

from settings import Settings
from store import numbers
from store.accounts import create_account, create_api_key
from tests.support.builders import attach, csv_bytes, unique_numbers
from tests.support.stack import Account, api_client, error_code


@pytest.fixture
async def file_id(api: httpx.AsyncClient, account: Account) -> str:
    return await attach(
        api, account.headers, csv_bytes(["phone_number"], [[n] for n in unique_numbers(2)])
    )


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"global": {"agent_number": "+15005550006"}}, 400, "MISSING_FILE_ID"),
        ({"file_id": "", "global": {"agent_number": "+15005550006"}}, 400, "MISSING_FILE_ID"),
        ({"file_id": "FILE"}, 400, "MISSING_AGENT_NUMBER"),
        ({"file_id": "FILE", "global": {}}, 400, "MISSING_AGENT_NUMBER"),
        ({"file_id": "FILE", "global": "+15005550006"}, 400, "INVALID_GLOBAL_FORMAT"),
        (
            {"file_id": "FILE", "global": {"agent_number": "+15005550006", "request_data": [1]}},
            400,
            "INVALID_GLOBAL_FORMAT",
        ),
        (
            {"file_id": "FILE", "global": {"agent_number": "+15005550006"}, "column_mapping": []},
            400,
            "INVALID_COLUMN_MAPPING_FORMAT",
        ),
        (
            {
                "file_id": "FILE",
                "global": {"agent_number": "+15005550006"},
                "column_mapping": {"name": "metadata.name"},
            },
            400,
            "INVALID_COLUMN_MAPPING_FORMAT",
        ),
        (
            {
                "file_id": "FILE",
                "global": {"agent_number": "+15005550006"},
                "column_mapping": {"mobile": "phone_number"},
            },
            400,
            "INVALID_COLUMN_MAPPING_FORMAT",
        ),
        (
            {
                "file_id": "FILE",
                "global": {"agent_number": "+15005550006"},
                "column_mapping": {"mobile": "request_data.phone_number"},
            },
            400,
            "INVALID_COLUMN_MAPPING_FORMAT",
        ),
        (
            {
                "file_id": "FILE",
                "global": {"agent_number": "+15005550006"},
                "column_mapping": {"phone_number": "request_data.mobile"},
            },
            400,
            "INVALID_COLUMN_MAPPING_FORMAT",
        ),
        (
            {
                "file_id": "FILE",
                "global": {"agent_number": "+15005550006"},
                "column_mapping": {"First": "request_data.first name"},
            },
            400,
            "INVALID_COLUMN_MAPPING_FORMAT",
        ),
        (
            {"file_id": "FILE", "global": {"agent_number": "+15005550006"}, "strict": "maybe"},
            400,
            "INVALID_REQUEST",
        ),
        (
            {"file_id": str(uuid.uuid4()), "global": {"agent_number": "+15005550006"}},
            404,
            "FILE_NOT_FOUND",
        ),
        (
            {"file_id": "not-a-uuid", "global": {"agent_number": "+15005550006"}},
            404,
            "FILE_NOT_FOUND",
        ),
        (
            {"file_id": "FILE", "global": {"agent_number": "+15551230000"}},
            404,
            "AGENT_NUMBER_NOT_FOUND",
        ),
        (
            {
                "file_id": "FILE",
                "global": {"agent_number": "+15005550006"},
                "status_webhook": "ftp://x",
            },
            400,
            "INVALID_WEBHOOK_URL",
        ),
    ],
)
async def test_batch_request_errors(
    api: httpx.AsyncClient, account: Account, file_id: str, body: dict, status: int, code: str
) -> None:
    if body.get("file_id") == "FILE":
        body = {**body, "file_id": file_id}

    response = await api.post("/v1/sms/batch", headers=account.headers, json=body)

    assert response.status_code == status, response.text
    assert error_code(response) == code


async def test_another_accounts_file_is_not_found(
    api: httpx.AsyncClient, account: Account, file_id: str, pool: asyncpg.Pool
) -> None:
    other = await create_account(pool, "other")
    key = await create_api_key(pool, other)
    sender = unique_numbers(1)[0]
    await numbers.add_number(pool, other, sender, "sms", None)

    response = await api.post(
        "/v1/sms/batch",
        headers={"authorization": f"Bearer {key.key}"},
        json={"file_id": file_id, "global": {"agent_number": sender}},
    )

    assert response.status_code == 404
    assert error_code(response) == "FILE_NOT_FOUND"


@pytest.mark.parametrize("authorization", [None, "", "hk_wrong", "Bearer hk_wrong", "nonsense"])
async def test_missing_or_bad_key_is_unauthorized(
    api: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}

    response = await api.post("/v1/sms/batch", headers=headers, json={})

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHORIZED"


async def test_unknown_batch_is_not_found(api: httpx.AsyncClient, account: Account) -> None:
    for path in (
        "",
        "/messages",
        "/messages?format=csv",
        "/logs",
        "/deliveries",
        "/errors",
        "/errors?format=csv",
    ):
        response = await api.get(f"/v1/sms/batch/{uuid.uuid4()}{path}", headers=account.headers)
        assert response.status_code == 404
        assert error_code(response) == "BATCH_NOT_FOUND"


@pytest.mark.parametrize(
    ("data", "files", "code"),
    [
        (
            {"file_type": "calls"},
            {"file": ("a.csv", b"phone_number\n", "text/csv")},
            "INVALID_FILE_TYPE",
        ),
        ({"file_type": "batches"}, None, "MISSING_FILE"),
        ({"file_type": "batches"}, {"file": ("a.csv", b"", "text/csv")}, "EMPTY_FILE"),
        (
            {"file_type": "batches"},
            [
                ("file", ("a.csv", b"phone_number\n+12015550123\n", "text/csv")),
                ("file", ("b.csv", b"phone_number\n+12015550124\n", "text/csv")),
            ],
            "MULTIPLE_FILES",
        ),
        # Herald's own type for a file of validated ledger rows (a Postman upload's), which a
        # retry of a batch whose run never recorded its ledger would load unvalidated.
        (
            {"file_type": "batches"},
            {
                "file": (
                    "a.arrow",
                    b"phone_number\n+12015550123\n",
                    "application/vnd.apache.arrow.stream",
                )
            },
            "INVALID_FILE_TYPE",
        ),
    ],
)
async def test_attach_errors(
    api: httpx.AsyncClient,
    account: Account,
    data: dict,
    files: dict | list | None,
    code: str,
) -> None:
    response = await api.post("/v1/files/attach", headers=account.headers, data=data, files=files)

    assert response.status_code == 400
    assert error_code(response) == code


async def test_attach_accepts_usage_and_returns_ids(
    api: httpx.AsyncClient, account: Account
) -> None:
    content = b"phone_number\n+12015550123\n"

    response = await api.post(
        "/v1/files/attach",
        headers=account.headers,
        data={"usage": "batches"},
        files={"file": ("list.csv", content, "text/csv")},
    )

    data = response.json()["data"]
    assert response.status_code == 200
    assert data["file_id"] == data["id"]
    assert uuid.UUID(data["file_id"])
    assert (data["filename"], data["size_bytes"]) == ("list.csv", len(content))


async def test_attach_refuses_a_file_over_the_limit(settings: Settings, account: Account) -> None:
    async with api_client(settings.model_copy(update={"max_upload_bytes": 64})) as api:
        response = await api.post(
            "/v1/files/attach",
            headers=account.headers,
            data={"file_type": "batches"},
            files={"file": ("big.csv", b"phone_number\n" + b"+12015550123\n" * 10, "text/csv")},
        )

    assert response.status_code == 413
    assert error_code(response) == "FILE_TOO_LARGE"
