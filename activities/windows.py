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

    def _changes(self, zones: list[ZoneInfo], now: float) -> list[float]:
        """The instants after `now`, in order, at which the window may open or close in one
        of the zones: its clock reads the window's start or end (either reading of an hour
        that repeats; a time the clock skips reads as if it had not) or jumps (its offset
        changes). Between two of them, whether a number is inside does not change."""
        minutes = [time(minute // 60, minute % 60) for minute in (self._start, self._end)]
        moments = set()
        for zone in zones:
            today = datetime.fromtimestamp(now, zone).date()
            for day in DAYS:
                local_day = today + timedelta(days=day)
                for at in minutes:
                    for fold in (0, 1):
                        moments.add(_local(local_day, at.replace(fold=fold), zone))
                moments.update(_offset_changes(local_day, zone))
        return sorted(moment for moment in moments if moment > now)

    def _span(self, names: tuple[str, ...], now: float) -> tuple[float, bool]:
        """Whether the zones are all inside the window at `now`, and until when."""
        zones = [ZoneInfo(name) for name in names]
        inside = self._inside_all(zones, now)
        change = next(
            (m for m in self._changes(zones, now) if self._inside_all(zones, m) != inside), None
        )
        if change is None and names != self._fallback:
            # The zones' windows never overlap: the batch's zone decides.
            return self._span(self._fallback, now)
        assert change is not None, "one zone's window opens and closes every day"
        return change, inside


def _offset_changes(day: date, zone: ZoneInfo) -> list[float]:
    """The instant in `day`'s 24 hours from its local midnight at which the zone's offset
    changes, if it does (a daylight saving time transition): to the second."""
    low = _local(day, time(0), zone)
    high = low + 86400
    if _offset(low, zone) == _offset(high, zone):
        return []
    before = _offset(low, zone)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(middle, zone) == before:
            low = middle
        else:
            high = middle
    return [high]


def _offset(moment: float, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(moment, zone).utcoffset()


def _local(day: date, at: time, zone: ZoneInfo) -> float:
    return datetime.combine(day, at, tzinfo=zone).timestamp()
