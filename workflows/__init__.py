"""Temporal workflows: deterministic, side-effect free; activities are called by name."""

from workflows.batch import BatchWorkflow
from workflows.chunk import ChunkWorkflow
from workflows.conversation import ConversationWorkflow

WORKFLOWS = [BatchWorkflow, ChunkWorkflow, ConversationWorkflow]
