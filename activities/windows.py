"""A batch's `send_window`, in each recipient's local time.

A number's zones are phonenumbers' (`timezone.time_zones_for_number`). A number with several
zones may be sent only while the window is open in every one of them (the intersection of
their windows). A number whose zone phonenumbers does not know, or whose zones' windows never
overlap (a `+1 800` number spans 21 hours of zones), takes the batch's `timezone` (UTC unless
the request names one).
"""

import functools
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as number_timezone

from workflows.contracts import SendWindow

# phonenumbers' zone for a number it cannot place.
UNKNOWN_ZONE = "Etc/Unknown"
# Local days looked at for the next opening: yesterday (a window crossing midnight) to this.
DAYS = range(-1, 3)


def minutes_of(hhmm: str) -> int:
    """ "HH:MM" as minutes after midnight."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


@functools.lru_cache(maxsize=65536)
def zones_of(number: str) -> tuple[str, ...]:
    """The number's time zones; empty when phonenumbers does not know them."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return ()
    return tuple(z for z in number_timezone.time_zones_for_number(parsed) if z != UNKNOWN_ZONE)


class WindowClock:
    """Answers, for a number at a time, whether it may be sent now or when it may. What it
    found for a set of zones holds until that set's window next opens or closes, so a slice
    of numbers in a few zones costs a few computations, not one a number."""

    def __init__(self, window: SendWindow) -> None:
        self._start = minutes_of(window.start)
        self._end = minutes_of(window.end)
        self._fallback = (window.timezone,)
        # zones -> (since, until, inside): whether they are all inside the window, from when
        # it was found until it changes.
        self._spans: dict[tuple[str, ...], tuple[float, float, bool]] = {}

    def opens_at(self, number: str, now: float) -> float | None:
        """None when `number` may be sent at the Unix time `now`; otherwise when it may."""
        zones = zones_of(number) or self._fallback
        span = self._spans.get(zones)
        if span is None or not span[0] <= now < span[1]:
            span = (now, *self._span(zones, now))
            self._spans[zones] = span
        _, until, inside = span
        return None if inside else until

    def _inside(self, minute: int) -> bool:
        if self._start < self._end:
            return self._start <= minute < self._end
        return minute >= self._start or minute < self._end

    def _inside_all(self, zones: list[ZoneInfo], moment: float) -> bool:
        for zone in zones:
            local = datetime.fromtimestamp(moment, zone)
            if not self._inside(local.hour * 60 + local.minute):
                return False
        return True

    def _edges(self, zones: list[ZoneInfo], now: float, minute: int) -> list[float]:
        """The instants after `now`, in order, at which some zone's clock reads `minute`."""
        at = time(minute // 60, minute % 60)
        edges = set()
        for zone in zones:
            today = datetime.fromtimestamp(now, zone).date()
            for day in DAYS:
                moment = _local(today + timedelta(days=day), at, zone)
                if moment > now:
                    edges.add(moment)
        return sorted(edges)

    def _span(self, names: tuple[str, ...], now: float) -> tuple[float, bool]:
        zones = [ZoneInfo(name) for name in names]
        if self._inside_all(zones, now):
            # Inside every zone's window until the first of them closes.
            return self._edges(zones, now, self._end)[0], True
        # An intersection of windows opens when one of them does.
        for moment in self._edges(zones, now, self._start):
            if self._inside_all(zones, moment):
                return moment, False
        if names == self._fallback:
            return self._edges(zones, now, self._start)[0], False
        # The zones' windows never overlap: the batch's zone decides.
        return self._span(self._fallback, now)


def _local(day: date, at: time, zone: ZoneInfo) -> float:
    return datetime.combine(day, at, tzinfo=zone).timestamp()
