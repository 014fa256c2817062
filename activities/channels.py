"""How a message goes to the carrier: its addresses on its channel, and the text sent with a
ledger row. The send and reconciliation both use these, so that reconciliation looks for the
very message the send made."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from activities.recipients.rows import content_placeholder


def carrier_address(number: str, channel: str) -> str:
    """Twilio addresses WhatsApp users and senders as `whatsapp:+E164`."""
    return f"whatsapp:{number}" if channel == "whatsapp" else number


@dataclass(frozen=True, kw_only=True)
class Channel:
    """How a batch's messages go: by SMS or WhatsApp, as text or as a content template."""

    channel: str = "sms"
    content_sid: str | None = None
    # A JSON object as a string, as Twilio takes it.
    content_variables: str | None = None

    @classmethod
    def of(cls, request: Mapping[str, Any]) -> "Channel":
        """The channel of a stored batch request."""
        settings_global: Mapping[str, Any] = request.get("global") or {}
        variables = settings_global.get("content_variables")
        return cls(
            channel=settings_global.get("channel") or "sms",
            content_sid=settings_global.get("content_sid"),
            content_variables=None if variables is None else json.dumps(variables),
        )

    def body(self, ledger_body: str) -> str:
        """The text sent with a ledger row: none when the template is the whole message."""
        if self.content_sid and ledger_body == content_placeholder(self.content_sid):
            return ""
        return ledger_body
