"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked offline
(no container runtime or cluster here) against the schemas the installed packages ship:
the compose specification's (vendored by check-jsonschema, Apache-2.0) and Kubernetes'
(kubernetes-validate)."""

import asyncio
import copy
import fnmatch
import json
import re
import struct
import tomllib
from collections import ChainMap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import ValidationError

from settings import ENV_PREFIX, Settings, refusal
from store.db import create_pool
from tests.kustomize import Resource, containers, render

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
SECRET_EXAMPLE = KUBERNETES / "secret.example.yaml"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
# The oldest Kubernetes release the manifests must suit, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
SETTINGS = set(Settings.model_fields)
# The example configurations' placeholders (on example.com, which a production start refuses),
# as an operator fills them in.
FILLED_URLS = {
    "HERALD_PUBLIC_URL": "https://sms.herald-ops.net",
    "HERALD_RECEIPTS_PUBLIC_URL": "https://receipts.sms.herald-ops.net",
}
# Each overlay's placeholders, filled in: helm-temporal's Temporal UI too (Temporal Cloud's is
# cloud.temporal.io, compose's on the host's loopback).
OVERLAY_URLS = {
    "helm-temporal": FILLED_URLS | {"HERALD_TEMPORAL_UI_URL": "https://temporal-ui.herald-ops.net"},
    "temporal-cloud": FILLED_URLS,
}
# The StatusCallback URL the filled configurations give the carrier: the receipts listeners'.
RECEIPTS_CALLBACK = "https://receipts.sms.herald-ops.net/v1/webhooks/twilio/status"
# A database password as `openssl rand -base64` writes them, and the other characters a URL
# reserves.
DATABASE_PASSWORD = "k/9#Qz@Lw+%41="
# The first message of a client that asks the server for TLS (PostgreSQL's SSLRequest).
SSL_REQUEST = 80877103


def compose_schema() -> dict[str, Any]:
    schema = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    return json.loads(schema.read_text())


def compose_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def kubernetes_errors(resource: Resource) -> list[str]:
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{version} {resource['kind']}: {error.message}")
    return errors


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def example_env() -> dict[str, str]:
    lines = (DEPLOY / "compose" / "example.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`."""

    def replace(match: re.Match[str]) -> str:
        name, operator, rest = match.group(1), match.group(2), match.group(3)
        if name in variables:
            return variables[name]
        assert operator == ":-", f"{name} is required and example.env lacks it"
        return rest

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", replace, value)


def placeholders(error: ValidationError) -> set[str]:
    """The settings a production start refused as left at an example's placeholder."""
    return {
        line.split(":")[0]
        for line in refusal(error).splitlines()
        if "reserved for examples" in line
    }


def rendered(overlay: str) -> list[Resource]:
    return render(KUBERNETES / "overlays" / overlay)


def named(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if (r["kind"], r["metadata"]["name"]) == (kind, name)]
    return found


def herald_variables(resources: list[Resource]) -> set[str]:
    """Every HERALD_* name a ConfigMap, Secret or container sets."""
    names: set[str] = set()
    for resource in resources:
        names |= set(resource.get("data", {})) | set(resource.get("stringData", {}))
        for container in containers(resource):
            names |= {variable["name"] for variable in container.get("env", [])}
    return {name for name in names if name.startswith(ENV_PREFIX)}


def pod_environment(overlay: str) -> dict[str, str]:
    """What a Herald pod of the overlay reads: its ConfigMap and the example Secret."""
    [secret] = yaml.safe_load_all(SECRET_EXAMPLE.read_text())
    config = named(rendered(overlay), "ConfigMap", "herald-config")
    return {**config["data"], **secret["stringData"]}


# The compose file.


def test_the_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(compose()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [(("api", "deploy", "replicas"), ["two"]), (("worker", "stop_grace_period"), {"s": 100})],
)
def test_the_compose_schema_check_catches_a_mistake(path: tuple[str, ...], value: object) -> None:
    broken = copy.deepcopy(compose())
    *parents, key = path
    parent = broken["services"]
    for name in parents:
        parent = parent[name]
    parent[key] = value

    errors = compose_errors(broken)

    assert any(e.startswith("$.services." + ".".join(path) + ":") for e in errors), errors


def test_compose_runs_the_stack_the_issue_names() -> None:
    services = compose()["services"]

    assert {"postgres", "temporal", "temporal-postgresql", "temporal-ui"} <= set(services)
    assert services["temporal"]["environment"]["POSTGRES_SEEDS"] == "temporal-postgresql"
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["prepare"]["command"] == ["prepare"]
    for role in ("api", "worker"):
        assert services[role]["depends_on"]["prepare"] == {
            "condition": "service_completed_successfully"
        }


def test_the_image_api_writes_no_access_line() -> None:
    # Its path holds phone numbers (an opt-out's, a conversation filter's) and short-link
    # codes, the only thing that guards a link; and it was a line per carrier callback.
    [api] = re.findall(r"exec uvicorn[^\n]*(?:\n[^\n]*\\)*\n[^\n]*", ENTRYPOINT.read_text())

    assert "--no-access-log" in api


def test_a_stopping_api_has_its_graceful_shutdown_before_it_is_killed() -> None:
    [graceful] = re.findall(r"--timeout-graceful-shutdown (\d+)", ENTRYPOINT.read_text())
    api = named(rendered("helm-temporal"), "Deployment", "herald-api")

    pod = api["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # Out of the endpoints before it stops accepting: the Service routes to it a while longer.
    [sleep, seconds] = container["lifecycle"]["preStop"]["exec"]["command"]

    assert int(compose()["services"]["api"]["stop_grace_period"].removesuffix("s")) > int(graceful)
    assert sleep == "sleep" and int(seconds) >= 3
    assert pod["terminationGracePeriodSeconds"] > int(seconds) + int(graceful)


def test_compose_publishes_the_consoles_without_a_login_on_the_hosts_loopback_only() -> None:
    services = compose()["services"]

    assert services["temporal-ui"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert compose_errors(compose()) == []


def test_compose_keeps_temporary_files_on_disk_beside_a_read_only_root() -> None:
    """Spooled uploads and the file a worker validates go to TMPDIR: a volume, not a tmpfs,
    which would count them against the container's memory; /tmp, with the worker's health
    file, stays a tmpfs, emptied at each start."""
    services = compose()["services"]
    for role in ("api", "worker"):
        service = services[role]
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        folder = service["environment"]["TMPDIR"]
        assert {"type": "volume", "target": folder} in service["volumes"]
        assert not folder.startswith("/tmp")


def test_compose_scrapes_every_metrics_port_and_provisions_the_dashboard() -> None:
    services = compose()["services"]
    image = DockerfileParser(path=str(DEPLOY / "Dockerfile")).envs
    scrape = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {
        (sd["names"][0], sd["port"])
        for job in scrape["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    mounted = [
        (DEPLOY / "compose" / volume.split(":")[0]).resolve()
        for role in ("prometheus", "grafana")
        for volume in services[role]["volumes"]
        if volume.startswith(".")
    ]

    assert targets == {
        ("api", int(image["HERALD_API_PORT"])),
        ("worker", int(image["HERALD_WORKER_METRICS_PORT"])),
        ("worker", int(image["HERALD_TEMPORAL_METRICS_PORT"])),
    }
    assert all(path.exists() for path in mounted), mounted
    assert (DEPLOY / "grafana").resolve() in mounted


def test_the_dashboard_takes_any_prometheus_data_source() -> None:
    # Every panel named compose's data source by its uid: imported into another Grafana (as
    # DEPLOY.md says for Kubernetes), every panel was "datasource not found".
    dashboard = json.loads((DEPLOY / "grafana" / "herald-dashboard.json").read_text())
    [variable] = dashboard["templating"]["list"]
    named_sources = [
        source
        for panel in dashboard["panels"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
    ]

    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    assert named_sources
    assert {source["uid"] for source in named_sources} == {"${" + variable["name"] + "}"}


def test_compose_configures_a_production_start(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = example_env()
    for role in ("prepare", "api", "worker"):
        environment = compose()["services"][role]["environment"]
        for name, value in environment.items():
            monkeypatch.setenv(name, interpolate(str(value), variables))
        with pytest.raises(ValidationError) as unfilled:
            Settings()
        for name, value in FILLED_URLS.items():
            monkeypatch.setenv(name, value)

        settings = Settings()

        assert placeholders(unfilled.value) == set(FILLED_URLS)
        assert settings.env == "production"
        assert settings.temporal_target == "temporal:7233"
        # The carrier's receipts go to the listeners' load balancer, on the API's port 8010.
        assert settings.status_callback_url == RECEIPTS_CALLBACK
        assert settings.receipts_port == 8010
        assert "8010-8011:8010" in compose()["services"]["api"]["ports"]


@asynccontextmanager
async def password_taker() -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A server speaking PostgreSQL's protocol up to the password, which it asks for in clear
    text and refuses; yields its `host:port` and what clients sent it (the startup message's
    parameters, `user` and `database` among them, and `password`)."""
    sent: dict[str, str] = {}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length, code = struct.unpack("!ii", await reader.readexactly(8))
        if code == SSL_REQUEST:
            writer.write(b"N")
            length, code = struct.unpack("!ii", await reader.readexactly(8))
        *pairs, _, _ = (await reader.readexactly(length - 8)).decode().split("\0")
        sent.update(zip(pairs[::2], pairs[1::2], strict=True))
        writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        _, length = struct.unpack("!ci", await reader.readexactly(5))
        sent["password"] = (await reader.readexactly(length - 4)).decode().removesuffix("\0")
        refused = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
        writer.write(b"E" + struct.pack("!i", 4 + len(refused)) + refused)
        await writer.drain()
        writer.close()

    async with await asyncio.start_server(serve, "127.0.0.1", 0) as server:
        host, port = server.sockets[0].getsockname()
        yield f"{host}:{port}", sent


async def test_compose_gives_postgresql_any_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pasted into the database URL, the password's `/` ended the URL's host: asyncpg read a
    port of the password's start, and `prepare`, the API and the workers never started."""
    variables = example_env() | {"POSTGRES_PASSWORD": DATABASE_PASSWORD}
    async with password_taker() as (address, sent):
        for name, value in compose()["services"]["prepare"]["environment"].items():
            # The compose file's database, moved to this test's server.
            value = interpolate(str(value), variables).replace("@postgres:5432/", f"@{address}/")
            monkeypatch.setenv(name, value)
        for name, value in FILLED_URLS.items():
            monkeypatch.setenv(name, value)

        with pytest.raises(asyncpg.InvalidPasswordError):
            await create_pool(Settings().dsn, min_size=1, max_size=1)

    assert (sent["user"], sent["database"], sent["password"]) == (
        "herald",
        "herald",
        DATABASE_PASSWORD,
    )


# The Kubernetes manifests.


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_follows_the_kubernetes_schemas(overlay: str) -> None:
    resources = rendered(overlay)

    assert [error for r in resources for error in kubernetes_errors(r)] == []
    assert {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"} == {
        "herald"
    }
    assert all(
        c["image"].startswith("registry.example.com/herald:")
        for r in resources
        for c in containers(r)
    )


def test_the_secret_example_follows_the_kubernetes_schemas() -> None:
    [secret] = yaml.safe_load_all(SECRET_EXAMPLE.read_text())

    assert kubernetes_errors(secret) == []


@pytest.mark.parametrize(
    "mistake", ["replicas as text", "a probe with no command", "an unknown field"]
)
def test_the_kubernetes_schema_check_catches_a_mistake(mistake: str) -> None:
    worker = copy.deepcopy(named(rendered("helm-temporal"), "Deployment", "herald-worker"))
    [container] = containers(worker)
    if mistake == "replicas as text":
        worker["spec"]["replicas"] = "three"
    elif mistake == "a probe with no command":
        container["livenessProbe"]["exec"] = {"cmd": ["true"]}
    else:
        container["terminationGracePeriodSeconds"] = 120

    assert len(kubernetes_errors(worker)) == len(KUBERNETES_VERSIONS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_configures_a_production_start(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in pod_environment(overlay).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as unfilled:
        Settings()
    for name, value in OVERLAY_URLS[overlay].items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert placeholders(unfilled.value) == set(OVERLAY_URLS[overlay])
    assert settings.env == "production"
    assert settings.temporal_address is not None
    assert settings.status_callback_url == RECEIPTS_CALLBACK
    [api] = containers(named(rendered(overlay), "Deployment", "herald-api"))
    service = named(rendered(overlay), "Service", "herald-api")
    assert {"name": "receipts", "containerPort": settings.receipts_port} in api["ports"]
    assert {"name": "receipts", "port": 8010, "targetPort": "receipts"} in service["spec"]["ports"]
    # The example Secret suits both overlays: no API key, which would turn TLS on.
    assert settings.temporal_api_key is None


def test_the_cloud_overlay_uses_tls_and_leaves_search_attributes_to_tcld() -> None:
    resources = rendered("temporal-cloud")
    [prepare] = containers(named(resources, "Job", "herald-prepare"))

    assert prepare["args"] == ["prepare", "--no-search-attributes"]
    assert named(resources, "ConfigMap", "herald-config")["data"]["HERALD_TEMPORAL_TLS"] == "true"


def test_the_api_is_probed_autoscaled_and_kept_available() -> None:
    resources = rendered("helm-temporal")
    api = named(resources, "Deployment", "herald-api")
    [container] = containers(api)
    labels = api["spec"]["template"]["metadata"]["labels"]

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Its checks take up to 3 s (Temporal's); a probe's default timeout is 1 s.
    assert container["readinessProbe"]["timeoutSeconds"] > 3
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # /healthz answers on the loop that serves every request: a loop slow under load for more
    # than the default 1 s restarted a process that worked.
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe].get("timeoutSeconds", 1) >= 5, probe
    assert named(resources, "Service", "herald-api")["spec"]["selector"].items() <= labels.items()
    assert (
        named(resources, "HorizontalPodAutoscaler", "herald-api")["spec"]["scaleTargetRef"]["name"]
        == api["metadata"]["name"]
    )
    pdb = named(resources, "PodDisruptionBudget", "herald-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Its replicas are the autoscaler's: an apply of the manifests leaves them as they are.
    assert "replicas" not in api["spec"]


# A port's name as Kubernetes takes it (IANA_SVC_NAME): the schemas say only "string".
PORT_NAME = re.compile(r"(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_port_name_is_one_kubernetes_accepts(overlay: str) -> None:
    resources = rendered(overlay)
    names = [
        port["name"]
        for resource in resources
        for container in containers(resource)
        for port in container.get("ports", [])
    ]
    names += [
        port["name"]
        for resource in resources
        if resource["kind"] == "Service"
        for port in resource["spec"]["ports"]
    ]

    assert names
    assert [name for name in names if not PORT_NAME.fullmatch(name)] == []


def service_links(service: Resource) -> dict[str, str]:
    """The variables Kubernetes sets in a pod for a Service of its namespace, unless the pod
    says `enableServiceLinks: false`: `HERALD_API_PORT` among them, for `herald-api`."""
    name = service["metadata"]["name"].upper().replace("-", "_")
    ports = service["spec"]["ports"]
    ip = "10.96.3.7"
    links = {
        f"{name}_SERVICE_HOST": ip,
        f"{name}_SERVICE_PORT": str(ports[0]["port"]),
        f"{name}_PORT": f"tcp://{ip}:{ports[0]['port']}",
    }
    for port in ports:
        number, prefix = port["port"], f"{name}_PORT_{port['port']}_TCP"
        links[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number)
        links[prefix] = f"tcp://{ip}:{number}"
        links |= {f"{prefix}_PROTO": "tcp", f"{prefix}_PORT": str(number), f"{prefix}_ADDR": ip}
    return links


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_starts_with_what_kubernetes_adds_to_its_environment(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Service herald-api made Kubernetes set HERALD_API_PORT=tcp://...:80 in every pod of
    # the namespace: the API, the workers and the prepare Job refused to start.
    resources = rendered(overlay)
    services = [r for r in resources if r["kind"] == "Service"]
    pods = [r for r in resources if containers(r)]
    environment = {**pod_environment(overlay), **OVERLAY_URLS[overlay]}

    assert services and pods
    for pod in pods:
        links = pod["spec"]["template"]["spec"].get("enableServiceLinks", True)
        for container in containers(pod):
            with monkeypatch.context() as patched:
                added = [service_links(s) for s in services] if links else []
                for name, value in ChainMap(*added, environment).items():
                    patched.setenv(name, value)
                for variable in container.get("env", []):
                    patched.setenv(variable["name"], variable["value"])
                assert Settings().env == "production", pod["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_upgrades_first_apply_selects_the_configuration_and_the_prepare_job(
    overlay: str,
) -> None:
    """docs/DEPLOY.md's `kubectl apply -k OVERLAY -l 'app.kubernetes.io/name in (...)'`."""
    comment = (KUBERNETES / "base" / "prepare-job.yaml").read_text()
    [names] = re.findall(r"-l 'app\.kubernetes\.io/name in \(([^)]*)\)'", comment)
    selected = [
        (r["kind"], r["metadata"]["name"])
        for r in rendered(overlay)
        if r["metadata"].get("labels", {}).get("app.kubernetes.io/name") in names.split(",")
    ]

    assert sorted(selected) == [("ConfigMap", "herald-config"), ("Job", "herald-prepare")]
    assert names in (ROOT / "docs" / "DEPLOY.md").read_text()
    # The Job migrates; the API and the workers, which the same ConfigMap configures, only
    # check that it has.
    config = named(rendered(overlay), "ConfigMap", "herald-config")["data"]
    assert config["HERALD_MIGRATE_ON_START"] == "false"
    assert compose()["services"]["api"]["environment"]["HERALD_MIGRATE_ON_START"] == "false"


def test_a_stopping_worker_outlasts_its_send_slice_and_the_carrier_timeout() -> None:
    worker = named(rendered("helm-temporal"), "Deployment", "herald-worker")
    pod = worker["spec"]["template"]["spec"]
    [container] = containers(worker)
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    defaults = Settings()
    grace = float(env["HERALD_WORKER_SHUTDOWN_GRACE_SECONDS"])

    # A rate-limited sender's slice lasts at most `slice_seconds`: it must fit in the grace.
    assert grace >= defaults.slice_seconds
    assert pod["terminationGracePeriodSeconds"] > grace + defaults.carrier_timeout_seconds
    assert container["livenessProbe"]["exec"]["command"] == ["python", "-m", "deploy.healthcheck"]
    assert env["HERALD_HEALTH_FILE"].startswith("/tmp/")
    assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
    # On the node's disk (`medium: Memory` would count the files against the pod's memory).
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


# Every HERALD_* variable the deployment files set is a setting.


def test_every_setting_has_its_row_in_the_readmes_settings_table() -> None:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    documented = {name for line in rows for name in re.findall(r"`(HERALD_\w+)`", line)}

    assert {ENV_PREFIX + name.upper() for name in SETTINGS} - documented == set()


def test_every_herald_variable_set_for_deployment_is_a_setting() -> None:
    set_anywhere = set(DockerfileParser(path=str(DEPLOY / "Dockerfile")).envs)
    for role in ("prepare", "api", "worker"):
        set_anywhere |= set(compose()["services"][role]["environment"])
    for overlay in OVERLAYS:
        set_anywhere |= herald_variables(rendered(overlay))
    set_anywhere |= herald_variables(list(yaml.safe_load_all(SECRET_EXAMPLE.read_text())))
    set_anywhere |= set(example_env())

    herald = {name for name in set_anywhere if name.startswith(ENV_PREFIX)}
    unknown = {name for name in herald if name.removeprefix(ENV_PREFIX).lower() not in SETTINGS}
    assert len(herald) > 10
    assert unknown == set()


# The Dockerfile.


def stages() -> list[list[Mapping[str, Any]]]:
    """The Dockerfile's instructions, one list per stage, each starting with its FROM."""
    parsed: list[list[Mapping[str, Any]]] = []
    for instruction in DockerfileParser(path=str(DEPLOY / "Dockerfile")).structure:
        if instruction["instruction"] == "FROM":
            parsed.append([])
        if parsed and instruction["instruction"] != "COMMENT":
            parsed[-1].append(instruction)
    return parsed


def values(stage: list[Mapping[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_the_image_is_multi_stage_slim_and_unprivileged_with_a_healthcheck() -> None:
    *builds, final = stages()
    lock_python = re.search(r"with Python (\d+\.\d+)", (ROOT / "requirements.lock").read_text())

    assert builds, "a build stage apart from the final image"
    for stage in stages():
        image = values(stage, "FROM")[0].split()[0]
        assert re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", image), image
        assert lock_python and image.startswith(f"python:{lock_python.group(1)}-")
    [user] = values(final, "USER")
    assert user.split(":")[0] not in {"0", "root"}
    [healthcheck] = values(final, "HEALTHCHECK")
    assert '"deploy.healthcheck"' in healthcheck
    assert values(final, "CMD") == ['["api"]']


def test_the_final_image_has_no_compiler_no_dev_extras_and_the_locked_versions() -> None:
    *builds, final = stages()
    runs = " ".join(values(final, "RUN"))
    installs = [run for stage in builds for run in values(stage, "RUN") if " install " in run]

    assert not re.search(r"apt-get|apk |gcc|build-essential|pip ", runs)
    assert all(value.startswith("--from=") for value in values(final, "COPY")[:1])
    assert installs and all("-c requirements.lock" in run for run in installs)
    assert not any("[dev" in run or "[local" in run or ",local" in run for run in installs)


def test_the_image_holds_every_module_the_package_declares() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = " ".join(value for stage in stages()[:-1] for value in values(stage, "COPY")).split()
    packages = [p.rstrip("*") for p in pyproject["packages"]["find"]["include"]]

    missing = [m for m in pyproject["py-modules"] if f"{m}.py" not in copied]
    missing += [p for p in packages if p not in copied]
    assert missing == []


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore's patterns leave `path` (or a folder above it) out."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/"))
        or (
            pattern.startswith("**/")
            and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:])
        )
        for pattern in patterns
        for prefix in prefixes
    )


def test_the_build_context_leaves_out_local_state_and_keeps_what_the_image_copies() -> None:
    # Without one, `docker build .` sent the 1 GB virtualenv, the history and the local
    # stack's key (.herald/dev.json) to the builder.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith(("#", "!"))]
    copied = [
        source
        for stage in stages()
        for value in values(stage, "COPY")
        if not value.startswith("--from=")
        for source in value.split()[:-1]
    ]

    assert copied
    assert [source for source in copied if ignored(source, patterns)] == []
    left_out = (".git", ".venv", ".herald/dev.json", "api/__pycache__/app.pyc", "bench/results")
    for path in (*left_out, "deploy/compose/.env"):
        assert ignored(path, patterns), path
