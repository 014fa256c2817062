"""Request and reply shapes of campaigns, `/v1/campaigns`."""

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from api.models import RequestBody, example


class Language(StrEnum):
    """The languages a campaign may have a template in (the Postman dialect's)."""

    ENGLISH = "english"
    CHINESE = "chinese"
    MALAY = "malay"
    TAMIL = "tamil"


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
        description="The message per language. `{{name}}` parameters: lowercase letters,"
        " digits and `_`; or the single parameter `{{body}}`. Every template uses the same"
        " parameters.",
    )


class CampaignUpdate(RequestBody):
    model_config = example({"templates": {"english": "Hello {{name}}!"}})

    name: str | None = Field(None, min_length=1, max_length=200)
    sender: str | None = Field(None, min_length=1)
    templates: dict[Language, str] | None = Field(
        None, min_length=1, description="Replaces all the templates."
    )


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
    created_at: datetime
    updated_at: datetime
