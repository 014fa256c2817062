"""The Mobivate dialect's documented examples, held as data.

Copied from Mobivate's public documentation of `POST /send/batch` ("Send Batch SMS
Messages": the example request body and the documented 200 and 403 replies), as kept in
the project's shared `contracts/mobivate-send-batch.md`.
"""

from typing import Any

EXAMPLE_REQUEST: dict[str, Any] = {
    "recipients": [
        {
            "recipient": "4479000000001",
            "reference": "aaa",
            "meta": {"NAME": "John", "CITY": "London"},
        },
        {
            "recipient": "4479000000002",
            "reference": "bbb",
            "meta": {"NAME": "Jack", "CITY": "Dublin"},
        },
        {
            "recipient": "4479000000003",
            "reference": "ccc",
            "originator": "CustomOrigin",
            "text": "Hello Michael. How are you?",
        },
        {
            "recipient": "3392287d-7a79-4789-9ef8-7dc174836688",
            "meta": {"type": "mailinglist"},
        },
    ],
    "text": "Hello {{NAME}}, how is the weather in {{CITY}}?",
    "originator": "test",
    "name": "My Campaign",
    "shortenUrls": True,
    "excludeDuplicates": True,
    "excludeOptOuts": True,
    "spreadHours": 0,
}

EXAMPLE_SUCCESS: dict[str, Any] = {
    "success": True,
    "record": {
        "id": "8af60d9-de7f-45ce-97f1-35a91b45277",
        "type": "BatchSMS",
        "scheduled": "2025-11-10T21:12:32.786Z",
        "recipientCount": 5,
    },
}

AUTHENTICATION_ERROR: dict[str, Any] = {
    "success": False,
    "error": {"name": "AuthenticationError", "statusCode": 403},
}
