"""Settings of a complete production start, for tests that leave one of them out."""

PRODUCTION = {
    "HERALD_ENV": "production",
    "HERALD_TWILIO_API_URL": "https://api.twilio.com",
    "HERALD_TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "HERALD_TWILIO_AUTH_TOKEN": "a-real-token",
    "HERALD_PUBLIC_URL": "https://sms.herald-ops.net",
    "HERALD_DATABASE_URL": "postgresql://herald:secret@db.example.com/herald",
    "HERALD_TEMPORAL_ADDRESS": "temporal.example.com:7233",
}
