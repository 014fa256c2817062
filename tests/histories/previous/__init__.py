"""The workflow code of the recorded release, kept as data for the upgrade test.

A copy of `workflows/` at commit 760f02c, the code the histories beside it were recorded from;
only its imports (this package instead of `workflows`) and this docstring differ.
docs/WORKFLOWS.md says when it is refreshed. Never imported by Herald itself.
"""

from tests.histories.previous.batch import BatchWorkflow
from tests.histories.previous.chunk import ChunkWorkflow
from tests.histories.previous.conversation import ConversationWorkflow

WORKFLOWS = [BatchWorkflow, ChunkWorkflow, ConversationWorkflow]
