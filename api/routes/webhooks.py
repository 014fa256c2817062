"""The account's status-webhook signing secret: its state, and rotation (the only time the
secret is shown)."""

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import AppSettings, Pool, WebhooksRead, WebhooksWrite
from api.models import Envelope, example
from api.services import webhook_secrets as service

router = APIRouter(tags=["webhooks"])


class WebhookSecretState(BaseModel):
    model_config = example({"created_at": "2026-03-02T10:15:00Z", "previous_valid_until": None})

    created_at: datetime | None = Field(
        description="When the current secret was made; null before the first delivery or rotation."
    )
    previous_valid_until: datetime | None = Field(
        description="Until when deliveries also carry a signature with the previous secret."
    )


class WebhookSecret(WebhookSecretState):
    model_config = example(
        {
            "created_at": "2026-03-02T10:15:00Z",
            "previous_valid_until": "2026-03-03T10:15:00Z",
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        }
    )

    secret: str = Field(description="`whsec_...`: shown only in this reply; store it now.")


@router.get("/v1/webhooks/secret", response_model=Envelope[WebhookSecretState])
async def secret_state(account_id: WebhooksRead, pool: Pool) -> dict:
    """The secret's dates, never the secret: it is shown once, by `rotate`."""
    row = await service.secret_state(pool, account_id)
    return {
        "data": WebhookSecretState(
            created_at=row["webhook_secret_created_at"],
            previous_valid_until=row["webhook_previous_until"],
        )
    }


@router.post("/v1/webhooks/secret/rotate", response_model=Envelope[WebhookSecret])
async def rotate_secret(account_id: WebhooksWrite, pool: Pool, settings: AppSettings) -> dict:
    """Make a new signing secret and return it, this once. Deliveries carry signatures with
    both the new and the previous secret for `webhook_secret_overlap_hours`."""
    row = await service.rotate_secret(pool, settings, account_id)
    return {
        "data": WebhookSecret(
            secret=row["webhook_secret"],
            created_at=row["webhook_secret_created_at"],
            previous_valid_until=row["webhook_previous_until"],
        )
    }
