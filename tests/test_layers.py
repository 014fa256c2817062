"""The layers of docs/STYLE.md: routes reach the store, Temporal and the rules only through
api/services/."""

import ast
from pathlib import Path

ROUTES = Path(__file__).resolve().parent.parent / "api" / "routes"
# What only a service may import.
BELOW_SERVICES = {"store", "asyncpg", "activities", "workflows", "temporalio"}
# The statuses every layer shares: plain enums, no workflow or activity code.
SHARED = {"workflows.statuses"}


def _imported(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_routes_import_nothing_below_the_services() -> None:
    routes = sorted(ROUTES.glob("*.py"))
    assert len(routes) > 5
    wrong = [
        f"{path.name}:{line} imports {module}"
        for path in routes
        for line, module in _imported(path)
        if module.split(".")[0] in BELOW_SERVICES and module not in SHARED
    ]
    assert wrong == []
