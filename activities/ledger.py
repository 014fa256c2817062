"""Whole-ledger steps of a batch: close it with every row terminal, reopen rows to retry."""

import uuid
from typing import Any

from temporalio import activity

from activities.resources import WorkerResources
from store import batches, messages
from workflows.contracts import (
    BatchCounts,
    FinishInput,
    ReopenInput,
    ReopenResult,
    RunningBatchesInput,
)
from workflows.statuses import LedgerStatus


class LedgerActivities(WorkerResources):
    """Closes and reopens a batch's ledger."""

    @activity.defn
    async def finish_ledger(self, input: FinishInput) -> BatchCounts:
        """Give every row a terminal state, then count them for the final event."""
        batch_id = uuid.UUID(input.batch_id)
        await messages.close_ledger(self._pool, batch_id, pending_as=input.close_pending_as)
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        by_status = await messages.count_by_status(self._pool, batch_id)
        return BatchCounts(
            total=batch["rows_total"] or 0,
            successful=by_status.get(LedgerStatus.SENT, 0)
            + by_status.get(LedgerStatus.DELIVERED, 0),
            failed=by_status.get(LedgerStatus.FAILED, 0)
            + by_status.get(LedgerStatus.UNDELIVERED, 0),
            skipped=by_status.get(LedgerStatus.SKIPPED, 0) + (batch["rejected"] or 0),
            cancelled=by_status.get(LedgerStatus.CANCELLED, 0),
            uncertain=by_status.get(LedgerStatus.UNCERTAIN, 0),
            expired=by_status.get(LedgerStatus.EXPIRED, 0),
        )

    @activity.defn
    async def reopen_rows(self, input: ReopenInput) -> ReopenResult:
        batch_id = uuid.UUID(input.batch_id)
        reopened = await messages.reopen(
            self._pool, batch_id, input.statuses, attempts_below=input.attempts_below
        )
        batch = await batches.batch_for_workflow(self._pool, batch_id)
        return ReopenResult(
            reopened=reopened,
            rows_total=batch["rows_total"] or 0,
            recipients=batch["recipients"] or 0,
        )

    @activity.defn
    async def running_batches(self, input: RunningBatchesInput) -> list[str]:
        """The ids of the account's other batches still running, for a batch that met an
        account-wide carrier failure to pause them."""
        found = await batches.running_batch_ids(
            self._pool, uuid.UUID(input.account_id), but=uuid.UUID(input.batch_id)
        )
        return [str(batch_id) for batch_id in found]

    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
        return [self.finish_ledger, self.reopen_rows, self.running_batches]
