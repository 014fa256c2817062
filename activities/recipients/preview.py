"""A dry run: a file's outcomes under a batch's rules, counted and sampled, nothing written.

The same engines as validation (`columns` for a plain CSV file, `rows` for any other or one
that turns out not to be plain), so a dry run's figures are the batch's."""

from dataclasses import dataclass, field

from activities.recipients.columns import NotPlain, plain_csv
from activities.recipients.links import Codes, shorten_recipients
from activities.recipients.prices import Groups
from activities.recipients.rejections import (
    NO_VALID_RECIPIENTS,
    NOTHING_TO_SEND,
    Code,
    Rejected,
    SourceInvalid,
)
from activities.recipients.rows import (
    Recipient,
    RecipientRules,
    Tally,
    build_recipients,
    header_issue,
    read_rows,
    strict_failure,
)

# How many rejected rows and rendered messages a dry run lists.
REJECTED_LISTED = 100
MESSAGES_LISTED = 20


@dataclass(kw_only=True)
class Preview:
    """What validation would make of the file; `code` and `reason` when it would fail."""

    tally: Tally = field(default_factory=Tally)
    rejected: list[Rejected] = field(default_factory=list)
    messages: list[Recipient] = field(default_factory=list)
    # The messages to be sent by the prefix that decides their country, for the cost.
    groups: Groups = field(default_factory=Groups)
    code: str | None = None
    reason: str | None = None


def preview(
    content: bytes, rules: RecipientRules, *, strict: bool, short_links_base: str | None = None
) -> Preview:
    """Validate `content` under `rules` in memory; CPU-bound, so run it off the event loop.
    With `short_links_base`, URLs are shortened as validation would (the row path, as
    there), with codes that are not recorded."""
    try:
        result = None
        if short_links_base is None:
            result, header = _by_columns(content, rules)
        if result is None:
            result, header = _by_rows(content, rules, short_links_base)
    except SourceInvalid as error:
        return Preview(code=error.code, reason=error.reason)
    issue = header_issue(header, rules.column_mapping)
    if issue is not None:
        result.rejected = [issue, *result.rejected][:REJECTED_LISTED]
    failure = strict_failure(issue, result.tally) if strict else None
    if failure is not None:
        result.code, result.reason = Code.VALIDATION_FAILED.value, failure
    elif result.tally.recipients == result.tally.skipped:
        result.code, result.reason = NO_VALID_RECIPIENTS, NOTHING_TO_SEND
    return result


def _by_columns(content: bytes, rules: RecipientRules) -> tuple[Preview | None, list[str]]:
    plain = plain_csv(content, rules)
    if plain is None:
        return None, []
    result = Preview(tally=plain.tally)
    try:
        for block in plain.blocks():
            _keep(result.rejected, block.rejected, REJECTED_LISTED)
            result.groups.add_frame(block.ledger)
            room = MESSAGES_LISTED - len(result.messages)
            if room > 0:
                result.messages += [
                    Recipient(
                        row["row_number"],
                        row["to_number"],
                        row["body"],
                        row["encoding"],
                        row["segments"],
                        row["skip_code"],
                    )
                    for row in block.ledger.head(room).iter_rows(named=True)
                ]
    except NotPlain:
        return None, []
    return result, plain.header


def _by_rows(
    content: bytes, rules: RecipientRules, short_links_base: str | None
) -> tuple[Preview, list[str]]:
    header, rows = read_rows(content)
    result = Preview()
    codes = Codes()
    for outcome in build_recipients(header, rows, rules):
        if short_links_base is not None and isinstance(outcome, Recipient):
            shorten_recipients([outcome], short_links_base, codes)
        result.tally.count(outcome)
        if isinstance(outcome, Rejected):
            _keep(result.rejected, [outcome], REJECTED_LISTED)
            continue
        if outcome.skip_code is None:
            result.groups.add(outcome.to_number, outcome.segments)
        if len(result.messages) < MESSAGES_LISTED:
            result.messages.append(outcome)
    return result, header


def _keep(kept: list[Rejected], more: list[Rejected], limit: int) -> None:
    kept += more[: max(0, limit - len(kept))]
