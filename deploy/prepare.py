"""One-shot preparation before a deployment's API and workers start (the Kubernetes Job, the
compose file's `prepare` service): `python -m deploy.prepare [--no-search-attributes]`.

Migrations first, so new code never meets an old schema; then the search attributes
(`--no-search-attributes` on Temporal Cloud, whose namespace gets them from `tcld`).
"""

import argparse
import asyncio
import sys

from deploy.search_attributes import register
from logs import configure_logging
from settings import get_settings
from store.db import create_pool, migrate
from temporal_client import connect_temporal, exit_skipping_teardown


async def prepare(*, search_attributes: bool) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    pool = await create_pool(settings.dsn, min_size=1, max_size=1)
    try:
        applied = await migrate(pool)
    finally:
        await pool.close()
    sys.stdout.write(f"migrations applied: {', '.join(applied) or 'none (up to date)'}\n")
    if search_attributes:
        client = await connect_temporal(settings)
        added = await register(client, settings.temporal_namespace)
        sys.stdout.write(f"search attributes added: {', '.join(added) or 'none (all present)'}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--no-search-attributes", action="store_true")
    args = parser.parse_args()
    asyncio.run(prepare(search_attributes=not args.no_search_attributes))
    return 0


if __name__ == "__main__":
    exit_skipping_teardown(main())
