"""Campaigns: a sender and a message template per language, checked when saved."""

import re
import uuid
from datetime import datetime

import asyncpg

from activities.recipients.phones import to_e164
from activities.recipients.rows import template_parts
from api import pagination
from api.campaign_models import CampaignRequest, CampaignUpdate, Language
from api.errors import HeraldError
from api.services.batches import (
    AgentNumberNotFound,
    CampaignNotFound,
    campaign_or_404,
    parse_batch_id,
)
from settings import Settings
from store import campaigns, numbers

PARAMETER_NAME = re.compile(r"[a-z0-9_]+")
# The first two columns of a campaign's file (the Postman dialect's), before its parameters.
RECIPIENT = "recipient"
LANGUAGE = "language"
# A template that takes its whole text from the file uses this one parameter alone.
BODY_PARAMETER = "body"


class InvalidTemplate(HeraldError):
    code = "INVALID_TEMPLATE"


def template_parameters(templates: dict[Language, str], max_chars: int) -> list[str]:
    """The parameters the templates use, in order of first use; InvalidTemplate unless each
    template has at most `max_chars` characters (a message's most), each parameter is a
    valid name other than the file's first columns', `body` is alone, and every template
    uses the same ones (one file, whose columns are the parameters, holds the rows of every
    language)."""
    found: dict[Language, list[str]] = {}
    for language in Language:
        if language not in templates:
            continue
        template = templates[language]
        if not template.strip():
            raise InvalidTemplate(f"the {language} template is empty")
        if len(template) > max_chars:
            raise InvalidTemplate(
                f"the {language} template has {len(template)} characters; a message has at"
                f" most {max_chars} (HERALD_MAX_MESSAGE_CHARS)"
            )
        names = list(dict.fromkeys(template_parts(template)[1::2]))
        for name in names:
            if not PARAMETER_NAME.fullmatch(name):
                raise InvalidTemplate(
                    f"the {language} template's parameter {{{{{name}}}}} is not lowercase"
                    " letters, digits and _"
                )
            if name in (RECIPIENT, LANGUAGE):
                raise InvalidTemplate(
                    f"the {language} template's parameter {{{{{name}}}}} is named as the file's"
                    f" {name!r} column; a parameter is a column of its own after {RECIPIENT!r}"
                    f" and {LANGUAGE!r}"
                )
        if BODY_PARAMETER in names and len(names) > 1:
            raise InvalidTemplate(
                f"the {language} template uses {{{{body}}}} with other parameters; {{{{body}}}}"
                " is the only parameter of a template that uses it"
            )
        found[language] = names
    first, *others = found.items()
    for language, names in others:
        if set(names) != set(first[1]):
            raise InvalidTemplate(
                f"the {language} template's parameters {sorted(names)} are not the {first[0]}"
                f" template's {sorted(first[1])}; every template uses the same parameters"
            )
    return first[1]


async def _sender(pool: asyncpg.Pool, account_id: uuid.UUID, sender: str) -> str:
    number = to_e164(sender, require_valid=False)
    if number is None or not await numbers.has_number(pool, account_id, number, channel="sms"):
        raise AgentNumberNotFound(
            f"{sender} is not a sender of this account registered for SMS, as a campaign's is"
        )
    return number


def _stored_templates(templates: dict[Language, str]) -> dict[str, str]:
    return {str(language): text for language, text in templates.items()}


def _campaign_id(campaign_id: str) -> uuid.UUID:
    return parse_batch_id(campaign_id, CampaignNotFound)


async def create_campaign(
    pool: asyncpg.Pool, settings: Settings, account_id: uuid.UUID, body: CampaignRequest
) -> dict:
    parameters = template_parameters(body.templates, settings.max_message_chars)
    return await campaigns.create_campaign(
        pool,
        account_id,
        name=body.name,
        sender=await _sender(pool, account_id, body.sender),
        templates=_stored_templates(body.templates),
        parameters=parameters,
        allowed_ips=body.allowed_ips,
    )


async def get_campaign(pool: asyncpg.Pool, account_id: uuid.UUID, campaign_id: str) -> dict:
    return await campaign_or_404(pool, account_id, campaign_id)


async def list_campaigns(
    pool: asyncpg.Pool, account_id: uuid.UUID, *, limit: int, cursor: str | None
) -> tuple[list[dict], str | None]:
    """A page of the account's campaigns, oldest first, and the next page's cursor."""
    after = pagination.decode(cursor, (datetime, uuid.UUID), of="campaigns")
    rows = await campaigns.list_campaigns(pool, account_id, limit=limit + 1, after=after)
    return pagination.page(rows, limit, lambda r: (r["created_at"], r["id"]), of="campaigns")


async def update_campaign(
    pool: asyncpg.Pool,
    settings: Settings,
    account_id: uuid.UUID,
    campaign_id: str,
    body: CampaignUpdate,
) -> dict:
    """Change the given fields, each checked; new templates are checked as a whole. Fields
    left out are not written, so a change made meanwhile to one of them stays."""
    templates, parameters = body.templates, None
    if templates is not None:
        parameters = template_parameters(templates, settings.max_message_chars)
    updated = await campaigns.update_campaign(
        pool,
        account_id,
        _campaign_id(campaign_id),
        name=body.name,
        sender=None if body.sender is None else await _sender(pool, account_id, body.sender),
        templates=None if templates is None else _stored_templates(templates),
        parameters=parameters,
        allowed_ips=body.allowed_ips,
        clear_allowed_ips=body.clear_allowed_ips,
    )
    if updated is None:
        raise CampaignNotFound(f"no campaign {campaign_id!r} in this account")
    return updated


async def delete_campaign(pool: asyncpg.Pool, account_id: uuid.UUID, campaign_id: str) -> str:
    if not await campaigns.delete_campaign(pool, account_id, _campaign_id(campaign_id)):
        raise CampaignNotFound(f"no campaign {campaign_id!r} in this account")
    return campaign_id
