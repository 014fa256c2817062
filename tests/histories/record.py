"""Record tests/histories/ again: `.venv/bin/python -m tests.histories.record`.

Runs tests/histories/scenarios.py under pytest, so the scenarios get the test session's real
stack (PostgreSQL, the Temporal dev server, the carrier emulator, a worker of the current code);
each scenario overwrites its own JSON files. Extra arguments go to pytest (`-k plain`).
"""

import subprocess
import sys
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).with_name("scenarios.py")


def main() -> int:
    code = int(pytest.main(["-q", "-p", "no:cacheprovider", str(SCENARIOS), *sys.argv[1:]]))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    sys.stdout.write(
        f"Recorded from commit {commit or '(unknown)'}: note it in tests/histories/README.md.\n"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
