"""The worker's activity interceptor that binds an activity's context to its log lines; apart
from logs.py so that the API, which has no worker, does not load temporalio's worker."""

from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)


class LogContext(Interceptor):
    """Binds `activity`, `workflow_id` and (when its input has one) `batch_id` for every
    structlog line an activity writes."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLogContext(next)


class _ActivityLogContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        batch_id = getattr(input.args[0], "batch_id", None) if input.args else None
        context: dict[str, Any] = {"activity": info.activity_type, "workflow_id": info.workflow_id}
        if batch_id is not None:
            context["batch_id"] = str(batch_id)
        # Each activity runs in a task of its own: the binding ends with it.
        with structlog.contextvars.bound_contextvars(**context):
            return await self.next.execute_activity(input)
