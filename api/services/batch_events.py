"""A batch's events as a stream of server-sent events."""

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from temporalio.client import Client, WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition
from temporalio.service import RPCError

from api.services.batches import batch_or_404
from store import accounts, events
from store.accounts import KeyGrant
from workflows.contracts import BatchProgress
from workflows.statuses import FINAL_BATCH_STATUSES

SSE_POLL_SECONDS = 1.0
# A stream with nothing to say (no new event, and no progress: its workflow not answering
# queries, no worker running, or not started) sends a comment this often, so that a client's
# read timeout does not take it for a dead connection.
KEEP_ALIVE_SECONDS = 15.0
# Polls in a row that find the batch's newest run closed while the batch has not ended before
# its stream ends: two, a second apart, so that a retry's run about to start is not taken for
# one that ended.
CLOSED_POLLS = 2


async def stream_events(
    pool: asyncpg.Pool,
    temporal: Client,
    key: KeyGrant,
    batch_id: str,
    after_seq: int,
) -> AsyncIterator[str]:
    """Server-sent events: each lifecycle event as it is recorded, `progress` about once a
    second while the batch runs, and the end of the stream after its final event (the newest
    run's, for a batch retried), once the key that opened it is revoked, or once its run has
    closed with no final event (terminated through Temporal: a retry runs it again)."""
    account_id = key.account_id
    batch = await batch_or_404(pool, account_id, batch_id)
    handle = temporal.get_workflow_handle(batch["workflow_id"])

    async def stream() -> AsyncIterator[str]:
        last = after_seq
        said = time.monotonic()
        closed = 0
        while True:
            recorded = await events.list_events(pool, account_id, batch["id"], after_seq=last)
            for event in recorded:
                last = event["seq"]
                said = time.monotonic()
                yield _sse("status", event["payload"], event_id=last)
            # The batch's row is read too: a retry makes a finished batch run again, and until
            # its new run records an event the newest one is still the last run's final one.
            status, newest = await events.stream_position(pool, batch["id"])
            if status in FINAL_BATCH_STATUSES and (
                newest is None  # ended with no event: its workflow never started
                or (newest[1] in FINAL_BATCH_STATUSES and last >= newest[0])
            ):
                return
            if not await accounts.key_is_active(pool, key.key_id):
                return
            try:
                # Not answered by a run that has closed: a terminated run's last state, asked
                # again each second, was progress that never moved, for good.
                progress = await handle.query(
                    "progress",
                    result_type=BatchProgress,
                    reject_condition=QueryRejectCondition.NOT_OPEN,
                )
                closed = 0
            except WorkflowQueryRejectedError:
                # A run that ended recorded its final event first: the next poll sends it.
                closed += 1
                if closed >= CLOSED_POLLS:
                    return
                progress = None
            except (RPCError, WorkflowQueryFailedError, RuntimeError):
                progress = None
            if progress is not None:
                said = time.monotonic()
                yield _sse("progress", dataclasses.asdict(progress))
            elif time.monotonic() - said >= KEEP_ALIVE_SECONDS:
                said = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(SSE_POLL_SECONDS)

    return stream()


def _sse(event: str, data: dict[str, Any], *, event_id: int | None = None) -> str:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"
