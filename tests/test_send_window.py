"""`send_window`: each recipient is sent only inside the window in their local time (their
zone from the number); the rows outside it wait, counted, and a retry keeps the window."""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from activities.pacing import SenderPacer
from activities.providers.in_flight import InFlightLimit
from activities.windows import WindowClock, minutes_of, zones_of
from tests.support.batches import start_marked_batch, wait_for_status
from tests.support.builders import unique_numbers_in
from tests.support.delivery import received, wait_until_received
from tests.support.sending import eventually
from tests.support.stack import Account, WebhookReceiver, error_code
from workflows.contracts import SendWindow

TOKYO = ZoneInfo("Asia/Tokyo")


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def window_around_tokyo_now() -> dict[str, str]:
    """Open now in Tokyo (UTC+9, no DST) and for two hours; New York (UTC-5 or -4) is then
    13 or 14 hours away, outside it."""
    now = datetime.now(TOKYO)
    return {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=2)).strftime("%H:%M"),
    }


async def waiting_for_window(api: httpx.AsyncClient, account: Account, file_id: str) -> int:
    batch = (await api.get(f"/v1/sms/batch/{file_id}", headers=account.headers)).json()["data"]
    return batch["counts"].get("waiting_for_window", -1)


async def test_recipients_outside_their_local_window_wait_the_others_send(
    api: httpx.AsyncClient, account: Account, webhooks: WebhookReceiver, emulator_url: str
) -> None:
    tokyo = unique_numbers_in("+813", 8, 3)
    new_york = unique_numbers_in("+1212", 7, 3)
    assert {zones_of(n) for n in tokyo} == {("Asia/Tokyo",)}
    assert {zones_of(n) for n in new_york} == {("America/New_York",)}

    file_id, marker = await start_marked_batch(
        api, account, webhooks, tokyo + new_york, send_window=window_around_tokyo_now()
    )
    await wait_until_received(emulator_url, marker, 3)
    assert await eventually(lambda: waiting_for_window(api, account, file_id), lambda n: n == 3)

    assert sorted(m["to"] for m in await received(emulator_url, marker)) == tokyo
    rows = (await api.get(f"/v1/sms/batch/{file_id}/messages", headers=account.headers)).json()[
        "data"
    ]["messages"]
    assert {r["to_number"]: r["status"] for r in rows if r["to_number"] in new_york} == {
        n: "pending" for n in new_york
    }
    assert {r["attempts"] for r in rows if r["to_number"] in new_york} == {0}
    # Its `in_progress` event is recorded beside its first slice, a moment after it may be.
    await wait_for_status(api, account, file_id, "in_progress")

    # The status webhook's events say how many wait.
    assert (await api.post(f"/v1/sms/batch/{file_id}/pause", headers=account.headers)).is_success
    paused = (await webhooks.wait_for(marker, "paused"))[-1]
    assert paused["messages_waiting_for_window"] == 3
    assert (await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)).is_success
    final = (await webhooks.wait_for(marker, "cancelled"))[-1]
    assert (final["messages_successful"], final["messages_cancelled"]) == (3, 3)
    assert final["messages_waiting_for_window"] == 0

    # A retry keeps the window: the New York rows wait again, nothing more is sent.
    retry = await api.post(
        f"/v1/sms/batch/{file_id}/retry",
        headers=account.headers,
        json={"statuses": ["cancelled"]},
    )
    assert retry.status_code == 200, retry.text
    await wait_for_status(api, account, file_id, "in_progress")
    assert await eventually(lambda: waiting_for_window(api, account, file_id), lambda n: n == 3)
    assert len(await received(emulator_url, marker)) == 3
    assert (await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)).is_success
    await webhooks.wait_for(marker, "cancelled", times=2)


async def all_wait_for_the_window(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    numbers: list[str],
) -> None:
    """A batch to `numbers` inside their window as it starts, whose window the test closes
    for them as it sends: every row waits for it, none is sent; then cancelled."""
    file_id, marker = await start_marked_batch(
        api, account, webhooks, numbers, send_window=window_around_tokyo_now()
    )

    assert await eventually(lambda: waiting_for_window(api, account, file_id), lambda n: n == 3)
    assert await received(emulator_url, marker) == []
    assert (await api.post(f"/v1/sms/batch/{file_id}/cancel", headers=account.headers)).is_success
    await webhooks.wait_for(marker, "cancelled")


async def test_a_row_whose_window_closes_while_it_waits_for_its_sender_waits(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The window is checked again after the sender's pace, just before the request: a slow
    sender's slice spans tens of seconds, past the window's end for its last rows. Here the
    window closes (for this test's numbers) as each row's turn comes."""
    tokyo = unique_numbers_in("+813", 8, 3)
    turned: set[str] = set()
    real_turn, real_opens_at = SenderPacer.turn, WindowClock.opens_at

    async def turn_then_close(self: SenderPacer, stopping: asyncio.Event) -> bool:
        taken = await real_turn(self, stopping)
        turned.add(self._number)
        return taken

    def opens_at(self: WindowClock, number: str, now: float) -> float | None:
        if number in tokyo and account.agent_number in turned:
            return now + 3600
        return real_opens_at(self, number, now)

    monkeypatch.setattr(SenderPacer, "turn", turn_then_close)
    monkeypatch.setattr(WindowClock, "opens_at", opens_at)
    await all_wait_for_the_window(api, account, webhooks, emulator_url, tokyo)


async def test_a_row_whose_window_closes_while_it_waits_for_its_request_waits(
    api: httpx.AsyncClient,
    account: Account,
    webhooks: WebhookReceiver,
    emulator_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The window is checked once more when the request has its place among the account's
    requests in flight and its connection, just before it is written: those waits, behind
    other batches of the account, can pass the window's end. Here the window closes (for
    this test's numbers) once the slice's first request has its place."""
    tokyo = unique_numbers_in("+813", 8, 3)
    placed = asyncio.Event()
    real_place, real_opens_at = InFlightLimit.place, WindowClock.opens_at

    async def place_then_close(self: InFlightLimit, stopping: asyncio.Event | None = None) -> int:
        taken = await real_place(self, stopping)
        placed.set()
        return taken

    def opens_at(self: WindowClock, number: str, now: float) -> float | None:
        if number in tokyo and placed.is_set():
            return now + 3600
        return real_opens_at(self, number, now)

    monkeypatch.setattr(InFlightLimit, "place", place_then_close)
    monkeypatch.setattr(WindowClock, "opens_at", opens_at)
    await all_wait_for_the_window(api, account, webhooks, emulator_url, tokyo)


@pytest.mark.parametrize(
    ("window", "problem"),
    [
        ({"start": "9:00", "end": "20:00"}, "not HH:MM"),
        ({"start": "09:00", "end": "24:00"}, "no such hour"),
        ({"start": "09:00", "end": "09:00"}, "empty"),
        ({"start": "09:00"}, "no end"),
        ({"start": "09:00", "end": "20:00", "timezone": "Mars/Olympus"}, "unknown zone"),
        ({"start": "09:00", "end": "20:00", "timezone": "America"}, "a directory of zones"),
        ({"start": "09:00", "end": "20:00", "timezone": "Etc"}, "a directory of zones"),
        ({"start": "09:00", "end": "20:00", "timezone": "A" * 300}, "a name too long"),
        ({"start": "09:00", "end": "20:00", "extra": 1}, "unknown field"),
        ("09:00-20:00", "not an object"),
    ],
)
async def test_a_malformed_send_window_is_refused(
    api: httpx.AsyncClient, account: Account, window: object, problem: str
) -> None:
    response = await api.post(
        "/v1/sms/batch",
        headers=account.headers,
        json={
            "recipients": [{"phone_number": "+12015550123"}],
            "global": {"agent_number": account.agent_number, "agent_message": "hi"},
            "send_window": window,
        },
    )
    assert error_code(response) == "INVALID_SEND_WINDOW", problem


# The clock alone, at fixed times: 2026-01-15 is winter in New York (UTC-5).
NOON_UTC = utc("2026-01-15T12:00:00")


def test_a_number_is_sent_inside_its_own_zones_window() -> None:
    clock = WindowClock(SendWindow(start="09:00", end="20:00"))
    assert clock.opens_at("+81312345678", NOON_UTC) == utc("2026-01-16T00:00:00")  # 21:00 JST
    assert clock.opens_at("+12125550123", NOON_UTC) == utc("2026-01-15T14:00:00")  # 07:00 EST
    assert clock.opens_at("+12125550123", utc("2026-01-15T14:00:00")) is None
    assert clock.opens_at("+12125550123", utc("2026-01-16T00:59:00")) is None
    assert clock.opens_at("+12125550123", utc("2026-01-16T01:00:00")) == utc("2026-01-16T14:00:00")


def test_a_window_may_cross_midnight() -> None:
    clock = WindowClock(SendWindow(start="22:00", end="02:00"))
    assert clock.opens_at("+12125550123", utc("2026-01-16T03:30:00")) is None  # 22:30 EST
    assert clock.opens_at("+12125550123", utc("2026-01-16T06:59:00")) is None  # 01:59 EST
    assert clock.opens_at("+12125550123", NOON_UTC) == utc("2026-01-16T03:00:00")


def test_several_zones_take_the_intersection_of_their_windows() -> None:
    # phonenumbers puts this Russian mobile range in 16 zones, UTC+2 to UTC+12: a 09-20
    # window is open in all of them from 07:00 to 08:00 UTC only.
    number = "+79161234567"
    assert len(zones_of(number)) > 1
    clock = WindowClock(SendWindow(start="09:00", end="20:00"))
    assert clock.opens_at(number, NOON_UTC) == utc("2026-01-16T07:00:00")
    assert clock.opens_at(number, utc("2026-01-16T07:30:00")) is None
    assert clock.opens_at(number, utc("2026-01-16T08:00:00")) == utc("2026-01-17T07:00:00")


def test_an_unknown_zone_or_windows_that_never_meet_take_the_batchs_zone() -> None:
    clock = WindowClock(SendWindow(start="09:00", end="10:00", timezone="Asia/Tokyo"))
    # A UK "drama" number has no zone in phonenumbers; a +1 800 number spans 21 hours of
    # zones, which a one-hour window cannot cover at once.
    for number in ("+447700900123", "+18005550123"):
        assert clock.opens_at(number, NOON_UTC) == utc("2026-01-16T00:00:00"), number
        assert clock.opens_at(number, utc("2026-01-16T00:30:00")) is None, number


# Around New York's two transitions of 2026: 02:00 EST jumps to 03:00 EDT on March 8, and
# 01:00-02:00 is lived twice on November 1 (EDT, then EST).
TRANSITIONS = [utc("2026-03-08T07:00:00"), utc("2026-11-01T06:00:00")]
EDGES = ["00:30", "01:00", "01:30", "02:00", "02:30", "03:00", "22:00"]


def inside_by_the_clock(start: str, end: str, moment: float) -> bool:
    """Whether New York's wall clock at `moment` reads a minute inside the window."""
    local = datetime.fromtimestamp(moment, ZoneInfo("America/New_York"))
    minute, first, last = local.hour * 60 + local.minute, minutes_of(start), minutes_of(end)
    return first <= minute < last if first < last else minute >= first or minute < last


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_a_window_follows_the_wall_clock_across_daylight_saving_changes(
    transition: float,
) -> None:
    """Every ten minutes from three hours before a transition to nine after, for windows
    with an edge in the skipped or the repeated hour: the clock (one clock asked in turn, as
    a slice asks it, and a fresh one) answers what the wall clock says.
    It opened 30 minutes late at a start the clock skipped, sent on past an end it skipped,
    and took a day for a start in the repeated hour."""
    number = "+12125550123"
    for start, end in itertools.permutations(EDGES, 2):
        clock = WindowClock(SendWindow(start=start, end=end))
        for moment in range(int(transition) - 3 * 3600, int(transition) + 9 * 3600, 600):
            opens = None
            if not inside_by_the_clock(start, end, moment):
                # Every edge and transition here falls on a ten-minute mark.
                opens = moment + 600
                while not inside_by_the_clock(start, end, opens):
                    opens += 600
            fresh = WindowClock(SendWindow(start=start, end=end)).opens_at(number, moment)
            assert (clock.opens_at(number, moment), fresh) == (opens, opens), (start, end, moment)
