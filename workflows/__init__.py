"""Temporal workflows: deterministic, side-effect free; activities are called by name.

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

from workflows.batch import BatchWorkflow
from workflows.chunk import ChunkWorkflow
from workflows.conversation import ConversationWorkflow

WORKFLOWS = [BatchWorkflow, ChunkWorkflow, ConversationWorkflow]
