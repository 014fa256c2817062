"""What every activity class of the worker works with, shared by one process."""

from abc import ABC, abstractmethod
from typing import Any

import asyncpg
import httpx

from activities.providers.twilio import TwilioCarrier
from metrics import WorkerMetrics
from settings import Settings


class WorkerResources(ABC):
    """The worker's PostgreSQL pool, carrier client, webhook HTTP client, settings and
    metrics; the activity classes take them once, at start."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        carrier: TwilioCarrier,
        http: httpx.AsyncClient,
        settings: Settings,
        metrics: WorkerMetrics,
    ) -> None:
        self._pool = pool
        self._carrier = carrier
        self._http = http
        self._settings = settings
        self._metrics = metrics

    @abstractmethod
    def registered(self) -> list[Any]:
        """The bound activity methods, for the worker to register."""
