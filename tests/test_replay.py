"""The current workflow code replays every history recorded in tests/histories/: a change that
would break a batch or a conversation running through an upgrade fails here, without a stack.
docs/WORKFLOWS.md says how to change workflow code so that this keeps passing."""

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows import WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"
RECORDED = sorted(HISTORIES.glob("*/*.json"))
# How the SDK encodes an activity's `None` result.
NULL_ENCODING = base64.b64encode(b"binary/null").decode()


def started(path: Path) -> dict[str, Any]:
    """The attributes of the history's first event: its workflow's id, type and input."""
    return json.loads(path.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]


def recorded_history(path: Path) -> WorkflowHistory:
    # The workflow id as recorded: a batch derives its chunks' ids from it.
    return WorkflowHistory.from_json(started(path)["workflowId"], path.read_text())


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: str(path.relative_to(HISTORIES)))
async def test_the_current_code_replays_the_recorded_history(path: Path) -> None:
    await Replayer(workflows=WORKFLOWS).replay_workflow(recorded_history(path))


def test_every_workflow_type_has_recorded_histories() -> None:
    recorded = {started(path)["workflowType"]["name"] for path in RECORDED}

    assert recorded == {workflow.__name__ for workflow in WORKFLOWS}


def before_webhook_retries(path: Path) -> WorkflowHistory:
    """A batch history as runs started before webhook retries (commit bf78376) recorded it:
    the same commands, but `deliver_status_events` returned nothing (a `null` payload)."""
    recorded = json.loads(path.read_text())
    delivering = {
        event["eventId"]
        for event in recorded["events"]
        if event.get("activityTaskScheduledEventAttributes", {}).get("activityType", {}).get("name")
        == "deliver_status_events"
    }
    for event in recorded["events"]:
        completed = event.get("activityTaskCompletedEventAttributes")
        if completed and completed["scheduledEventId"] in delivering:
            completed["result"] = {"payloads": [{"metadata": {"encoding": NULL_ENCODING}}]}
    return WorkflowHistory.from_json(started(path)["workflowId"], recorded)


async def test_a_batch_started_before_webhook_retries_still_replays() -> None:
    """The compatibility branch `batch-deliver-events-result` (docs/WORKFLOWS.md)."""
    history = before_webhook_retries(HISTORIES / "batch" / "plain.json")

    await Replayer(workflows=WORKFLOWS).replay_workflow(history)
