"""A small aiohttp application served on a free local port, for tests that need a web server
of their own (a webhook receiver, an API that is not Herald's)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from deploy.local.processes import free_port


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """`app` listening on 127.0.0.1 until the block ends; its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
