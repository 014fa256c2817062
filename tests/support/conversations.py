"""Short silence timers and what a timed-out conversation looks like, for conversation tests."""

from typing import Any

TIMERS: dict[str, Any] = {
    "warning_time": 2,
    "warning_message": "Are you still there?",
    "time_out": 4,
    "timeout_message": "Closing this chat for now.",
}


def timed_out(detail: dict[str, Any]) -> bool:
    return detail["state"] == "timeout"
