"""`herald`: send and follow batches through the API, and (operators) manage API keys.

Exit codes: 0 success; for commands that wait for a batch's end (`send --follow`, `follow`)
1 when it ended `completed_partial` and 2 when it `failed` or was `cancelled`; 2 too for
`send --dry-run` when the batch would fail; 3 when a request failed (the API's error code is
printed), the answer was not Herald's, the file could not be written, or the batch's event
stream kept ending before the batch did (it is opened again, after a retry, until the new
run's events come). A usage error (an unknown command or option, a missing argument, a batch
id that is no UUID) exits 2 as well, before anything is sent, its message on stderr."""

import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli import keys
from cli.client import CliError, Config, Herald
from cli.files import replaced_on_success
from cli.output import BatchProgress, errors, say, show_fields, show_json, show_table
from workflows.statuses import FINAL_BATCH_STATUSES, BatchStatus

EXIT_OK, EXIT_PARTIAL, EXIT_FAILED, EXIT_ERROR = 0, 1, 2, 3
EXIT_CODES = {
    BatchStatus.COMPLETED: EXIT_OK,
    BatchStatus.COMPLETED_PARTIAL: EXIT_PARTIAL,
    BatchStatus.FAILED: EXIT_FAILED,
    BatchStatus.CANCELLED: EXIT_FAILED,
}
# A stream that ends before the batch does is opened again this many times, this far apart.
REOPENS = 10
REOPEN_SECONDS = 1.0
# A followed batch's counts are read at most this often while its events come.
COUNTS_EVERY_SECONDS = 1.0
BATCH_COLUMNS = ("batch_id", "name", "status", "agent_number", "recipients", "created_at")
BATCHES_PANEL = "Batches"
OPERATOR_PANEL = "Operators (PostgreSQL directly, no API)"

app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, rich_markup_mode="markdown"
)

Json = Annotated[bool, typer.Option("--json", help="JSON on stdout, for scripts.")]


def _batch_id(value: str) -> str:
    """A batch id as the API names batches: a UUID, the blanks around it dropped (an id read
    from a file with Windows line ends keeps its CR). Anything else is a usage error: in the
    request's path, `<id>/messages` asked another endpoint, and a CR made no URL at all."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a batch id (a UUID)") from None


BatchId = Annotated[
    str, typer.Argument(help="The batch id (its file id).", parser=_batch_id, metavar="BATCH_ID")
]


COUNT_LABELS = {"waiting_for_window": "pending, of which waiting for window"}


def _herald() -> Herald:
    return Herald(Config.load())


def _summary(batch: dict[str, Any]) -> None:
    show_fields(
        {
            "batch_id": batch["batch_id"],
            "name": batch["name"],
            "status": batch["status"],
            "code": batch["code"],
            "reason": batch["reason"],
            "rows_total": batch["rows_total"],
            "recipients": batch["recipients"],
            "rejected": batch["rejected"],
            # Rejected rows are counted above, as rows: they are no messages. Those waiting for
            # their window are some of the `pending` ones, not a status of their own.
            **{
                f"messages {COUNT_LABELS.get(status, status)}": n
                for status, n in sorted(batch["counts"].items())
                if status != "rejected"
            },
            "temporal_ui_url": batch["temporal_ui_url"],
        },
        title=f"batch {batch['batch_id']}",
    )


def _follow(api: Herald, batch_id: str, as_json: bool) -> int:
    """Follow the batch's events to its end; its final state, and the exit code it means."""
    batch = api.call("GET", f"/v1/sms/batch/{batch_id}")
    if batch["status"] not in FINAL_BATCH_STATUSES:
        with BatchProgress(batch_id, quiet=as_json) as progress:
            batch = _watch(api, batch_id, as_json, progress)
    if as_json:
        show_json({"event": "summary", "data": batch})
    else:
        _summary(batch)
    return EXIT_CODES[BatchStatus(batch["status"])]


def _watch(api: Herald, batch_id: str, as_json: bool, progress: BatchProgress) -> dict[str, Any]:
    """Show the batch's events until it is in a final status; that state of it.

    A retried batch is `queued` while its stream still ends at the final event of its run
    before, until the new run records its first event: a stream that ends while the batch is
    not final is opened again after the last event seen, up to `REOPENS` times in a row."""
    last, reopens, read_at = 0, 0, -COUNTS_EVERY_SECONDS
    while True:
        for event in api.events(batch_id, after=last):
            reopens = 0
            last = last if event.id is None else event.id
            if as_json:
                show_json({"event": event.name, "data": event.data})
                continue
            # The ledger's counts move with each message, the progress event's only as
            # chunks end: an event is the time to read them, at most once a second. A stream
            # opened late gives every event so far at once: a read for each spent the key's
            # rate (RATE_LIMITED after about a hundred).
            if time.monotonic() - read_at >= COUNTS_EVERY_SECONDS:
                read_at = time.monotonic()
                progress.show(api.call("GET", f"/v1/sms/batch/{batch_id}"), event.data["status"])
            else:
                progress.update(status=event.data["status"])
        batch: dict[str, Any] = api.call("GET", f"/v1/sms/batch/{batch_id}")
        progress.show(batch, batch["status"])
        if batch["status"] in FINAL_BATCH_STATUSES:
            return batch
        if reopens == REOPENS:
            raise CliError(
                f"the event stream of batch {batch_id} ended while it is still"
                f" {batch['status']}: `herald follow {batch_id}` follows it again (a run"
                f" terminated through Temporal ends so: `herald retry {batch_id}` runs it again)"
            )
        reopens += 1
        time.sleep(REOPEN_SECONDS)


def _run(command: Any) -> None:
    """Run a command; a failure is one line on stderr and exit code 3."""
    try:
        code = command()
    except CliError as error:
        errors.print(f"herald: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from error
    raise typer.Exit(code or EXIT_OK)


@app.command(rich_help_panel=BATCHES_PANEL)
def send(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="Recipients: CSV or JSON.")
    ],
    sender: Annotated[
        str, typer.Option("--from", help="A sender number (or sender ID) of the account.")
    ],
    message: Annotated[
        str, typer.Option("--message", help="The template; `{{column}}` is filled per row.")
    ],
    webhook: Annotated[
        str | None, typer.Option(help="Receives each lifecycle event (status_webhook).")
    ] = None,
    schedule: Annotated[
        datetime | None,
        typer.Option(
            help="Send from this time (ISO 8601, with a zone).",
            metavar="<time>",
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z", "%Y-%m-%d %H:%M:%S%z"],
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="The batch's name.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate now; show what would be sent.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Show its progress until it ends.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Upload FILE and start a batch from it (or, with --dry-run, only validate it)."""

    def command() -> int:
        with _herald() as api:
            attached = api.attach(file)
            request: dict[str, Any] = {
                "file_id": attached["file_id"],
                "global": {"agent_number": sender, "agent_message": message},
                "dry_run": dry_run,
            }
            if webhook:
                request["status_webhook"] = webhook
            if schedule:
                request["schedule_at"] = schedule.isoformat()
            if name:
                request["name"] = name
            started = api.call("POST", "/v1/sms/batch", json=request)
            if dry_run:
                _dry_run(started, as_json)
                return EXIT_OK if started["code"] is None else EXIT_FAILED
            if as_json and follow:
                # First, so that the batch's id is in hand if following it fails.
                show_json({"event": "started", "data": started})
            elif as_json:
                show_json(started)
            else:
                say(f"batch [bold]{escape(started['batch_id'])}[/] started")
            return _follow(api, started["batch_id"], as_json) if follow else EXIT_OK

    _run(command)


def _dry_run(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        show_json(result)
        return
    counts = ("rows_total", "to_send", "skipped", "rejected", "segments_total")
    cost = result["estimated_cost"]
    show_fields(
        {
            "code": result["code"],
            **({"reason": result["reason"]} if result["reason"] else {}),
            **{k: result[k] for k in counts},
            "estimated_cost": f"{cost['total']} {cost['currency']}",
            "unknown_messages": cost["unknown_messages"],
        },
        title="dry run",
    )
    show_table(
        ("country", "messages", "segments", "price_per_segment", "cost"),
        cost["by_country"],
        title=f"estimated cost ({cost['currency']}), by country",
    )
    show_table(("row_number", "to_number", "body", "skip_code"), result["messages"])
    if result["rejected_rows"]:
        show_table(("row_number", "value", "code", "message"), result["rejected_rows"])


@app.command(rich_help_panel=BATCHES_PANEL)
def batches(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="The `next_cursor` of the page before, for the next.")
    ] = None,
    as_json: Json = False,
) -> None:
    """The account's batches, newest first, a page at a time."""

    def command() -> int:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        with _herald() as api:
            listed = api.call("GET", "/v1/sms/batches", params=params)
        if as_json:
            show_json(listed)
            return EXIT_OK
        show_table(BATCH_COLUMNS, listed["batches"], title="batches")
        if listed["next_cursor"] is not None:
            typer.echo(
                f"more: herald batches --limit {limit} --cursor {listed['next_cursor']}", err=True
            )
        return EXIT_OK

    _run(command)


@app.command(rich_help_panel=BATCHES_PANEL)
def status(batch_id: BatchId, as_json: Json = False) -> None:
    """A batch's state and its messages by status."""

    def command() -> int:
        with _herald() as api:
            batch = api.call("GET", f"/v1/sms/batch/{batch_id}")
        if as_json:
            show_json(batch)
        else:
            _summary(batch)
        return EXIT_OK

    _run(command)


@app.command(rich_help_panel=BATCHES_PANEL)
def follow(batch_id: BatchId, as_json: Json = False) -> None:
    """Show a batch's progress until it ends (exit code: 0 completed, 1 partial, 2 failed or
    cancelled)."""

    def command() -> int:
        with _herald() as api:
            return _follow(api, batch_id, as_json)

    _run(command)


def _control(batch_id: str, action: str, as_json: bool, body: Any = None) -> None:
    def command() -> int:
        with _herald() as api:
            done = api.call("POST", f"/v1/sms/batch/{batch_id}/{action}", json=body)
        if as_json:
            show_json(done)
        else:
            rows = f" ({done['rows']} rows)" if done.get("rows") is not None else ""
            say(f"{action}: sent to batch [bold]{escape(batch_id)}[/]{rows}")
        return EXIT_OK

    _run(command)


@app.command(rich_help_panel=BATCHES_PANEL)
def pause(batch_id: BatchId, as_json: Json = False) -> None:
    """No new sends until `resume`."""
    _control(batch_id, "pause", as_json)


@app.command(rich_help_panel=BATCHES_PANEL)
def resume(batch_id: BatchId, as_json: Json = False) -> None:
    """Go on sending from where `pause` stopped."""
    _control(batch_id, "resume", as_json)


@app.command(rich_help_panel=BATCHES_PANEL)
def cancel(
    batch_id: BatchId,
    reason: Annotated[str | None, typer.Option(help="Kept on the batch.")] = None,
    as_json: Json = False,
) -> None:
    """Stop a batch: every row not sent ends `cancelled`."""
    _control(batch_id, "cancel", as_json, {"reason": reason} if reason else None)


@app.command(rich_help_panel=BATCHES_PANEL)
def retry(
    batch_id: BatchId,
    statuses: Annotated[
        list[str],
        typer.Option(
            "--statuses",
            help="Ledger statuses to send again: failed, uncertain, cancelled (repeatable,"
            " or comma-separated).",
        ),
    ] = ["failed"],  # noqa: B006 -- typer reads the default; it is never changed
    as_json: Json = False,
) -> None:
    """Send a finished batch's failed rows (or those of --statuses) again."""
    chosen = [part for given in statuses for part in given.split(",") if part]
    _control(batch_id, "retry", as_json, {"statuses": chosen})


@app.command(rich_help_panel=BATCHES_PANEL)
def export(
    batch_id: BatchId,
    out: Annotated[Path, typer.Option("-o", "--output", help="The CSV file to write.")],
    only: Annotated[
        str | None, typer.Option("--status", help="Only rows with this ledger status.")
    ] = None,
) -> None:
    """Write the batch's ledger, every row, to a CSV file (replaced only once it is whole)."""

    def command() -> int:
        params = {"format": "csv", **({"status": only} if only else {})}
        with _herald() as api, replaced_on_success(out) as file:
            api.download(f"/v1/sms/batch/{batch_id}/messages", file, "text/csv", **params)
        say(f"wrote {escape(str(out))}")
        return EXIT_OK

    _run(command)


@app.command("errors", rich_help_panel=BATCHES_PANEL)
def rejected(batch_id: BatchId, as_json: Json = False) -> None:
    """The rows validation refused, with their codes."""

    def command() -> int:
        with _herald() as api:
            rows = api.every(f"/v1/sms/batch/{batch_id}/errors", "rejected_rows")
        if as_json:
            show_json(rows)
        else:
            show_table(("row_number", "value", "code", "message"), rows, title="rejected rows")
        return EXIT_OK

    _run(command)


@app.command(rich_help_panel=BATCHES_PANEL)
def numbers(as_json: Json = False) -> None:
    """The account's sender numbers and sender IDs."""

    def command() -> int:
        with _herald() as api:
            listed = api.every("/v1/sms/numbers", "numbers")
        if as_json:
            show_json(listed)
        else:
            show_table(("number", "kind", "channel", "mps", "webhook"), listed, title="numbers")
        return EXIT_OK

    _run(command)


@app.command(
    "keys",
    rich_help_panel=OPERATOR_PANEL,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def keys_command(ctx: typer.Context) -> None:
    """API keys: `herald keys create|list|revoke` (`herald keys --help`)."""
    raise typer.Exit(keys.main(["keys", *ctx.args]))


def main() -> None:
    app(prog_name="herald")


if __name__ == "__main__":
    main()
