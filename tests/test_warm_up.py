"""What is built at start so that the first batch does not wait for it.

The validating worker's warm-up (`activities.validation.warm_up`, run by
`worker.prepare_process`) must take the path a batch's file takes, the column path to ledger
rows, or the first batch still pays what the engine's first pass sets up. The API builds its
routers' routes as it starts (`api.app._build_routes`), which FastAPI builds on first use."""

from activities.recipients.rejections import Code
from activities.recipients.rows import RecipientRules, Tally, build_recipients, read_rows
from activities.validation import WARM_UP_FILE, WARM_UP_REQUEST, warm_up
from api.app import _build_routes, create_app
from workflows.contracts import ValidationLimits


def test_the_warm_up_takes_the_column_path_through_a_row_of_each_kind() -> None:
    tally = warm_up()

    # The outcomes the row path gives the same file: the column path took it whole.
    rules = RecipientRules.from_request(WARM_UP_REQUEST, ValidationLimits(), set())
    by_rows = Tally()
    for outcome in build_recipients(*read_rows(WARM_UP_FILE), rules):
        by_rows.count(outcome)
    assert tally == by_rows
    # A row of each kind: sent in GSM-7 and in UCS-2, a repeat skipped, a number not valid
    # and a blank one rejected, a blank row dropped.
    assert (tally.rows, tally.recipients, tally.skipped) == (10, 8, 1)
    assert tally.gsm7 > 0 and tally.ucs2 > 0
    assert [row.code for row in tally.first_rejected] == [Code.INVALID_NUMBER, Code.BLANK_NUMBER]


def test_the_api_builds_every_routers_routes_before_the_first_request() -> None:
    app = create_app()
    # FastAPI's included routers, which build their routes on the first request they match;
    # none if a FastAPI release builds them otherwise (then `_build_routes` does nothing).
    routers = [r for r in app.routes if hasattr(r, "effective_route_contexts")]
    assert routers
    assert all(vars(r)["_effective_candidates_version"] is None for r in routers)

    _build_routes(app)

    assert all(vars(r)["_effective_candidates_version"] is not None for r in routers)
