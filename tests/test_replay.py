"""The current workflow code replays every history recorded in tests/histories/: a change that
would break a batch or a conversation running through an upgrade fails here, without a stack.
docs/WORKFLOWS.md says how to change workflow code so that this keeps passing."""

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows import WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"
RECORDED = sorted(HISTORIES.glob("*/*.json"))


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
