"""Temporal workflows: deterministic, side-effect free; they call activities by method, the
activity classes imported through the sandbox (`imports_passed_through`), never run in it."""

from typing import Any


def __getattr__(name: str) -> Any:
    # `WORKFLOWS` is built on first use, not with the package: the activities and the API
    # import `workflows.contracts`, and the workflow modules import the activity classes.
    if name == "WORKFLOWS":
        from workflows.batch import BatchWorkflow
        from workflows.chunk import ChunkWorkflow
        from workflows.conversation import ConversationWorkflow

        return [BatchWorkflow, ChunkWorkflow, ConversationWorkflow]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
