"""Temporal workflows: deterministic, side-effect free; they call activities by method, the
activity classes imported through the sandbox (`imports_passed_through`), never run in it.

Running workflows replay their histories on whatever code is deployed next, so changing the
commands a workflow issues (activities, timers, children, signals to them, search-attribute
upserts, continue-as-new: which, in what order) follows docs/WORKFLOWS.md:

1. The change goes behind `if workflow.patched("<workflow>-<what-changed>"):`, new code in the
   `if`, the code exactly as before in the `else`; an id is never reused.
2. Histories of each new path are added to tests/histories/ (`python -m tests.histories.record`);
   the existing ones stay, and `make test` replays them all (tests/test_replay.py).
3. Once no run started before that release is open, `workflow.deprecate_patch(<id>)` replaces
   the `if` (only the new code left); once no run started before the release with
   `deprecate_patch` is open, that call goes too.
4. Only then are the histories re-recorded, and tests/histories/previous/ refreshed with them.

A branch kept for results recorded by older code (not commands) is listed in docs/WORKFLOWS.md
with its id and when it may go.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # `WORKFLOWS` is built on first use, not with the package: the activities and the API
    # import `workflows.contracts`, and the workflow modules import the activity classes.
    if name == "WORKFLOWS":
        from workflows.batch import BatchWorkflow
        from workflows.chunk import ChunkWorkflow
        from workflows.click import ClickEventWorkflow
        from workflows.conversation import ConversationWorkflow

        return [BatchWorkflow, ChunkWorkflow, ConversationWorkflow, ClickEventWorkflow]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
