"""docs/API.md's endpoint table names every route the app serves, and only those."""

import re
from pathlib import Path

from api.app import create_app

API_MD = Path(__file__).resolve().parent.parent / "docs" / "API.md"
# A row of the table: `| GET, HEAD | `/s/{code}` | ... |`.
ROW = re.compile(r"^\| ([A-Z, ]+) \| ((?:`[^`]+`(?:, )?)+) \|")


def documented() -> set[tuple[str, str]]:
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("\n## Endpoints\n", 1)[1]
    table = section.split("\n| method | path |", 1)[1].split("\n\n", 1)[0]
    found = set()
    for line in table.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        methods = [m.strip() for m in match[1].split(",")]
        paths = re.findall(r"`([^`]+)`", match[2])
        found |= {(method, path) for method in methods for path in paths}
    return found


def served() -> set[tuple[str, str]]:
    """Every (method, path) of the app's routers, those left out of the OpenAPI document
    (the dashboard, `/metrics`, `HEAD`) too; not FastAPI's own (`/docs`, `/openapi.json`)."""
    found = set()
    for route in create_app().routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if not callable(contexts):
            continue
        for context in contexts():
            found |= {(method, context.path) for method in context.methods or ()}
    return found


def test_the_endpoint_table_lists_every_route_the_app_serves_and_no_other() -> None:
    table, app = documented(), served()

    assert sorted(app - table) == []
    assert sorted(table - app) == []
