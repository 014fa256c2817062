"""`HERALD_ENV=production`: no start on the local stack's defaults; the Temporal connection
settings for a real cluster."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.service import TLSConfig

from settings import Settings, refusal
from temporal_client import connect_options
from tests.support.production import PRODUCTION

# Every setting production requires, as an operator would set them.
ENTRY_POINTS = {
    "worker": [sys.executable, "-m", "worker"],
    "api": [sys.executable, "-m", "uvicorn", "--factory", "api.app:app_from_env"],
}


def start(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return subprocess.run(
        argv, env=clean | env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("role", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        ("HERALD_TWILIO_API_URL", "local emulator"),
        ("HERALD_TWILIO_AUTH_TOKEN", "emulator's token"),
        ("HERALD_PUBLIC_URL", "delivery receipts"),
        ("HERALD_DATABASE_URL", "PostgreSQL"),
        ("HERALD_TEMPORAL_ADDRESS", "Temporal"),
    ],
)
def test_a_production_start_without_a_setting_exits_naming_it(
    role: str, missing: str, reason: str
) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != missing}

    started = start(ENTRY_POINTS[role], env)

    assert started.returncode == 2, started.stderr
    lines = [line for line in started.stderr.splitlines() if line.startswith("HERALD_")]
    assert len(lines) == 1, started.stderr
    assert lines[0].startswith(f"{missing}: ") and reason in lines[0]
    assert "Traceback" not in started.stderr


@pytest.mark.parametrize("role", sorted(ENTRY_POINTS))
def test_a_setting_that_cannot_be_parsed_at_all_exits_naming_it(role: str) -> None:
    # pydantic-settings refuses a complex value that is no JSON before any validation: the
    # process ended in its traceback.
    started = start(ENTRY_POINTS[role], {**PRODUCTION, "HERALD_PRICES": "x"})

    assert started.returncode == 2, started.stderr
    assert "Herald refuses to start:" in started.stderr and '"prices"' in started.stderr
    assert "Traceback" not in started.stderr


def test_development_defaults_are_each_refused_in_production() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(env="production")

    named = {line.split(":")[0] for line in refusal(refused.value).splitlines()}
    assert named == {
        "HERALD_TWILIO_API_URL",
        "HERALD_TWILIO_ACCOUNT_SID",
        "HERALD_TWILIO_AUTH_TOKEN",
        "HERALD_PUBLIC_URL",
        "HERALD_DATABASE_URL",
        "HERALD_TEMPORAL_ADDRESS",
    }


CARRIER_REACHES = "the address the carrier reaches"


@pytest.mark.parametrize(
    ("name", "url", "meant"),
    [
        ("HERALD_PUBLIC_URL", "https://sms.example.com", CARRIER_REACHES),
        ("HERALD_PUBLIC_URL", "https://herald.test/", CARRIER_REACHES),
        ("HERALD_RECEIPTS_PUBLIC_URL", "https://receipts.sms.example.org", CARRIER_REACHES),
        (
            "HERALD_TEMPORAL_UI_URL",
            "https://temporal-ui.example.com",
            "the Temporal UI's address, which replies link to",
        ),
    ],
)
def test_a_url_on_a_domain_reserved_for_examples_is_a_placeholder_and_refused(
    name: str, url: str, meant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in PRODUCTION.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HERALD_RECEIPTS_PORT", "8010")
    monkeypatch.setenv("HERALD_RECEIPTS_PUBLIC_URL", "https://receipts.herald-ops.net")
    monkeypatch.setenv(name, url)

    with pytest.raises(ValidationError) as refused:
        Settings()

    assert refusal(refused.value).splitlines() == [
        f"{name}: {url} is on a domain reserved for examples, the example configuration's"
        f" placeholder: set {meant}"
    ]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8099", "http://localhost:8099", "http://[::1]"])
def test_a_carrier_on_loopback_is_the_emulator_and_refused(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in PRODUCTION.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HERALD_TWILIO_API_URL", url)

    with pytest.raises(ValidationError, match="HERALD_TWILIO_API_URL: a loopback address"):
        Settings()


def test_a_complete_production_environment_starts_and_hides_its_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in PRODUCTION.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HERALD_TEMPORAL_API_KEY", "cloud-key")

    settings = Settings()

    assert settings.dsn == PRODUCTION["HERALD_DATABASE_URL"]
    shown = repr(settings)
    for secret in ("a-real-token", "secret@", "cloud-key"):
        assert secret not in shown


def test_a_database_password_apart_is_encoded_into_the_url_in_place_of_its_own() -> None:
    settings = Settings(
        database_url="postgresql://herald:old@db.herald-ops.net:5432/herald",
        database_password="k/9#Qz@L%",
    )

    assert settings.dsn == "postgresql://herald:k%2F9%23Qz%40L%25@db.herald-ops.net:5432/herald"


def test_without_tls_settings_temporal_is_plaintext() -> None:
    options = connect_options(Settings(temporal_namespace="herald"))

    assert options == {"namespace": "herald", "api_key": None, "tls": False}


def test_an_api_key_turns_tls_on_with_the_system_cas() -> None:
    options = connect_options(Settings(temporal_api_key="cloud-key"))

    assert options["api_key"] == "cloud-key"
    assert options["tls"] == TLSConfig()


def test_mutual_tls_reads_the_ca_certificate_and_key_files(tmp_path: Path) -> None:
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_bytes(f"{name} pem".encode())

    options = connect_options(
        Settings(
            temporal_tls_ca_path=tmp_path / "ca.pem",
            temporal_tls_cert_path=tmp_path / "cert.pem",
            temporal_tls_key_path=tmp_path / "key.pem",
            temporal_tls_server_name="temporal.internal",
        )
    )

    assert options["tls"] == TLSConfig(
        server_root_ca_cert=b"ca pem",
        client_cert=b"cert pem",
        client_private_key=b"key pem",
        domain="temporal.internal",
    )


def test_a_receipts_port_without_its_public_url_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in PRODUCTION.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HERALD_RECEIPTS_PORT", "8010")

    with pytest.raises(ValidationError, match="HERALD_RECEIPTS_PUBLIC_URL: unset with"):
        Settings()
    monkeypatch.setenv("HERALD_RECEIPTS_PUBLIC_URL", "https://receipts.herald-ops.net")
    # The carrier is given the listener's URL; without a receipts port, the API's.
    assert Settings().status_callback_url == (
        "https://receipts.herald-ops.net/v1/webhooks/twilio/status"
    )
    monkeypatch.delenv("HERALD_RECEIPTS_PORT")
    assert Settings().status_callback_url == (
        PRODUCTION["HERALD_PUBLIC_URL"] + "/v1/webhooks/twilio/status"
    )


@pytest.mark.parametrize("seconds", ["0", "30"])
def test_a_webhook_timeout_the_delivery_heartbeat_would_outlast_is_refused(
    seconds: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 30 s or more, a receiver that never answered outlasted the delivery call's heartbeat
    # timeout: Temporal retried the call before it recorded the attempt, for good.
    monkeypatch.setenv("HERALD_WEBHOOK_TIMEOUT_SECONDS", seconds)

    with pytest.raises(ValidationError) as refused:
        Settings()

    assert "HERALD_WEBHOOK_TIMEOUT_SECONDS" in refusal(refused.value)


@pytest.mark.parametrize("setting", ["chunk_window", "inline_slices"])
def test_a_window_or_inline_limit_of_no_chunk_is_refused(setting: str) -> None:
    # A window of no chunk sent nothing: a batch's run waited for a place forever.
    with pytest.raises(ValidationError, match=setting):
        Settings.model_validate({setting: 0})
