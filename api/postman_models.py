"""Reply shapes of the Postman dialect: batch send, the batch's messages, and its retry."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from api.models import example


class PostmanModel(BaseModel):
    """Fields are camelCase on the wire, as the dialect writes them."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class PostmanBatchAccepted(PostmanModel):
    model_config = example({"isValid": True, "batchId": "0b6f3c1e-5d0a-4c47-9a51-2f1c8e7d9b10"})

    is_valid: Literal[True] = True
    batch_id: str = Field(description="The batch id, the same in Herald's own API.")


class PostmanErrorDetail(PostmanModel):
    message: str
    row: int | None = Field(
        None,
        description="The file's row, 1 for the first after the header; 0 for the file as a"
        " whole (a file of no rows).",
    )
    column: str | None = Field(None, description="The column the problem is in, if one.")


class PostmanErrorBody(PostmanModel):
    code: str = Field(
        description="`parameter_invalid`, `invalid_api_key_provided`, `too_many_requests`;"
        " otherwise Herald's code in lower case."
    )
    message: str
    herald_code: str = Field(description="Herald's own code, as its other APIs give it.")
    details: list[PostmanErrorDetail] | None = Field(
        None, description="Each problem: for a refused file, every row in error (first 100)."
    )


class PostmanError(PostmanModel):
    model_config = example(
        {
            "error": {
                "code": "parameter_invalid",
                "message": "1 row(s) in error; nothing was sent. Fix them all and upload the"
                " file again",
                "heraldCode": "INVALID_ROWS",
                "details": [
                    {"message": "not a valid phone number", "row": 2, "column": "recipient"}
                ],
            }
        }
    )

    error: PostmanErrorBody


# Postman's message statuses (`latestStatus`), as Herald reads its ledger into them.
LatestStatus = Literal["enqueued", "sending", "sent", "success", "failure"]


class PostmanMessage(PostmanModel):
    """A ledger row as Postman's message object: `values` and `language` are the row's
    parameters and language as uploaded (null for a batch made with Herald's own API)."""

    id: str = Field(description="`{batchId}:{seq}`, the ledger row's key.")
    created_at: datetime
    updated_at: datetime
    recipient: str = Field(description="Digits with the country code, without `+`.")
    values: dict[str, str] | None = Field(
        default=None, description="The row's template parameters, as uploaded."
    )
    language: str | None = Field(
        default=None, description="The language whose template the row was sent in."
    )
    full_message: str = Field(description="The message as sent: the template rendered.")
    latest_status: LatestStatus
    num_attempts: int = Field(description="How many times the message was sent to the carrier.")
    campaign_id: str
    batch_id: str
    herald_status: str = Field(description="The ledger row's own status, finer than Postman's.")
    error_code: str | None = Field(description="The carrier's or Herald's code of a failure.")
    error_message: str | None


class PostmanPageData(PostmanModel):
    start_cursor: str | None = Field(description="Pass as `before` for the previous page.")
    end_cursor: str | None = Field(description="Pass as `after` for the next page.")
    has_next_page: bool
    has_previous_page: bool


class PostmanMessagePage(PostmanModel):
    model_config = example(
        {
            "data": [],
            "pageData": {
                "startCursor": None,
                "endCursor": None,
                "hasNextPage": False,
                "hasPreviousPage": False,
            },
        }
    )

    data: list[PostmanMessage]
    page_data: PostmanPageData
