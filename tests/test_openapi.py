"""The OpenAPI document as tools use it: keys as security schemes, only the statuses the API
answers (never FastAPI's 422), readable operation ids, tags with descriptions, enums for
statuses, examples, and the status webhook in `webhooks`."""

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from activities import status_events
from api.app import create_app
from api.models import ClickEvent
from store.events import event_payload
from tests.support.stack import PUBLIC_ROUTES
from workflows.contracts import BatchCounts, StatusUpdate
from workflows.statuses import BatchStatus

SCHEMA = create_app().openapi()
COMPONENTS: dict[str, Any] = SCHEMA["components"]["schemas"]
OPERATIONS = [
    (method.upper(), path, operation)
    for path, operations in SCHEMA["paths"].items()
    for method, operation in operations.items()
]
WEBHOOKS = [
    (method.upper(), name, operation)
    for name, operations in SCHEMA.get("webhooks", {}).items()
    for method, operation in operations.items()
]


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = COMPONENTS[schema["$ref"].removeprefix("#/components/schemas/")]
    return schema


def models(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The named models a body is made of: an envelope's `data`, each member of a union, the
    items of a list."""
    for member in schema.get("anyOf", []):
        yield from models(member)
    if "items" in schema:
        yield from models(schema["items"])
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        model = resolve(schema)
        if name.startswith("Envelope_"):
            yield from models(model["properties"]["data"])
        else:
            yield name, model


def json_bodies(operation: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every JSON body of an operation, its request's and its replies', by where it is."""
    request = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if request:
        yield "request", request["schema"]
    for status, response in operation["responses"].items():
        content = response.get("content", {}).get("application/json")
        if content and content.get("schema"):
            yield status, content["schema"]


def test_no_operation_declares_a_422_nor_keeps_its_schema() -> None:
    declaring = [
        f"{method} {path}"
        for method, path, operation in OPERATIONS + WEBHOOKS
        if "422" in operation["responses"]
    ]

    assert declaring == []
    assert "HTTPValidationError" not in COMPONENTS
    assert "ValidationError" not in COMPONENTS


def test_every_operation_has_a_unique_snake_case_operation_id() -> None:
    ids = [operation.get("operationId", "") for _, _, operation in OPERATIONS + WEBHOOKS]

    assert [i for i in ids if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", i)] == []
    assert len(set(ids)) == len(ids)
    assert {"create_batch", "get_batch", "list_batches", "attach_file"} <= set(ids)
    assert {"mobivate_send_batch", "postman_send_batch"} <= set(ids)


def test_keys_are_security_schemes_and_every_keyed_operation_names_its_own() -> None:
    schemes = SCHEMA["components"]["securitySchemes"]
    keyed = {(method, path): op.get("security") for method, path, op in OPERATIONS}
    public = {route for route in PUBLIC_ROUTES if route in keyed}

    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "authorization",
        "description": schemes["ApiKey"]["description"],
    }
    assert schemes["BearerKey"]["type"] == "http"
    assert schemes["BearerKey"]["scheme"] == "bearer"
    assert {route: keyed[route] for route in public} == dict.fromkeys(public)
    for (method, path), security in keyed.items():
        if (method, path) in public:
            continue
        dialect = path.startswith(("/send/", "/campaigns/"))
        assert security == [{"BearerKey" if dialect else "ApiKey": []}], (method, path)
    # The key is no longer a plain header parameter, which OpenAPI tools ignore.
    assert not [
        (method, path)
        for method, path, op in OPERATIONS
        for param in op.get("parameters", [])
        if param["name"].lower() == "authorization"
    ]


def test_keyed_operations_declare_their_errors_in_the_envelope_they_answer_with() -> None:
    for method, path, operation in OPERATIONS:
        if (method, path) in PUBLIC_ROUTES:
            continue
        responses = operation["responses"]
        envelope = (
            "MobivateError"
            if path.startswith("/send/")
            else "PostmanError"
            if path.startswith("/campaigns/")
            else "ErrorEnvelope"
        )
        for status in ("400", "404", "429", "503"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{envelope}"}, (method, path, status)
    items = resolve(COMPONENTS["ErrorEnvelope"])["properties"]["errors"]
    assert resolve(items["items"])["required"] == ["error", "message"]


@pytest.mark.parametrize(
    ("model", "field", "enum"),
    [
        ("BatchSummary", "status", "BatchStatus"),
        ("BatchDetail", "status", "BatchStatus"),
        ("BatchEvent", "status", "BatchStatus"),
        ("StatusEvent", "status", "BatchStatus"),
        ("MessageRow", "status", "LedgerStatus"),
        ("ConversationSummary", "state", "ConversationStatus"),
    ],
)
def test_status_fields_are_enums(model: str, field: str, enum: str) -> None:
    assert COMPONENTS[model]["properties"][field] == {"$ref": f"#/components/schemas/{enum}"}
    assert "completed" in COMPONENTS["BatchStatus"]["enum"]
    assert "delivered" in COMPONENTS["LedgerStatus"]["enum"]


def test_every_json_request_and_reply_model_has_an_example() -> None:
    missing = sorted(
        {
            f"{method} {path} {where}: {name}"
            for method, path, operation in OPERATIONS + WEBHOOKS
            for where, body in json_bodies(operation)
            for name, model in models(body)
            if not model.get("examples")
        }
    )

    assert missing == []


def test_every_tag_is_described() -> None:
    described = {tag["name"]: tag.get("description") for tag in SCHEMA["tags"]}
    used = {tag for _, _, operation in OPERATIONS for tag in operation.get("tags", [])}

    assert used <= set(described)
    assert all(described[tag] for tag in used)


def test_the_status_webhook_is_in_the_webhooks_section() -> None:
    event = SCHEMA["webhooks"]["batch-status"]["post"]
    body = resolve(event["requestBody"]["content"]["application/json"]["schema"])

    assert body["properties"]["status"] == {"$ref": "#/components/schemas/BatchStatus"}
    assert {"batch_id", "workflow_id", "status", "timestamp"} <= set(body["required"])
    assert body["examples"][0]["status"] == "completed_partial"


def test_the_status_webhooks_schema_names_every_field_an_event_can_have() -> None:
    """An event with every optional part (a message, metadata, a code, error codes, the final
    counts, rows waiting for their window), as the worker records and posts it: each of its
    fields is in the `batch-status` webhook's schema."""
    update = StatusUpdate(
        batch_id="b",
        workflow_id="w",
        event_seq=1,
        status=BatchStatus.PAUSED,
        message="Requested: 1. Validated: 1.",
        code="carrier_error_rate",
        reason="the carrier refused",
        counts=BatchCounts(total=1, failed=1),
        error_codes={"21612": 1},
    )
    batch = {"request": {"global": {"metadata": {"campaign": "spring"}}}}

    payload = event_payload(batch, update, waiting_for_window=0)

    [(_, _, operation)] = [w for w in WEBHOOKS if w[1] == "batch-status"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert set(payload) - set(resolve(schema)["properties"]) == set()


def test_a_click_event_as_posted_follows_the_click_webhooks_schema() -> None:
    # Only `batch-status` was declared, whose `status` enum has no `click`: a receiver built
    # from the schema refused the click events of a batch with `shorten_urls`.
    click = {
        "batch_id": uuid.uuid4(),
        "workflow_id": "sms-batch-x",
        "seq": 3,
        "row_number": 3,
        "to_number": "+14155552671",
        "url": "https://example.com/sale",
        "first_clicked_at": datetime.now(UTC),
        "first_user_agent": "Mozilla/5.0",
        "reference": "order-1",
        "request": {"global": {"metadata": {"campaign": "spring"}}},
    }

    payload = json.loads(json.dumps(status_events._click_payload(click)))

    [(_, _, operation)] = [w for w in WEBHOOKS if w[1] == "batch-click"]
    schema = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    assert set(payload) <= set(schema["properties"])
    assert ClickEvent.model_validate(payload).status == "click"
