"""The `herald` command run as users run it: the installed console script, a process of its
own, with the environment a test gives it."""

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack import WAIT_SECONDS

HERALD = Path(sys.executable).parent / "herald"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]


@dataclass(frozen=True)
class Cli:
    env: dict[str, str]
    cwd: Path

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> Run:
        process = await asyncio.create_subprocess_exec(
            str(HERALD),
            *args,
            cwd=self.cwd,
            env=env if env is not None else self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(WAIT_SECONDS):
            stdout, stderr = await process.communicate()
        assert process.returncode is not None
        return Run(process.returncode, stdout.decode(), stderr.decode())

    async def send(self, file: Path, sender: str, *options: str, message: str = "Hi") -> Run:
        return await self("send", str(file), "--from", sender, "--message", message, *options)


def clean_env(home: Path) -> dict[str, str]:
    """The test's environment without any `HERALD_` variable, `HERALD_HOME` set to `home`;
    nor `COLUMNS` and `LINES` (pytest-xdist's workers set them, 80 by 24), which would size
    the CLI's tables whatever terminal it runs in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HERALD_") and k not in ("COLUMNS", "LINES")
    }
    return {**env, "HERALD_HOME": str(home)}
