"""Request and reply shapes of campaigns, `/v1/campaigns`."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, Field, IPvAnyNetwork, model_validator
from pydantic_core import PydanticCustomError

from api.models import RequestBody, example
from api.pagination import CursorPage


class Language(StrEnum):
    """The languages a campaign may have a template in (the Postman dialect's)."""

    ENGLISH = "english"
    CHINESE = "chinese"
    MALAY = "malay"
    TAMIL = "tamil"


def _text(value: Any) -> Any:
    """An address is written as text: a number (or `true`) is not one."""
    if not isinstance(value, str):
        raise ValueError("an address or network is a string, like '198.51.100.0/24'")
    return value


# An address (`203.0.113.7`, a network of one) or a network in CIDR form, IPv4 or IPv6.
Network = Annotated[IPvAnyNetwork, BeforeValidator(_text)]


class CampaignRequest(RequestBody):
    model_config = example(
        {
            "name": "spring",
            "sender": "+15005550006",
            "templates": {"english": "Hi {{name}}!", "malay": "Hai {{name}}!"},
        }
    )

    name: str = Field(min_length=1, max_length=200)
    sender: str = Field(min_length=1, description="A sender number registered by this account.")
    templates: dict[Language, str] = Field(
        min_length=1,
        description="The message per language, each at most `HERALD_MAX_MESSAGE_CHARS`"
        " characters. `{{name}}` parameters: lowercase letters, digits and `_`; or the single"
        " parameter `{{body}}`. Every template uses the same parameters.",
    )
    allowed_ips: list[Network] | None = Field(
        None,
        max_length=100,
        description="The addresses the Postman dialect's requests for this campaign may come"
        " from: addresses or networks (`203.0.113.7`, `198.51.100.0/24`); others are refused"
        " with `401 invalid_ip_address_error`. Unset: any address.",
    )


class CampaignUpdate(RequestBody):
    model_config = example({"templates": {"english": "Hello {{name}}!"}})

    name: str | None = Field(None, min_length=1, max_length=200)
    sender: str | None = Field(None, min_length=1)
    templates: dict[Language, str] | None = Field(
        None, min_length=1, description="Replaces all the templates."
    )
    allowed_ips: list[Network] | None = Field(
        None,
        max_length=100,
        description="Replaces the allow-list; `[]` refuses every address. Send `null` (or"
        " leave it out) to keep it; clear it with `clear_allowed_ips`.",
    )
    clear_allowed_ips: bool = Field(
        False, description="Let any address through again; not with `allowed_ips`."
    )

    @model_validator(mode="after")
    def _one_allow_list_change(self) -> Self:
        if self.allowed_ips is not None and self.clear_allowed_ips:
            raise PydanticCustomError(
                "allowed_ips_and_clear",
                "give allowed_ips or clear_allowed_ips, not both",
            )
        return self


class Campaign(BaseModel):
    model_config = example(
        {
            "id": "c0b6f3c1-5d0a-4c47-9a51-2f1c8e7d9b10",
            "name": "spring",
            "sender": "+15005550006",
            "templates": {"english": "Hi {{name}}!"},
            "parameters": ["name"],
            "created_at": "2026-03-02T10:15:00Z",
            "updated_at": "2026-03-02T10:15:00Z",
        }
    )

    id: str
    name: str
    sender: str
    templates: dict[Language, str]
    parameters: list[str] = Field(
        description="The templates' parameters: a batch file's columns after `recipient` and"
        " `language`."
    )
    allowed_ips: list[IPvAnyNetwork] | None = Field(
        description="The addresses the Postman dialect's requests may come from; null: any."
    )
    created_at: datetime
    updated_at: datetime


class CampaignList(CursorPage):
    model_config = example({"campaigns": [], "next_cursor": None})

    campaigns: list[Campaign]
