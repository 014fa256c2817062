"""The Postman (gov.sg v2) dialect's documented batch-send data, held as data.

Copied from Postman's public documentation of `POST /campaigns/:campaignId/batch/messages`
("POST - Batch send": the CSV example, and the documented error codes and messages), as kept
in the project's shared `contracts/postman-batch-send.md`.
"""

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

# Not Postman's: templates of a test campaign for the example's parameters, in two languages.
TEMPLATES = {
    "english": "Dear {{recipient_name}}, your {{topic}} is ready.",
    "chinese": "{{recipient_name}} 您的{{topic}}已准备好。",
}
