"""A batch request's recipient options mean the same to the API and to validation."""

import itertools

import pytest

from activities.recipients.rows import RecipientRules
from api.models import BatchRequest
from workflows.contracts import ValidationLimits, ValidationOptions


@pytest.mark.parametrize(
    ("exclude_duplicates", "exclude_opt_outs", "strict"),
    list(itertools.product([False, True, None], repeat=3)),
)
def test_stored_request_gives_the_options_the_api_accepted(
    exclude_duplicates: bool | None, exclude_opt_outs: bool | None, strict: bool | None
) -> None:
    given = {
        "exclude_duplicates": exclude_duplicates,
        "exclude_opt_outs": exclude_opt_outs,
        "strict": strict,
    }
    body = BatchRequest.model_validate(
        {
            "file_id": "f",
            "global": {"agent_number": "+15005550006", "agent_message": "Hi {{name}}"},
            **{name: value for name, value in given.items() if value is not None},
        }
    )
    # As api/services/batches.py stores it: options at their defaults are left out.
    stored = body.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    options = ValidationOptions.from_request(stored)
    assert options == ValidationOptions(
        exclude_duplicates=body.exclude_duplicates,
        exclude_opt_outs=body.exclude_opt_outs,
        strict=body.strict,
    )
    rules = RecipientRules.from_request(stored, ValidationLimits(max_rows=7), frozenset())
    assert (rules.max_rows, rules.exclude_duplicates) == (7, body.exclude_duplicates)
    assert rules.agent_message == "Hi {{name}}"
