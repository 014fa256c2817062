"""What is built at start so that the first batch does not wait for it.

The validating worker's warm-up (`activities.validation.warm_up`, run by
`worker.prepare_process`) must take the path a batch's file takes, the column path to ledger
rows, or the first batch still pays what the engine's first pass sets up. The API builds its
routers' routes as it starts (`api.app._build_routes`), which FastAPI builds on first use."""

from activities.validation import warm_up
from api.app import _build_routes, create_app


def test_the_warm_up_validates_every_row_of_its_file_into_the_ledger() -> None:
    tally = warm_up()

    assert (tally.rows, tally.recipients, tally.rejected, tally.skipped) == (8, 8, 0, 0)
    assert tally.segments == 8


def test_the_api_builds_every_routers_routes_before_the_first_request() -> None:
    app = create_app()
    # FastAPI's included routers, which build their routes on the first request they match;
    # none if a FastAPI release builds them otherwise (then `_build_routes` does nothing).
    routers = [r for r in app.routes if hasattr(r, "effective_route_contexts")]
    assert routers
    assert all(vars(r)["_effective_candidates_version"] is None for r in routers)

    _build_routes(app)

    assert all(vars(r)["_effective_candidates_version"] is not None for r in routers)
