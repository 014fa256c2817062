"""Short links: following one (`GET /s/{code}`) counts the click and has the first click's
`click` event posted to the batch's status webhook by the worker, started by the first click
or, if that start failed, by a later one; a `HEAD` counts nothing."""

from datetime import timedelta

import asyncpg
import structlog
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.recipients.links import is_code
from settings import Settings
from store import links
from store.db import UNAVAILABLE
from workflows.contracts import (
    ACCOUNT_ID,
    BATCH_ID,
    CLICK_EVENT_WORKFLOW,
    ClickEventInput,
    click_event_workflow_id,
)

log = structlog.get_logger(__name__)

# A user agent is kept up to this many characters.
USER_AGENT_CHARS = 512
# How long a click waits for Temporal to start its event: the visitor's redirect waits too.
CLICK_START_TIMEOUT = timedelta(seconds=2)


async def follow(
    pool: asyncpg.Pool, temporal: Client, settings: Settings, code: str, user_agent: str | None
) -> str | None:
    """Where `code` leads, its click counted; None for a code that is no link."""
    if not is_code(code):
        return None
    click = await links.record_click(
        pool, code, None if user_agent is None else user_agent[:USER_AGENT_CHARS]
    )
    if click is None:
        return None
    if click.event_due:
        await _start_click_event(pool, temporal, settings, code, click)
    return click.url


async def destination(pool: asyncpg.Pool, code: str) -> str | None:
    """Where `code` leads, no click counted (a `HEAD`, as link previews send before a `GET`);
    None for a code that is no link."""
    return await links.link_url(pool, code) if is_code(code) else None


async def _start_click_event(
    pool: asyncpg.Pool, temporal: Client, settings: Settings, code: str, click: links.Click
) -> None:
    """Start the workflow that posts the first click, findable by its batch and account in
    Temporal, and record that it started. The visitor is redirected whatever happens here,
    so a failure to start it is logged, not raised: the link's next click starts it (one
    workflow per link, whichever click starts it, and the event is the first click's)."""
    try:
        await temporal.start_workflow(
            CLICK_EVENT_WORKFLOW,
            ClickEventInput(code=code),
            id=click_event_workflow_id(code),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            rpc_timeout=CLICK_START_TIMEOUT,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(BATCH_ID, str(click.batch_id)),
                    SearchAttributePair(ACCOUNT_ID, str(click.account_id)),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        pass
    except (RuntimeError, RPCError) as error:
        log.warning("click event not started", batch_id=str(click.batch_id), error=str(error))
        return
    try:
        await links.set_event_started(pool, code)
    except (asyncpg.PostgresError, *UNAVAILABLE) as error:
        # Started all the same: the next click finds it started, and notes it then.
        log.warning("click event start not noted", batch_id=str(click.batch_id), error=repr(error))
