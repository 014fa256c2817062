"""`herald keys create|list|revoke`, the operators' commands of `herald` (cli/main.py): API
keys (`create --permission ...` limits what a key may do).

It talks to PostgreSQL directly (`HERALD_DATABASE_URL`), so it works without the API running
and needs the database credentials, which is what makes it an operator tool. Each command
first applies the migrations not yet applied, as the API does at start.

Exit codes: 0 done; 1 no such account (`create --account`) or no unrevoked key (`revoke`);
3 the database cannot be reached or refused (one line on stderr); 2 a usage error.
"""

import argparse
import asyncio
import sys
import uuid
from collections.abc import Sequence

import asyncpg

from settings import get_settings
from store import accounts
from store.db import SchemaBehind, create_pool, ready_schema

# As `herald`'s other commands exit when a request fails.
EXIT_DATABASE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herald", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key, printed once")
    owner = create.add_mutually_exclusive_group(required=True)
    owner.add_argument("--account", type=uuid.UUID, help="an existing account's id")
    owner.add_argument("--account-name", help="create a new account with this name")
    create.add_argument(
        "--permission",
        action="append",
        choices=accounts.PERMISSIONS,
        help="what the key may do (repeatable); without any, the key may do everything",
    )
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--account", type=uuid.UUID, help="only this account's keys")
    revoke = keys.add_parser("revoke", help="revoke a key: requests with it get 401 at once")
    revoke.add_argument("key_id", type=uuid.UUID)
    return parser


async def _create(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    if args.account_name is not None:
        account_id = await accounts.create_account(pool, args.account_name)
    elif await accounts.account_exists(pool, args.account):
        account_id = args.account
    else:
        sys.stderr.write(f"no account {args.account}\n")
        return 1
    new = await accounts.create_api_key(pool, account_id, args.permission)
    permissions = ",".join(args.permission) if args.permission else "all"
    sys.stdout.write(
        f"account_id: {new.account_id}\nkey_id: {new.key_id}\nkey: {new.key}\n"
        f"permissions: {permissions}\n"
        "The key is shown only now: store it safely.\n"
    )
    return 0


async def _list(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    sys.stdout.write("key_id\taccount_id\tprefix\tcreated_at\trevoked_at\tpermissions\n")
    for key in await accounts.list_api_keys(pool, args.account):
        revoked = key["revoked_at"].isoformat() if key["revoked_at"] else "-"
        granted = key["permissions"]
        permissions = "all" if granted is None else ",".join(granted) or "none"
        sys.stdout.write(
            f"{key['id']}\t{key['account_id']}\t{key['prefix']}\t"
            f"{key['created_at'].isoformat()}\t{revoked}\t{permissions}\n"
        )
    return 0


async def _revoke(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    if not await accounts.revoke_api_key(pool, args.key_id):
        sys.stderr.write(f"no unrevoked key {args.key_id}\n")
        return 1
    sys.stdout.write(f"revoked {args.key_id}\n")
    return 0


async def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    pool = await create_pool(settings.dsn, min_size=1, max_size=2)
    try:
        await ready_schema(pool, migrate_now=settings.migrate_on_start)
        action = {"create": _create, "list": _list, "revoke": _revoke}[args.action]
        return await action(pool, args)
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except SchemaBehind as behind:
        sys.stderr.write(f"herald: {behind}\n")
        return EXIT_DATABASE
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        # The DSN is left out: it may hold the password.
        reason = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"herald: cannot use the database at HERALD_DATABASE_URL: {reason}\n")
        return EXIT_DATABASE


if __name__ == "__main__":
    sys.exit(main())
