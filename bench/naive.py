"""The naive baseline: one workflow, one activity per message, no chunking, no ledger.

It is deliberately generous to the baseline: its activity only sends (no database write),
so the gap it shows is Temporal's per-activity price alone.
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from temporalio import activity, workflow


@dataclass(kw_only=True)
class NaiveInput:
    recipients: list[str]
    agent_number: str
    body: str


@dataclass(kw_only=True)
class SendOneInput:
    to: str
    from_: str
    body: str


class Sender(Protocol):
    async def send(
        self, *, to: str, from_: str, body: str, status_callback: str | None
    ) -> object: ...


@workflow.defn
class NaiveBatchWorkflow:
    @workflow.run
    async def run(self, input: NaiveInput) -> int:
        sends = [
            workflow.execute_activity(
                "naive_send_one",
                SendOneInput(to=to, from_=input.agent_number, body=input.body),
                start_to_close_timeout=timedelta(seconds=60),
            )
            for to in input.recipients
        ]
        return len(await asyncio.gather(*sends))


class NaiveActivities:
    def __init__(self, carrier: Sender) -> None:
        self._carrier = carrier

    @activity.defn
    async def naive_send_one(self, input: SendOneInput) -> None:
        await self._carrier.send(
            to=input.to, from_=input.from_, body=input.body, status_callback=None
        )
