"""Deployment files without a Docker engine: the Compose schema, .env.example, images, commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from testkit.manifests import check_command
from worker.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal $.
VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
PUBLIC_IMAGE = re.compile(r"^(?:[a-z0-9.-]+\.[a-z]{2,}/)?"  # registry host (default Docker Hub)
                          r"[a-z0-9]+(?:[._/-][a-z0-9]+)*:\w[\w.-]*$")  # name:tag
OWN_IMAGE = "catalog-tagger:"
SECRETS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH", "AWS_SECRET_ACCESS_KEY")


class MissingVariable(ValueError):
    """A ${NAME:?message} variable is unset or empty: docker compose refuses the file."""


def documented() -> dict[str, str]:
    """Variables in .env.example: NAME=value lines, and commented-out '# NAME=' ones (as '')."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.match(r"^(#\s*)?([A-Z_][A-Z0-9_]*)=(.*)$", line.strip()):
            out[match[2]] = "" if match[1] else match[3]
    return out


def example_env() -> dict[str, str]:
    """What docker compose sees with .env copied from .env.example (commented lines unset)."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if match := re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line.strip()):
            out[match[1]] = match[2]
    return out


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution over every string value of the loaded file."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        missing = not current if op and op.startswith(":") else current is None
        if op and op.endswith("?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return current or ""

    return VARIABLE.sub(substitute, value)


def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(raw(), example_env() if env is None else env)


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def test_compose_file_follows_the_compose_spec():
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    for document in (raw(), compose()):
        errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_rejects_a_broken_file():
    schema = json.loads(SCHEMA.read_text())
    broken = compose()
    broken["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_done"
    broken["services"]["redis"]["helthcheck"] = {}
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = " ".join(e.message for error in validator.iter_errors(broken)
                      for e in (error, *error.context))
    assert "'service_done' is not one of" in errors and "'helthcheck' was unexpected" in errors


def test_every_variable_is_documented_in_env_example():
    text = COMPOSE.read_text()
    used = {m["name"] for m in VARIABLE.finditer(text) if m["name"]}
    assert used - set(documented()) == set()
    required = {m["name"] for m in VARIABLE.finditer(text) if m["op"] in (":?", "?")}
    assert required, "secrets must be required (${NAME:?...}), not defaulted"
    assert all(example_env().get(name) for name in required)


@pytest.mark.parametrize("secret", SECRETS)
class Recording(dict):
    """An environment that remembers every variable load_settings asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:
        self.asked.add(key)
        return super().get(key, default)


def test_services_set_only_variables_the_settings_read():
    env = Recording()
    load_settings(env)
    assert {"TAGGER_DECODE_PROCESSES", "TAGGER_BATCH_SIZE"} <= env.asked
    for name, service in services().items():
        if not service["image"].startswith(OWN_IMAGE):
            continue
        tagger = {k for k in service.get("environment") or {} if k.startswith("TAGGER_")}
        assert tagger - env.asked == set(), f"{name} sets variables nothing reads"
    documented_tagger = {k for k in documented() if k.startswith("TAGGER_")}
    assert documented_tagger - env.asked <= {"TAGGER_BUCKET"}  # compose's own, for minio-init


@pytest.mark.parametrize("secret", SECRETS)
def test_compose_refuses_to_start_without_a_secret(secret):
    env = {k: v for k, v in example_env().items() if k != secret}
    with pytest.raises(MissingVariable, match=secret):
        compose(env)
    with pytest.raises(MissingVariable, match=secret):
        compose({**env, secret: ""})


def test_no_secret_is_written_in_the_file():
    for name, service in raw()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|AUTH", key):
                assert str(value).startswith("${"), f"{name}: {key} is not from .env"
            if "@" in str(value):  # a URL with credentials in it
                assert "${" in str(value).split("@")[0], f"{name}: {key} holds a literal secret"


def test_flower_is_behind_basic_auth_on_loopback():
    flower = services()["flower"]
    auth = flower["environment"].get("FLOWER_BASIC_AUTH") or next(
        (a.split("=", 1)[1] for a in flower["command"] if a.startswith("--basic-auth")), "")
    assert re.fullmatch(r"[^:,]+:[^,]+", auth)
    assert "--persistent=True" in flower["command"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])


def test_broker_keeps_every_message():
    command = services()["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--requirepass"] == example_env()["REDIS_PASSWORD"]


def pool_of(command: list[str]) -> tuple[str, str]:
    """Celery's pool (-P) and concurrency (-c) in a worker command."""
    return command[command.index("-P") + 1], command[command.index("-c") + 1]


def test_gpu_worker_and_cpu_variant():
    worker, cpu = services()["worker"], services()["worker-cpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert worker["environment"]["TAGGER_DEVICE"] == "cuda"
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    # One process per GPU (the model loaded once): two task threads; on a CPU one prefork child.
    assert pool_of(worker["command"]) == ("threads", "2")
    assert pool_of(cpu["command"]) == ("prefork", "1")
    assert not cpu.get("deploy") and cpu["environment"]["TAGGER_DEVICE"] == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in cpu["environment"]
    assert (worker["profiles"], cpu["profiles"]) == (["gpu"], ["cpu"])
    assert services()["producer"]["profiles"] == ["producer"]
    for service in (worker, cpu):
        assert service["environment"]["TAGGER_METRICS_PORT"] == "9100"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_dependencies_wait_for_health_or_completion():
    all_services = services()
    conditions = 0
    for name, service in all_services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in all_services, f"{name} depends on unknown {target}"
            if rule["condition"] == "service_healthy":
                assert all_services[target].get("healthcheck"), f"{target} has no healthcheck"
            if rule["condition"] == "service_completed_successfully":
                assert all_services[target].get("restart") == "no", f"{target} is not one-shot"
            conditions += 1
    assert conditions >= 8


def dockerfile_args(path: Path) -> set[str]:
    return set(re.findall(r"^ARG\s+([A-Za-z_]\w*)", path.read_text(), re.MULTILINE))


def ignored(context: Path) -> set[str]:
    lines = (context / ".dockerignore").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_image_is_public_or_built_here(name):
    service = services()[name]
    image = service["image"]
    if "build" not in service:
        assert not image.startswith(OWN_IMAGE), f"{name} needs a build for {image}"
        assert PUBLIC_IMAGE.match(image) and not image.endswith(":latest"), image
        return
    build = service["build"]
    context = ROOT / build["context"]
    dockerfile = context / build["dockerfile"]
    assert image.startswith(OWN_IMAGE) and dockerfile.is_file()
    assert set(build.get("args", {})) <= dockerfile_args(dockerfile)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", dockerfile.read_text(), re.MULTILINE)
    assert PUBLIC_IMAGE.match(build["args"]["BASE_IMAGE"])
    for line in re.findall(r"^COPY (.+) \S+$", dockerfile.read_text(), re.MULTILINE):
        for source in line.split():
            assert (context / source).exists(), f"COPY {source}: not in the build context"
            assert source not in ignored(context), f"COPY {source}: excluded by .dockerignore"


def argv_of(service: dict[str, Any]) -> list[str]:
    """What the container runs: entrypoint + command, or the Dockerfile's CMD."""
    command = service.get("command")
    if command is None:
        match = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
        command = json.loads(match[1])
    return [*service.get("entrypoint", []), *command]


def own_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for name, service in services().items():
        if not service["image"].startswith(OWN_IMAGE):
            continue
        commands.append((name, argv_of(service)))
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:1] == ["CMD-SHELL"] and test[1].startswith("celery "):
            commands.append((f"{name} healthcheck", shlex.split(test[1])))
    return commands


@pytest.mark.parametrize(("name", "argv"), own_commands(), ids=[n for n, _ in own_commands()])
def test_service_command_exists(name, argv, tmp_path):
    check_command(argv, tmp_path)


def test_alert_rules_use_real_metrics_and_jobs():
    from worker.core import metrics

    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}
    assert {"TaggerNoWorkerUp", "TaggerQueueNotDraining", "TaggerHighFailureRate"} <= set(alerts)
    exposed = set()
    for value in vars(metrics).values():
        for family in value.describe() if isinstance(value, MetricWrapperBase) else ():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            exposed |= {family.name + s for s in suffixes.get(family.type, [""])}
    used = {m for expr in alerts.values() for m in re.findall(r"\btagger_\w+", expr)}
    assert used and used <= exposed
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert set(re.findall(r'job="([^"]+)"', " ".join(alerts.values()))) <= jobs
    assert "alerts.yml" in scrape["rule_files"]
