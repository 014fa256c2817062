"""The Postman (gov.sg v2) dialect's documented batch-send data, held as data.

Copied from Postman's public documentation of `POST /campaigns/:campaignId/batch/messages`
("POST - Batch send": the CSV example, and the documented error codes and messages), as kept
in the project's shared `contracts/postman-batch-send.md`, and of
`POST /campaigns/:campaignId/batch/:batchId/retry` ("POST - Retry batch send": its error
codes and messages), from the Postman v2 guide's API reference
(postman-v2.guides.gov.sg/technical-users-api/api-reference/post-retry-batch-send).
"""

from activities.recipients.columns import loaded_ledger

EXAMPLE_CSV = (
    "recipient,language,recipient_name,topic\n"
    "6599999999,english,Emily Yeo,passport application #12345F\n"
    "6599999998,chinese,James Tan,passport application #67890A\n"
)

FILE_TOO_LARGE = {"code": "parameter_invalid", "message": "File too large, max file size is 40MB"}
HEADER_MISMATCH = {
    "code": "parameter_invalid",
    "message": "Validation failed (expected type is object)",
}
INVALID_API_KEY = {
    "code": "invalid_api_key_provided",
    "message": "The API key provided is invalid.",
}
TOO_MANY_REQUESTS = {"code": "too_many_requests", "message": "Too many requests"}
INVALID_IP_ADDRESS = {
    "code": "invalid_ip_address_error",
    "message": "The IP address used for this request is invalid.",
}
BATCH_NOT_RETRYABLE = {
    "code": "batch_not_found_or_is_not_retryable",
    "message": "Batch cannot be retried as it does not exist or is currently not retryable.",
}
NO_FAILED_MESSAGES = {
    "code": "no_failed_batch_messages_to_retry",
    "message": "Batch cannot be retried as either all messages are successful or all failed"
    " messages have exceeded the maximum number of attempts.",
}

# Not Postman's: templates of a test campaign for the example's parameters, in two languages.
TEMPLATES = {
    "english": "Dear {{recipient_name}}, your {{topic}} is ready.",
    "chinese": "{{recipient_name}} 您的{{topic}}已准备好。",
}


# Not Postman's: the ledger rows of a file of Herald's that an upload stored (`convert`).
def stored_rows(content: bytes) -> list[tuple[object, ...]]:
    return [row for block, _ in loaded_ledger(content) for row in block.ledger.rows()]
