"""How `herald` shows things: rich tables and a live bar in a terminal, plain tab-separated
lines when its output goes elsewhere, JSON with `--json`."""

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

# Ledger statuses counted as sent and as failed, as the batch's final event counts them
# (activities/ledger.py): a message the carrier took and then could not deliver failed.
SENT_STATUSES = ("sent", "delivered")
FAILED_STATUSES = ("failed", "undelivered")
console = Console()
errors = Console(stderr=True)


def cell(value: Any) -> str:
    return "-" if value is None else str(value)


# Off a terminal a row is one line of tab-separated values: a value's own tab, line end or
# backslash is written as PostgreSQL's text format writes it, so that `cut` and `awk` read
# each row whole (a batch named with a tab, a rejected row's quoted cell with a line end).
_PLAIN = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def plain(value: Any) -> str:
    return cell(value).translate(_PLAIN)


def _text(value: Any) -> Text:
    """A value from the API as written: never read as rich's markup (`[bold]`, `[/]`)."""
    return Text(cell(value))


def show_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")


def show_table(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], title: str = "") -> None:
    if not console.is_terminal:
        sys.stdout.write("\t".join(columns) + "\n")
        for row in rows:
            sys.stdout.write("\t".join(plain(row.get(column)) for column in columns) + "\n")
        return
    table = Table(title=_text(title) if title else None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_text(row.get(column)) for column in columns))
    console.print(table)


def show_fields(fields: Mapping[str, Any], title: str = "") -> None:
    """One thing's fields: `name: value` lines, or a two-column table in a terminal."""
    if not console.is_terminal:
        for name, value in fields.items():
            sys.stdout.write(f"{name}: {plain(value)}\n")
        return
    table = Table(title=_text(title) if title else None, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in fields.items():
        table.add_row(_text(name), _text(value))
    console.print(table)


def say(line: str) -> None:
    """A line for people: in a terminal with rich's markup, elsewhere as plain text; a value
    from the API or the user in it goes through `escape`, not to be read as markup."""
    if console.is_terminal:
        console.print(line)
    else:
        sys.stdout.write(console.render_str(line).plain + "\n")


class BatchProgress:
    """A batch's progress as it is followed: a live bar (sent, failed, skipped, rate, ETA) in
    a terminal; elsewhere a line per change of its status or counts; `quiet`: nothing."""

    def __init__(self, batch_id: str, *, quiet: bool = False) -> None:
        self.batch_id = batch_id
        self.quiet = quiet
        self.status = "queued"
        self.total = 0
        self.sent = self.failed = self.skipped = 0
        # When the batch's counts were first read, and its sent count then: a batch followed
        # mid-way had sent before this command began, which is no part of its rate now.
        self._first: tuple[float, int] | None = None
        self._last_line = ""
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if console.is_terminal and not quiet:
            self._bar = Progress(
                TextColumn("[bold]{task.fields[status]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "sent [green]{task.fields[sent]}[/] failed [red]{task.fields[failed]}[/]"
                    " skipped [yellow]{task.fields[skipped]}[/] {task.fields[rate]}/s"
                ),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
            )

    def __enter__(self) -> "BatchProgress":
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(self.batch_id, total=None, **self._fields(), start=True)
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def rate(self) -> float:
        """Messages sent a second since the batch's counts were first read."""
        if self._first is None:
            return 0.0
        at, sent = self._first
        return (self.sent - sent) / max(time.monotonic() - at, 1e-6)

    def _fields(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
            "rate": f"{self.rate():.1f}",
        }

    def show(self, batch: Mapping[str, Any], status: str) -> None:
        """The batch's ledger counts (from `GET /v1/sms/batch/{id}`), in `status`."""
        counts = batch["counts"]
        self.update(
            status=status,
            total=batch["recipients"] or 0,
            sent=sum(counts.get(s, 0) for s in SENT_STATUSES),
            failed=sum(counts.get(s, 0) for s in FAILED_STATUSES),
            skipped=counts.get("skipped", 0),
        )

    def update(
        self,
        *,
        status: str | None = None,
        total: int | None = None,
        sent: int | None = None,
        failed: int | None = None,
        skipped: int | None = None,
    ) -> None:
        self.status = status or self.status
        self.total = self.total if total is None else total
        self.sent = self.sent if sent is None else sent
        if sent is not None and self._first is None:
            self._first = (time.monotonic(), sent)
        self.failed = self.failed if failed is None else failed
        self.skipped = self.skipped if skipped is None else skipped
        done = self.sent + self.failed + self.skipped
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=self.total or None, completed=done, **self._fields())
            return
        line = (
            f"{self.status}\t{done}/{self.total}\tsent {self.sent}\tfailed {self.failed}"
            f"\tskipped {self.skipped}"
        )
        if line != self._last_line and not self.quiet:
            self._last_line = line
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
