"""Every retry policy the workflows give their activities, in one place.

A policy travels with each activity it schedules: changing one changes how running
batches retry from their next call, so values change here, deliberately, or not at all.
"""

from datetime import timedelta

from temporalio.common import RetryPolicy

from workflows.contracts import BatchNotFound

# Reads and writes of PostgreSQL: retried until the database is back.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
# Validating a file: an error other than PostgreSQL being unreachable is final from attempt
# VALIDATE_ATTEMPTS on (outages_uncounted, activities/outages.py), and the batch ends `failed`
# with a final event. The policy's own cap is far above it: a cap of 5 counted an outage's
# failed attempts too (a restart of 15 s ended a batch the API had accepted, with nothing
# sent), and riding the outage out inside an attempt (through_outages) only lasts
# OUTAGE_WAIT_SECONDS. The cap still ends attempts that end by timeout, which raise nothing
# (a file whose validation kills its worker every time), after 120 attempts: about three hours
# when each ends at its heartbeat timeout (a minute, and the backoff's 30 s), longer when a hung
# attempt heartbeats on to its 30 minutes.
VALIDATE_ATTEMPTS = 5
VALIDATE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=120,
)
# A slice of a batch; a deferring carrier sets its own, jittered, delays.
SLICE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[
        # The batch row or its ledger is gone: retrying cannot bring it back.
        BatchNotFound.__name__,
    ],
)
# A conversation message the carrier keeps deferring is failed after this many attempts
# (about a minute).
MESSAGE_ATTEMPTS = 6
MESSAGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=MESSAGE_ATTEMPTS,
)
# A conversation event's webhook post: a failed post names its own delay (the webhook retry
# schedule) and the activity settles the event after the schedule's last retry; the bound is
# for failures of another kind (the database), after which the event is logged and dropped.
EVENT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=50,
)
