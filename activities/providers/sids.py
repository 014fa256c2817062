"""Twilio's resource SIDs, by the patterns its OpenAPI description gives them; apart from the
carrier client, so that the API reads them without loading the twilio package."""

import re

# A Message resource's sid.
MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
