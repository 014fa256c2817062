"""Phone numbers to E.164, the one form Herald stores and sends."""

import phonenumbers


def to_e164(raw: str, *, require_valid: bool = True) -> str | None:
    """E.164 form of `raw`, adding the leading `+` when missing; None when it is not a number.

    `require_valid` checks the number against the numbering plan (recipients); without it a
    number only needs a possible length for its country (senders, including test numbers).
    """
    candidate = raw.strip()
    if not candidate.startswith("+"):
        candidate = "+" + candidate
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException:
        return None
    check = phonenumbers.is_valid_number if require_valid else phonenumbers.is_possible_number
    if not check(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
