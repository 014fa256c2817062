"""API keys: the `herald keys` command line, shown-once keys, revocation, the 401s."""

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx

from deploy.local.processes import free_port
from settings import Settings
from store.db import create_pool
from tests.support.databases import own_database

HERALD = Path(sys.executable).parent / "herald"


def herald(
    settings: Settings, *args: str, dsn: str | None = None, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    """The installed `herald` console script, against the session's PostgreSQL (or `dsn`),
    with `env_vars` besides."""
    env = {**os.environ, "HERALD_DATABASE_URL": dsn or settings.dsn, **env_vars}
    return subprocess.run(
        [str(HERALD), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def field(output: str, name: str) -> str:
    match = re.search(rf"^{name}: (\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


async def test_a_key_created_on_the_command_line_works_until_revoked(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    created = herald(settings, "keys", "create", "--account-name", f"cli-{uuid.uuid4().hex[:6]}")
    assert created.returncode == 0, created.stderr
    key, key_id = field(created.stdout, "key"), field(created.stdout, "key_id")
    account_id = field(created.stdout, "account_id")
    assert key.startswith("hk_")

    for header in (key, f"Bearer {key}"):
        response = await api.get("/v1/sms/batches", headers={"authorization": header})
        assert response.status_code == 200, response.text

    listed = herald(settings, "keys", "list", "--account", account_id)
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and key[:12] in listed.stdout
    assert key not in listed.stdout

    revoked = herald(settings, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    response = await api.get("/v1/sms/batches", headers={"authorization": key})
    assert response.status_code == 401
    assert response.json()["errors"][0]["error"] == "UNAUTHORIZED"
    assert re.search(rf"^{key_id}\t.*\t\d{{4}}-", herald(settings, "keys", "list").stdout, re.M)


async def test_a_second_key_for_an_account_is_independent(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    first = herald(settings, "keys", "create", "--account-name", "cli-two-keys")
    account_id = field(first.stdout, "account_id")
    second = herald(settings, "keys", "create", "--account", account_id)
    assert second.returncode == 0, second.stderr
    assert field(second.stdout, "account_id") == account_id

    herald(settings, "keys", "revoke", field(first.stdout, "key_id"))
    ok = await api.get("/v1/sms/batches", headers={"authorization": field(second.stdout, "key")})
    gone = await api.get("/v1/sms/batches", headers={"authorization": field(first.stdout, "key")})
    assert (ok.status_code, gone.status_code) == (200, 401)


def test_unknown_account_and_key_are_refused(settings: Settings) -> None:
    assert herald(settings, "keys", "create", "--account", str(uuid.uuid4())).returncode == 1
    assert herald(settings, "keys", "revoke", str(uuid.uuid4())).returncode == 1


def test_a_database_that_refuses_or_is_not_there_is_one_line_and_exit_3(
    settings: Settings,
) -> None:
    missing = herald(settings, "keys", "list", dsn=settings.dsn.rsplit("/", 1)[0] + "/nowhere")
    closed = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/postgres"
    unreachable = herald(settings, "keys", "list", dsn=closed)

    head = "herald: cannot use the database at HERALD_DATABASE_URL:"
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == f'{head} database "nowhere" does not exist\n'
    assert (unreachable.returncode, unreachable.stdout) == (3, "")
    assert unreachable.stderr.startswith(f"{head} ")
    assert unreachable.stderr.count("\n") == 1 and "secret" not in unreachable.stderr


async def test_without_migrating_on_start_a_database_behind_is_refused_untouched(
    settings: Settings, pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    # It migrated whatever HERALD_MIGRATE_ON_START said: outside the prepare Job.
    async with own_database(pool, postgres_dsn, "keys") as url:
        refused = await asyncio.to_thread(
            herald, settings, "keys", "list", dsn=url, HERALD_MIGRATE_ON_START="false"
        )
        async with await create_pool(url, min_size=1) as own:
            untouched = await own.fetchval("SELECT to_regclass('schema_migrations') IS NULL")

    assert (refused.returncode, refused.stdout) == (3, "")
    assert refused.stderr.startswith("herald: the database lacks ")
    assert "deploy.prepare" in refused.stderr and refused.stderr.count("\n") == 1
    assert untouched


async def test_missing_malformed_or_guessed_keys_get_401(api: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"authorization": ""},
        {"authorization": "hk_" + "A" * 43},
        {"authorization": "Bearer nope"},
    ):
        response = await api.get("/v1/sms/batches", headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["errors"][0]["error"] == "UNAUTHORIZED"


async def test_permissions_given_on_the_command_line_limit_the_key(
    settings: Settings, api: httpx.AsyncClient
) -> None:
    created = herald(
        settings,
        *("keys", "create", "--account-name", "cli-perms"),
        *("--permission", "batches:read", "--permission", "create:BatchSMS"),
    )
    assert created.returncode == 0, created.stderr
    assert field(created.stdout, "permissions") == "batches:read,create:BatchSMS"
    headers = {"authorization": field(created.stdout, "key")}

    assert (await api.get("/v1/sms/batches", headers=headers)).status_code == 200
    refused = await api.get("/v1/sms/numbers", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["error"] == "FORBIDDEN"
    listed = herald(settings, "keys", "list", "--account", field(created.stdout, "account_id"))
    assert listed.stdout.rstrip().endswith("\tbatches:read,create:BatchSMS"), listed.stdout

    unknown = herald(settings, "keys", "create", "--account-name", "x", "--permission", "all")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
