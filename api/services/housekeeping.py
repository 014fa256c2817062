"""Every API process prunes what Herald keeps only for a while (store.housekeeping) and ends
the batches no workflow will ever move on (`end_unstarted_batches`): at its start, then about
once an hour. Several processes doing so at once delete each row, and end each batch, once."""

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from settings import Settings
from store import batches, events, housekeeping
from store.db import UNAVAILABLE
from workflows.contracts import BatchCounts, StatusUpdate
from workflows.statuses import BatchStatus

log = structlog.get_logger(__name__)

PRUNE_EVERY_SECONDS = 3600.0
# After a database failure.
RETRY_SECONDS = 60.0
# How long a batch stays `queued` with no workflow before it is ended as never started.
# `start_batch` starts the workflow within seconds of recording the batch (a few reads and
# one start, or TEMPORAL_UNAVAILABLE); a batch still without one minutes later was left by an
# API process that stopped in between, and no request in flight is about to start it.
UNSTARTED_AFTER = timedelta(minutes=10)
UNSTARTED_REASON = "the API stopped before starting it; nothing was sent"
# A Temporal that does not answer holds up only this pass, not the pruning of the next.
DESCRIBE_TIMEOUT = timedelta(seconds=10)


async def keep_house(pool: asyncpg.Pool, temporal: Client, settings: Settings) -> None:
    """Prune, and end unstarted batches, until cancelled."""
    unused_files_after = timedelta(days=settings.unused_file_days)
    while True:
        try:
            pruned = await housekeeping.prune(pool, unused_files_after)
            ended = await end_unstarted_batches(pool, temporal)
        except (asyncpg.PostgresError, *UNAVAILABLE) as error:
            log.warning("housekeeping failed; retrying", error=repr(error))
            await asyncio.sleep(RETRY_SECONDS)
            continue
        if any(dataclasses.astuple(pruned)):
            log.info("pruned", **dataclasses.asdict(pruned))
        if ended:
            log.warning("unstarted batches ended", batch_ids=[str(b) for b in ended])
        await asyncio.sleep(PRUNE_EVERY_SECONDS)


async def end_unstarted_batches(pool: asyncpg.Pool, temporal: Client) -> list[uuid.UUID]:
    """End as `failed`, code `not_started`, each batch left `queued` for UNSTARTED_AFTER
    whose workflow Temporal does not have (`batches.unstarted_batches`), its final event in
    its log; the ids ended. A batch whose workflow exists, running or closed, is left to it.
    The request of a file's batch starts it still, as after TEMPORAL_UNAVAILABLE
    (`start_batch`). While Temporal cannot be asked, nothing is ended."""
    ended: list[uuid.UUID] = []
    for batch in await batches.unstarted_batches(pool, UNSTARTED_AFTER):
        try:
            await temporal.get_workflow_handle(batch["workflow_id"]).describe(
                rpc_timeout=DESCRIBE_TIMEOUT
            )
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:
                log.warning("unstarted batches not ended: Temporal failed", error=str(error))
                return ended
        except RuntimeError as error:
            log.warning("unstarted batches not ended: Temporal unreachable", error=str(error))
            return ended
        else:
            continue
        if await batches.end_unstarted(
            pool,
            batch["id"],
            older_than=UNSTARTED_AFTER,
            code=batches.NOT_STARTED,
            reason=UNSTARTED_REASON,
            event=_final_event(batch),
        ):
            ended.append(batch["id"])
    return ended


def _final_event(batch: dict[str, Any]) -> dict[str, Any]:
    """The payload of the final event, as the workflow's own (`record_status`), counting no
    message: none was sent."""
    update = StatusUpdate(
        batch_id=str(batch["id"]),
        workflow_id=batch["workflow_id"],
        event_seq=1,
        status=BatchStatus.FAILED,
        code=batches.NOT_STARTED,
        reason=UNSTARTED_REASON,
        counts=BatchCounts(),
    )
    waiting = 0 if batch["request"].get("send_window") else None
    return events.event_payload(batch, update, waiting_for_window=waiting)
