"""Workers of a test's own, as separate processes: to crash, stop or upgrade them."""

import os
import sys
import uuid
from pathlib import Path

from deploy.local.processes import ManagedProcess
from settings import Settings

# A dead worker's slices are retried after this, and its workflows taken over after that,
# rather than after the defaults' 30 s and 10 s.
HEARTBEAT_TIMEOUT_SECONDS = 3.0
STICKY_TIMEOUT_SECONDS = 1.0
# Reconciliation waits this (plus a margin) after a row last changed before it asks the
# carrier: shorter than the default 30 s, and still above the tests' slowest answers.
CARRIER_TIMEOUT_SECONDS = 3.0


def crash_settings(settings: Settings, **changes: object) -> Settings:
    """Settings for a stack whose batches only the workers started here run."""
    return settings.model_copy(
        update={
            "task_queue": f"herald-crash-{uuid.uuid4().hex[:8]}",
            "send_heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS,
            "carrier_timeout_seconds": CARRIER_TIMEOUT_SECONDS,
            **changes,
        }
    )


def worker_process(settings: Settings, log_path: Path) -> ManagedProcess:
    """`python -m worker`, as the local stack runs it, configured by environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        {
            "HERALD_DATABASE_URL": settings.dsn,
            "HERALD_TEMPORAL_ADDRESS": settings.temporal_target,
            "HERALD_TWILIO_API_URL": settings.carrier_url,
            "HERALD_TWILIO_AUTH_TOKEN": settings.twilio_auth_token.get_secret_value(),
            "HERALD_TASK_QUEUE": settings.task_queue,
            "HERALD_SEND_CONCURRENCY": str(settings.send_concurrency),
            "HERALD_STICKY_TIMEOUT_SECONDS": str(STICKY_TIMEOUT_SECONDS),
            "HERALD_CARRIER_TIMEOUT_SECONDS": str(settings.carrier_timeout_seconds),
            "HERALD_RECONCILE_MARGIN_SECONDS": str(settings.reconcile_margin_seconds),
            "HERALD_API_PORT": str(settings.api_port),
            "HERALD_LOG_LEVEL": "WARNING",
            "HERALD_ALLOW_LOOPBACK_WEBHOOKS": "true",
        }
    )
    return ManagedProcess("worker", [sys.executable, "-m", "worker"], log_path, env)
