"""Builders shared by tests: unique phone numbers, recipient files, batch calls."""

import csv
import io
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx
import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumberType

from activities.recipients.phones import to_e164

AREA_CODES = (201, 212, 213, 305, 312, 404, 415, 503, 617, 702, 718, 917)
# `slow_to_validate`'s numbers run in sequence, so they live outside AREA_CODES.
SLOW_AREA = 646
# Phone cells of each kind a recipient file holds: E.164, national, formatted, foreign, too
# short, words, blank.
PHONE_CELLS = [
    "+12015550123",
    "12015550123",
    "+1 (201) 555-0123",
    "+12015550124",
    "+447911123456",
    "447911123456",
    "+33612345678",
    "12",
    "+1201555012",
    "call me",
    "",
    "  ",
]


# Every number `unique_numbers` and `unique_numbers_in` handed out in this process: tests
# share one carrier emulator and assert on what it received for a number, so no two tests
# may ever draw the same one (random draws alone met once in a CI run).
_DRAWN: set[str] = set()


def _draw(count: int, make: Callable[[random.Random], str]) -> list[str]:
    rng = random.Random()
    found: set[str] = set()
    while len(found) < count:
        raw = make(rng)
        if raw not in _DRAWN and to_e164(raw) == raw:
            found.add(raw)
            _DRAWN.add(raw)
    return sorted(found)


def unique_numbers(count: int) -> list[str]:
    """`count` valid US numbers that no other call in this test process returned."""
    return _draw(
        count,
        lambda rng: f"+1{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}",
    )


def unique_numbers_in(prefix: str, digits: int, count: int) -> list[str]:
    """`count` valid numbers of `prefix` (E.164, with its `+`) and `digits` more random
    digits that no other call in this test process returned."""
    return _draw(count, lambda rng: prefix + "".join(rng.choices("0123456789", k=digits)))


def slow_to_validate(rows: int) -> bytes:
    """A file of `rows` distinct numbers, each with a message of its own holding a quote
    inside an unquoted cell (Excel's quoting is read by columns, this is not: validated row
    by row), which takes a few seconds to validate at 200,000 rows."""
    lines = (f'+1{SLOW_AREA}{200 + n // 10000}{n % 10000:04d},say "hi"\n' for n in range(rows))
    return ("phone_number,agent_message\n" + "".join(lines)).encode()


def csv_bytes(header: list[str], rows: Iterable[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


async def attach(api: httpx.AsyncClient, headers: dict[str, str], content: bytes) -> str:
    response = await api.post(
        "/v1/files/attach",
        headers=headers,
        data={"file_type": "batches"},
        files={"file": ("recipients.csv", content, "text/csv")},
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]["file_id"]


async def emulator_messages(emulator_url: str, **filters: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{emulator_url}/_emulator/messages", params=filters)
        response.raise_for_status()
        return response.json()


def example_numbers() -> list[str]:
    """phonenumbers' example number of every type in every region, E.164 and national."""
    found = []
    for code, regions in COUNTRY_CODE_TO_REGION_CODE.items():
        for region in regions:
            for kind in vars(PhoneNumberType).values():
                if not isinstance(kind, int):
                    continue
                if region == "001":
                    number = phonenumbers.example_number_for_non_geo_entity(code)
                else:
                    number = phonenumbers.example_number_for_type(region, kind)
                if number is not None:
                    national = phonenumbers.national_significant_number(number)
                    found.append(f"+{number.country_code}{national}")
    return sorted(set(found))
