"""Herald's one settings object, read from `HERALD_*` environment variables."""

import ipaddress
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

# Where the carrier posts delivery receipts, under Herald's public URL.
STATUS_CALLBACK_PATH = "/v1/webhooks/twilio/status"
# Where the carrier posts the messages users send to the account's numbers.
INBOUND_PATH = "/v1/webhooks/twilio/inbound"
# The rate limits a sender may have, in messages per second; migration 050 keeps the stored
# ones in this range too, so the pacing arithmetic in PostgreSQL cannot overflow.
SENDER_MPS_MIN = 0.01
SENDER_MPS_MAX = 10_000.0
ENV_PREFIX = "HERALD_"
# The local emulator's credentials: anyone reading this file knows them.
DEV_ACCOUNT_SID = "AC" + "0" * 32
DEV_AUTH_TOKEN = "dev-auth-token"


# A dry run's default prices per SMS segment, in USD: illustrative list prices of an
# outbound SMS to a mobile number (mid-2025); set HERALD_PRICES to your carrier's.
DEFAULT_PRICES = {
    "US": 0.0083,
    "CA": 0.0083,
    "GB": 0.0524,
    "IE": 0.0768,
    "DE": 0.0946,
    "FR": 0.0892,
    "ES": 0.0884,
    "AU": 0.0515,
}


# Names reserved for examples and tests (RFC 2606, RFC 6761): a URL on one is a manifest's
# placeholder left as it was, never where a carrier reaches a deployment.
PLACEHOLDER_DOMAINS = ("example.com", "example.net", "example.org", "example", "test", "invalid")


def _is_placeholder(url: str) -> bool:
    host = (urlsplit(url).hostname or "").rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in PLACEHOLDER_DOMAINS)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    env: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses to start with any of the local stack's defaults,"
        " or with settings meant for one machine only (`allow_loopback_webhooks`).",
    )
    home: Path = Field(Path(".herald"), description="Local state: PostgreSQL data, Temporal file.")
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL DSN; unset means the local stack starts embedded PostgreSQL."
    )
    database_password: SecretStr | None = Field(
        None,
        description="The password of `database_url`'s user, as it is: Herald encodes it into"
        " the URL, where a `/`, `#`, `@` or `%` of its own would break the URL. It replaces"
        " any password the URL holds.",
    )
    temporal_address: str | None = Field(
        None, description="Temporal frontend host:port; unset means the local dev server."
    )
    temporal_namespace: str = "default"
    task_queue: str = Field(
        "herald-sms",
        description="Task queue of the workflows and their short activities; the send"
        " activities go to `<task_queue>-send` (see `worker_role`).",
    )
    worker_role: Literal["all", "control", "send"] = Field(
        "all",
        description="What a worker process serves: `control` the task queue (workflows,"
        " validation, status events, ledger steps), `send` the send queue (carrier requests"
        " only), `all` both. Apart, a batch's carrier requests cannot slow another batch's"
        " steps (docs/WORKFLOWS.md, Fairness between batches).",
    )
    temporal_api_key: SecretStr | None = Field(
        None, description="API key for Temporal Cloud; setting it turns TLS on."
    )
    temporal_tls: bool = Field(
        False, description="TLS to the Temporal frontend, with the system's CAs unless given one."
    )
    temporal_tls_ca_path: Path | None = Field(
        None, description="PEM file of the CA that signed the frontend's certificate."
    )
    temporal_tls_cert_path: Path | None = Field(
        None, description="PEM client certificate, for mutual TLS (with the key below)."
    )
    temporal_tls_key_path: Path | None = Field(None, description="PEM key of that certificate.")
    temporal_tls_server_name: str | None = Field(
        None, description="Name to check the frontend's certificate against, if not its host."
    )

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    postgres_port: int = 5433
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    emulator_port: int = 8099
    emulator_status_callbacks: bool = Field(
        True, description="The local emulator posts delivery receipts (StatusCallback)."
    )
    temporal_ui_url: str | None = Field(
        None, description="Base URL of the Temporal web UI, for links in batch replies."
    )

    twilio_api_url: str | None = Field(
        None, description="Carrier API base URL; unset means the local emulator."
    )
    twilio_account_sid: str = DEV_ACCOUNT_SID
    twilio_auth_token: SecretStr = SecretStr(DEV_AUTH_TOKEN)
    verify_sender_ownership: bool | None = Field(
        None,
        description="Register a sender number only if the carrier account owns it (Twilio's"
        " IncomingPhoneNumbers). Unset: on, unless the credentials are the emulator's dev ones.",
    )
    public_url: str | None = Field(
        None,
        description="Herald's public base URL, for carrier StatusCallback URLs and short links"
        " (`/s/<code>`).",
    )
    receipts_port: int | None = Field(
        None,
        description="Port of the receipts listener each API process serves beside the API: the"
        " carrier's status callbacks alone, on a lean HTTP/1.1 server, at a third of their cost"
        " through the API's port. Unset: the StatusCallback URL is the API's own.",
    )
    receipts_public_url: str | None = Field(
        None,
        description="The base URL at which the carrier reaches the receipts listener (through"
        " a proxy, as PUBLIC_URL is the API's); the StatusCallback URL is it plus"
        " /v1/webhooks/twilio/status. Unset: http://API_HOST:RECEIPTS_PORT.",
    )

    max_upload_bytes: int = 40 * 1024 * 1024
    max_body_bytes: int = Field(
        1024 * 1024,
        description="Largest request body other than a file upload or a batch request"
        " (413 beyond).",
    )
    max_batch_body_bytes: int = Field(
        8 * 1024 * 1024,
        description="Largest body of a batch request with its recipients inline"
        " (`POST /v1/sms/batch`, `POST /send/batch`; 413 beyond).",
    )
    rate_limit_per_second: float = Field(
        20.0, gt=0, description="Requests a second allowed per API key, on average (429 beyond)."
    )
    rate_limit_burst: int = Field(
        100, ge=1, description="Requests an API key may make at once before the rate applies."
    )
    campaign_rate_limit_per_second: float = Field(
        10.0,
        gt=0,
        description="Requests a second allowed per campaign on the Postman dialect's routes,"
        " from all API processes together; as many at once (429 beyond).",
    )
    max_rows_per_batch: int = Field(
        1_000_000, description="Rows a recipient file may hold; more fails it (too_many_rows)."
    )
    max_message_chars: int = Field(
        1600, description="Characters a rendered message may have (message_too_long)."
    )
    chunk_size: int = Field(
        5000,
        description="Recipients per ChunkWorkflow (a spread batch's at most 500). A batch not"
        " spread of more than `inline_slices` slices has 5 rounds of `chunk_window` chunks"
        " instead when those are larger, in whole slices, each at most `inline_slices` slices"
        " and a minute of a rate-limited sender's sending (never under this).",
    )
    slice_size: int = Field(
        1000,
        description="Recipients per send activity, at most: a batch from a rate-limited sender"
        " gets slices of `slice_seconds` of its sending, the rate shared by its slices in"
        " flight.",
    )
    slice_seconds: float = Field(
        50.0,
        gt=0,
        description="How long one send activity of a rate-limited sender lasts at most, so"
        " that a stopping worker finishes its slice within its shutdown grace.",
    )
    chunk_window: int = Field(4, ge=1, description="ChunkWorkflows running at once per batch.")
    slices_in_flight: int = Field(
        2,
        description="Send activities running at once per chunk; a batch of fewer chunks than"
        " `chunk_window`, sent from its own workflow, shares the window's"
        " `chunk_window` x this among them.",
    )
    inline_slices: int = Field(
        100,
        ge=1,
        description="A batch not spread whose recipients fit this many send slices sends them"
        " from its own workflow, without ChunkWorkflows: no child's start and end on its path"
        " to the first message and to its final event, nor for each chunk. Its history holds"
        " every slice (about 7 events each, 671 in all at 100 slices): far below the 4,096 at"
        " which Temporal suggests continuing as new.",
    )
    send_concurrency: int = Field(96, description="Carrier requests in flight per send activity.")
    chunks_per_run: int = Field(
        200, description="Chunks a BatchWorkflow run starts before it continues as new."
    )
    send_heartbeat_timeout_seconds: float = Field(
        30.0,
        description="A send activity silent this long is presumed dead (its worker crashed) and"
        " its slice is retried on another worker; rows it left `sending` become `uncertain`.",
    )
    sticky_timeout_seconds: float = Field(
        10.0,
        description="How long a workflow task waits for the worker that ran the workflow last"
        " before any worker takes it: after a worker crash, its workflows wait this long.",
    )
    max_concurrent_activities: int = 16
    validations_at_once: int = Field(
        2,
        ge=1,
        description="Recipient files of over 1 MiB (or with mailing lists) one worker process"
        " validates at once, from their own task queue: the others wait there, for this"
        " worker or another, holding no worker's slot. Each 1M-row validation takes about"
        " 150 MB and both cores: more at once only shares them, and can overrun the memory"
        " limit.",
    )
    worker_shutdown_grace_seconds: float = Field(
        0.0,
        description="After SIGTERM, how long running activities may go on before they are"
        " cancelled (a cancelled send finishes its requests on the wire, puts the rest of its"
        " slice back, and another worker resumes it). Keep the pod's termination grace longer"
        " by the carrier timeout.",
    )
    default_sender_mps: float | None = Field(
        10.0,
        ge=SENDER_MPS_MIN,
        le=SENDER_MPS_MAX,
        allow_inf_nan=False,
        description="Rate limit of a sender number registered without one.",
    )
    worker_processes: int = Field(
        2, description="Workers the local stack starts; they share the task queues."
    )
    control_worker: bool = Field(
        False,
        description="Whether the local stack runs its workers as `worker_processes` send workers"
        " and one control worker apart; false: `worker_processes` workers of role `all`.",
    )
    migrate_on_start: bool = Field(
        True,
        description="Whether the API and each worker apply the database's pending migrations"
        " as they start (one at a time, under a lock). false: they only check that none is"
        " pending, and refuse to start naming them, leaving migrations to `python -m"
        " deploy.prepare` (the image's `prepare`): a long migration is then not cut short by a"
        " pod's startup probe, nor raced by pods an autoscaler starts.",
    )
    webhook_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=25,
        description="Timeout of one webhook POST. At most 25 s: a batch's delivery call"
        " heartbeats before each post and Temporal takes it for dead after 30 s without one,"
        " so a longer wait on a receiver that never answers was retried for good, unrecorded.",
    )
    allow_loopback_webhooks: bool = Field(
        False,
        description="Let webhooks go to 127.0.0.1/::1, any port: for the local stack and tests"
        " only; refused when `env` is `production`.",
    )
    webhook_retry_schedule_seconds: list[float] = Field(
        [5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800],
        description="Delays before each retry of a status webhook event (JSON list); after"
        " the last, the event is given up on. About 15 hours in all, before jitter.",
    )
    webhook_retry_jitter: float = Field(
        0.2, description="Each retry delay is spread by up to this fraction, either way."
    )
    webhook_secret_overlap_hours: float = Field(
        24.0, description="How long the previous webhook secret still signs after a rotation."
    )
    carrier_timeout_seconds: float = 30.0
    reconcile_margin_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="Reconciliation waits the carrier timeout and then this long after an"
        " `uncertain` row last changed before it asks the carrier: no request of an attempt"
        " presumed dead can land after that, as a batch row written more than this after its"
        " wave was marked renews its mark first (0: every row does).",
    )
    carrier_outage_seconds: float = Field(
        120.0,
        gt=0,
        description="The retry window: a send slice whose every request the carrier throttles"
        " (20429/429) or cannot take (no connection, 5xx) for this long stops retrying, and"
        " every running batch of the account pauses once (`carrier_throttled`,"
        " `carrier_unreachable`).",
    )
    carrier_throttle_pause_seconds: float = Field(
        60.0,
        gt=0,
        description="How long batches paused for `carrier_throttled` stay paused before they"
        " resume by themselves (at least the carrier's Retry-After); twice as long for each"
        " back-off in a row the throttling outlasts, up to an hour.",
    )
    unused_file_days: int = Field(
        30,
        ge=1,
        description="Days a file attached with `POST /v1/files/attach` is kept while no batch"
        " names it; then housekeeping deletes it (a batch's file is kept with its batch).",
    )
    idempotency_ttl_hours: int = Field(
        24, description="How long an `idempotency-key` of a single send keeps its first reply."
    )
    idempotency_wait_seconds: float = Field(
        30.0, description="How long a repeated request waits for the first one with its key."
    )
    prices: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="Price of one SMS segment by recipient country (ISO 3166 alpha-2), as"
        " JSON, for a dry run's cost estimate; a country left out is counted as unknown.",
    )
    price_currency: str = Field(
        "USD", min_length=1, description="The currency of `prices`, named in the estimate."
    )
    help_reply: str = Field(
        "Reply STOP to unsubscribe, START to subscribe again.",
        description="Sent to a user who texts HELP.",
    )

    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the worker's metrics endpoints listen on (0.0.0.0 in a container).",
    )
    worker_metrics_port: int | None = Field(
        None,
        description="Port of the worker's Herald series (`/metrics`) and `/healthz`;"
        " unset: not served. The API serves its series at `/metrics` on its own port.",
    )
    temporal_metrics_port: int | None = Field(
        None,
        description="Port of the Temporal SDK's Prometheus endpoint in the worker (`/metrics`:"
        " workflow task latency, schedule-to-start, slots); unset: not served.",
    )
    log_level: str = "INFO"
    health_file: Path | None = Field(
        None,
        description="A worker names itself in this file (pid, start time) and touches it every"
        " 5 s while it runs; the container probe (`python -m deploy.healthcheck`) reads its age"
        " and checks that its writer still runs.",
    )

    def production_problems(self) -> list[str]:
        """The development defaults still in force, one line each, naming its setting."""
        problems: list[str] = []
        if self.twilio_api_url is None:
            problems.append("TWILIO_API_URL: unset, messages would go to the local emulator")
        elif _is_loopback(self.twilio_api_url):
            problems.append("TWILIO_API_URL: a loopback address is the local emulator")
        if self.twilio_account_sid == DEV_ACCOUNT_SID:
            problems.append("TWILIO_ACCOUNT_SID: still the local emulator's account")
        if self.twilio_auth_token.get_secret_value() == DEV_AUTH_TOKEN:
            problems.append("TWILIO_AUTH_TOKEN: still the local emulator's token")
        if self.public_url is None:
            problems.append(
                "PUBLIC_URL: unset, the carrier could not post delivery receipts and short links"
                " would lead nowhere"
            )
        if self.receipts_port is not None and self.receipts_public_url is None:
            problems.append(
                "RECEIPTS_PUBLIC_URL: unset with RECEIPTS_PORT, the carrier would be given"
                " this host's own address for its delivery receipts"
            )
        for name, url, meant in (
            ("PUBLIC_URL", self.public_url, "the address the carrier reaches"),
            ("RECEIPTS_PUBLIC_URL", self.receipts_public_url, "the address the carrier reaches"),
            (
                "TEMPORAL_UI_URL",
                self.temporal_ui_url,
                "the Temporal UI's address, which replies link to",
            ),
        ):
            if url is not None and _is_placeholder(url):
                problems.append(
                    f"{name}: {url} is on a domain reserved for examples, the example"
                    f" configuration's placeholder: set {meant}"
                )
        if self.database_url is None:
            problems.append("DATABASE_URL: unset, no embedded PostgreSQL runs in production")
        if self.temporal_address is None:
            problems.append("TEMPORAL_ADDRESS: unset, no Temporal dev server runs in production")
        if self.allow_loopback_webhooks:
            problems.append(
                "ALLOW_LOOPBACK_WEBHOOKS=true: it lets any account's webhook reach services on"
                " this host (PostgreSQL included)"
            )
        return [ENV_PREFIX + problem for problem in problems]

    @field_validator("prices")
    @classmethod
    def _prices_by_country(cls, prices: dict[str, float]) -> dict[str, float]:
        for country, price in prices.items():
            if len(country) != 2 or not (country.isascii() and country.isupper()):
                raise ValueError(f"PRICES: {country!r} is not an ISO 3166 alpha-2 code, e.g. US")
            if not 0 <= price < float("inf"):
                raise ValueError(f"PRICES: {country}'s price {price} is not a finite price >= 0")
        return prices

    @model_validator(mode="after")
    def _no_development_defaults_in_production(self) -> Self:
        if self.env == "production" and (problems := self.production_problems()):
            raise ValueError("\n".join(problems))
        return self

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_port}"

    @property
    def temporal_ui_base(self) -> str:
        return self.temporal_ui_url or f"http://127.0.0.1:{self.temporal_ui_port}"

    @property
    def checks_sender_ownership(self) -> bool:
        if self.verify_sender_ownership is not None:
            return self.verify_sender_ownership
        dev = (DEV_ACCOUNT_SID, DEV_AUTH_TOKEN)
        return (self.twilio_account_sid, self.twilio_auth_token.get_secret_value()) != dev

    @property
    def carrier_url(self) -> str:
        return self.twilio_api_url or f"http://127.0.0.1:{self.emulator_port}"

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def receipts_url(self) -> str:
        """Where the carrier posts delivery receipts: the receipts listener if there is one."""
        if self.receipts_port is None:
            return self.api_url
        return self.receipts_public_url or f"http://{self.api_host}:{self.receipts_port}"

    @property
    def status_callback_url(self) -> str:
        return self.receipts_url.rstrip("/") + STATUS_CALLBACK_PATH

    @property
    def send_task_queue(self) -> str:
        """The task queue of the send activities (`worker_role`)."""
        return f"{self.task_queue}-send"

    @property
    def validation_task_queue(self) -> str:
        """The task queue of the validation of large files (`validations_at_once`)."""
        return f"{self.task_queue}-validation"

    @property
    def dsn(self) -> str:
        if self.database_url is None:
            return f"postgresql://postgres@127.0.0.1:{self.postgres_port}/postgres"
        url = self.database_url.get_secret_value()
        if self.database_password is None:
            return url
        parts = urlsplit(url)
        credentials, _, host = parts.netloc.rpartition("@")
        user = credentials.partition(":")[0]
        password = quote(self.database_password.get_secret_value(), safe="")
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def refusal(error: ValidationError) -> str:
    """One line per problem, each naming its environment variable."""
    lines: list[str] = []
    for detail in error.errors():
        message = str(detail["msg"]).removeprefix("Value error, ")
        if detail["loc"]:
            lines.append(f"{ENV_PREFIX}{str(detail['loc'][0]).upper()}: {message}")
        else:
            lines.extend(message.splitlines())
    return "\n".join(lines)


@lru_cache
def get_settings() -> Settings:
    """The process's settings (load_settings)."""
    return load_settings()


class Refused(Exception):
    """Settings the environment holds and Herald refuses: `str` is a line per problem."""


def checked_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `overrides`, or Refused."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise Refused(refusal(error)) from None
    except SettingsError as error:
        # A value that cannot be parsed at all (`HERALD_PRICES=x`), before any validation.
        raise Refused(str(error)) from None


def load_settings(**overrides: Any) -> Settings:
    """`checked_settings`; refused, they stop the process with a line per problem (exit
    status 2), rather than a traceback."""
    try:
        return checked_settings(**overrides)
    except Refused as refused:
        sys.stderr.write(f"Herald refuses to start:\n{refused}\n")
        raise SystemExit(2) from None


def read_dev_file(path: Path) -> dict[str, Any]:
    """The local stack's `dev.json` (its API, key and sender, written by `make run`); empty
    when there is none. OSError or ValueError when it cannot be read as a JSON object."""
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    if not isinstance(found, dict):
        raise ValueError("not a JSON object")
    return found
