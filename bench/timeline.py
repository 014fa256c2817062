"""Where a batch's fixed cost goes: its opening (from `POST /v1/sms/batch` to the carrier's
first request) and its tail (from the carrier's last request to the final event), step by
step, from the batch workflow's Temporal history and the emulator's clock.

Every time is seconds after the POST (Temporal's event times and the emulator's are Unix
times on this machine's clock, as the POST's). Steps of the batch run only (a batch of up to
`inline_slices` slices sends from it; a larger one's chunks are child workflows, of which the
first `send_slice`'s start is not in the batch's history: then the carrier's first request is
the next step after the first child's start).
"""

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError

from workflows.contracts import batch_workflow_id

# The history events a step is named after, and what the step is called.
STEPS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow started",
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "workflow task scheduled",
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "workflow task started",
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "workflow task completed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "scheduled",
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "started",
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "completed",
    EventType.EVENT_TYPE_MARKER_RECORDED: "marker",
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "child start initiated",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED: "child started",
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED: "child completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "workflow completed",
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continued as new",
}


@dataclass
class Step:
    at: float
    what: str


async def batch_steps(client: Client, batch_id: str, posted: float) -> list[Step]:
    """The first run of the batch's workflow, event by event, at seconds after `posted`;
    activities named by type, markers by their name (a local activity's by its type)."""
    handle = client.get_workflow_handle(batch_workflow_id(batch_id))
    # The final webhook event comes before the workflow's own end: wait for it, or the tail
    # may lack its last steps.
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    history = await handle.fetch_history()
    types: dict[int, str] = {}
    steps = []
    for event in history.events:
        kind = event.event_type
        what = STEPS.get(kind)
        if what is None:
            continue
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            types[event.event_id] = (
                event.activity_task_scheduled_event_attributes.activity_type.name
            )
            what = f"{types[event.event_id]} scheduled"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            scheduled = event.activity_task_started_event_attributes.scheduled_event_id
            what = f"{types[scheduled]} started"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
            what = f"{types[scheduled]} completed"
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            what = f"marker {event.marker_recorded_event_attributes.marker_name}"
        steps.append(Step(event.event_time.ToDatetime().timestamp() - posted, what))
    return steps


def opening_and_tail(
    steps: list[Step], answered: float, first_request: float | None, last_request: float | None
) -> dict[str, list[tuple[float, str]]]:
    """The steps up to the carrier's first request (with the POST's answer and the request
    itself put in their place), and those from its last request on."""
    marks = [Step(answered, "POST answered")]
    if first_request is not None:
        marks.append(Step(first_request, "first carrier request"))
    if last_request is not None:
        marks.append(Step(last_request, "last carrier request"))
    ordered = sorted([*steps, *marks], key=lambda step: step.at)
    first = first_request if first_request is not None else float("inf")
    last = last_request if last_request is not None else float("inf")
    # The opening ends at the first send's start too: what comes after it is sending.
    sends = [s.at for s in steps if s.what == "send_slice started"]
    opening_end = max(first, min(sends, default=first))
    return {
        "opening": [(s.at, s.what) for s in ordered if s.at <= opening_end],
        "tail": [(s.at, s.what) for s in ordered if s.at >= last],
    }


def timeline_report(size: dict[str, Any]) -> str:
    """The opening and the tail of one size's run, a step a line, with the time since the
    step before."""
    lines = []
    steps_ms = size.get("validation_steps_ms")
    if steps_ms:
        lines.append(
            "  validation steps: " + ", ".join(f"{k} {v:.0f} ms" for k, v in steps_ms.items())
        )
    for part in ("opening", "tail"):
        steps = size.get("timeline", {}).get(part, [])
        lines.append(f"  {part}:")
        before = None
        for at, what in steps:
            gap = "" if before is None else f"+{(at - before) * 1000:.0f} ms"
            lines.append(f"    {at:7.3f} s  {gap:>9}  {what}")
            before = at
    return "\n".join(lines)


def validation_steps(log_paths: list[Path], batch_id: str) -> dict[str, float] | None:
    """The `validation steps` debug event of the batch (ms by step), from the workers' JSON
    log lines; None unless the stack logs at DEBUG (`HERALD_LOG_LEVEL=DEBUG`)."""
    for path in log_paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"validation steps"' not in line or batch_id not in line:
                continue
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("batch_id") == batch_id:
                    return dict(event["ms"])
    return None
