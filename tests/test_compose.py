"""The container setup agrees with the code.

compose.yaml, the Dockerfile and ``[project.scripts]`` name commands; these tests check that
every one of them is a real command of the ``quarry`` Typer app (options included, parsed by
click exactly as at run time) or a real Celery app, and that the stack is wired sanely: the
services exist, dependencies point at services with the right kind of readiness, the GPU
worker reserves a GPU, the data volume is shared, and no secret is written down literally.
Nothing here needs Docker.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
PYPROJECT = ROOT / "pyproject.toml"

REQUIRED_SERVICES = {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu", "flower"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
CELERY_APP = "workers.celery_app:app"
SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEYS?|PRIVATE_KEY)$", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")
# Services built from this repository (they have `build:`), plus the ones that must be.
BUILT_SERVICES = sorted(
    {"migrate", "api", "worker-gpu", "worker-cpu", "flower"}
    | {
        name
        for name, svc in (yaml.safe_load(COMPOSE_FILE.read_text()).get("services") or {}).items()
        if "build" in svc
    }
)


# --------------------------------------------------------------------------- helpers


def interpolate(value: str) -> str:
    """Resolve compose ``${...}`` the way an empty environment would (defaults, placeholders)."""

    def sub(match: re.Match[str]) -> str:
        op, arg = match["op"], match["arg"]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"placeholder-{match['name'].lower()}"
        return ""

    return INTERPOLATION.sub(sub, value).replace("$$", "$")


def argv_of(command: str | list[Any] | None) -> list[str]:
    """A compose ``command`` (string or exec-form list) as argv, interpolated."""
    assert command, "service has no command"
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    return [interpolate(w) for w in words]


def option_value(argv: list[str], *names: str) -> str | None:
    """The value of ``--name VALUE`` / ``--name=VALUE`` (or a short ``-A VALUE`` / ``-AVALUE``)."""
    for i, word in enumerate(argv):
        for name in names:
            if word == name:
                return argv[i + 1] if i + 1 < len(argv) else None
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
            if not name.startswith("--") and word.startswith(name) and len(word) > len(name):
                return word[len(name) :]
    return None


def is_group(command: Any) -> bool:
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def quarry_cli() -> Any:
    """The click group behind the ``quarry`` console script.

    Duck-typed: recent Typer releases ship their own copy of click, so Typer's groups and
    commands are not instances of ``click.Group`` / ``click.Command``.
    """
    import typer

    core_cli = importlib.import_module("cli.main")
    command = typer.main.get_command(core_cli.app)
    assert is_group(command), "cli.main.app should be a Typer app with several commands"
    return command


def check_quarry_command(argv: list[str]) -> Any:
    """Walk ``quarry sub [sub ...] --opts`` down the Typer app and parse the options with click.

    Fails when a subcommand does not exist, when it names a group rather than a runnable
    command, or when the CLI rejects the arguments (unknown option, bad type, missing argument).
    Nothing is run: ``make_context`` only parses.
    """
    assert argv[0] == "quarry", argv
    command, path, args = quarry_cli(), ["quarry"], list(argv[1:])
    while is_group(command):
        ctx = command.context_class(command, info_name=path[-1])
        available = sorted(command.list_commands(ctx))
        assert args and not args[0].startswith("-"), (
            f"`{' '.join(path)}` is a group; {argv} names none of its commands {available}"
        )
        name = args.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"`{' '.join(path)} {name}` is not a command (has {available})"
        command = sub
        path.append(name)
    try:
        command.make_context(" ".join(path), args)
    except Exception as exc:
        if type(exc).__name__ == "Exit":  # an eager option such as --help; not an error
            return command
        if hasattr(exc, "format_message"):  # click's ClickException / UsageError
            pytest.fail(f"`{' '.join(argv)}` is rejected by the CLI: {exc.format_message()}")
        raise
    return command


def image_packages() -> set[str]:
    """Distribution names the default (CPU) image installs: base deps, EXTRAS, EXTRA_PACKAGES."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    args = dockerfile_args()
    requirements = list(project.get("dependencies", []))
    for extra in filter(None, (e.strip() for e in args.get("EXTRAS", "").split(","))):
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    requirements += args.get("EXTRA_PACKAGES", "").split()
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def check_celery_command(argv: list[str]) -> None:
    assert argv[0] == "celery", argv
    app_ref = option_value(argv, "-A", "--app")
    assert app_ref == CELERY_APP, f"{argv}: expected -A {CELERY_APP}"
    from celery import Celery

    module_name, _, attr = app_ref.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    assert isinstance(app, Celery), f"{app_ref} is {type(app)!r}, not a celery.Celery"

    # The celery subcommand: built in, or a plugin (flower) that the image installs.
    from celery.bin.celery import celery as celery_cli

    words, i = argv[1:], 0
    while i < len(words) and words[i].startswith("-"):
        i += 1 if "=" in words[i] or words[i] not in ("-A", "--app", "-b", "--broker") else 2
    assert i < len(words), f"{argv} names no celery subcommand"
    sub = words[i]
    assert sub in celery_cli.commands or sub in image_packages(), (
        f"`celery {sub}` is neither built in nor installed into the image"
    )


def check_command(argv: list[str]) -> None:
    if argv[0] == "quarry":
        check_quarry_command(argv)
    elif argv[0] == "celery":
        check_celery_command(argv)
    else:
        pytest.fail(f"{argv}: a Quarry container should run `quarry ...` or `celery ...`")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        if keyword.isupper() and keyword.isalpha():
            instructions.append((keyword, rest.strip()))
    return instructions


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = shlex.split(default)[0] if default else ""
    return args


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def quarry_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that run the image built from this repository."""
    return {name: svc for name, svc in services.items() if "build" in svc}


# --------------------------------------------------------------------------- compose.yaml


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose spec has no `version:`"
    assert set(compose["services"]) >= REQUIRED_SERVICES


def test_quarry_services_are_built_here(quarry_services: dict[str, dict[str, Any]]) -> None:
    assert {"migrate", "api", "worker-gpu", "worker-cpu", "flower"} <= set(quarry_services)


def test_commands_are_exec_form(quarry_services: dict[str, dict[str, Any]]) -> None:
    for name, svc in quarry_services.items():
        assert isinstance(svc.get("command"), list), f"{name}: use an exec-form command list"


@pytest.mark.parametrize("name", BUILT_SERVICES)
def test_service_command_is_real(services: dict[str, dict[str, Any]], name: str) -> None:
    check_command(argv_of(services[name]["command"]))


def test_migrate_is_one_shot(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert argv_of(migrate["command"])[:3] == ["quarry", "db", "upgrade"]
    assert str(migrate.get("restart")) == "no"
    assert depends_on(migrate)["postgres"]["condition"] == "service_healthy"


def test_api_waits_for_migrations_and_skips_its_own(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    argv = argv_of(api["command"])
    assert argv[:2] == ["quarry", "serve"]
    assert "--no-migrate" in argv
    assert option_value(argv, "--host") == "0.0.0.0"
    assert option_value(argv, "--port") == "8000"
    deps = depends_on(api)
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["redis"]["condition"] == "service_healthy"
    assert any(str(p).endswith(":8000") for p in api.get("ports", []))


def test_depends_on_is_valid(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, spec in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            condition = spec.get("condition")
            assert condition in CONDITIONS, f"{name} -> {dep}: bad condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy"
            if condition == "service_completed_successfully":
                assert str(services[dep].get("restart", "no")) == "no", (
                    f"{dep} must be one-shot (restart: 'no') for {name} to wait for it"
                )


def test_depends_on_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"dependency cycle: {' -> '.join((*stack, name))}"
        if name in done:
            return
        for dep in depends_on(services[name]):
            visit(dep, (*stack, name))
        done.add(name)

    for name in services:
        visit(name, ())


@pytest.mark.parametrize("name", ["postgres", "redis", "api"])
def test_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    test = check["test"]
    assert not (isinstance(test, list) and test[0] == "NONE")
    assert not check.get("disable")


def test_healthcheck_commands(services: dict[str, dict[str, Any]]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in " ".join(services["redis"]["healthcheck"]["test"])
    api_test = " ".join(services["api"]["healthcheck"]["test"])
    assert "/readyz" in api_test and ":8000" in api_test
    assert "curl" not in api_test, "the image has no curl; use python's urllib"


def test_gpu_worker(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker-gpu"]
    argv = argv_of(worker["command"])
    assert argv[:2] == ["quarry", "worker"]
    assert option_value(argv, "--queues") == "gpu"
    assert option_value(argv, "--concurrency") == "1"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (str(d.get("count")) == "1" or d.get("device_ids"))
        for d in devices
    ), devices
    args = worker["build"].get("args", {})
    assert "gpu" in str(args.get("EXTRAS", "")).split(","), "the GPU image needs the gpu extra"
    assert "/whl/cpu" not in str(args.get("TORCH_INDEX_URL", "")), "GPU image with CPU torch"
    assert worker["image"] != services["api"]["image"], "GPU and CPU images need distinct tags"


def test_cpu_worker(services: dict[str, dict[str, Any]]) -> None:
    argv = argv_of(services["worker-cpu"]["command"])
    assert argv[:2] == ["quarry", "worker"]
    assert option_value(argv, "--queues") == "cpu"
    assert "deploy" not in services["worker-cpu"]


def test_flower(services: dict[str, dict[str, Any]]) -> None:
    argv = argv_of(services["flower"]["command"])
    assert argv[0] == "celery" and "flower" in argv
    assert option_value(argv, "--port") == "5555"
    assert any(str(p).endswith("5555") for p in services["flower"].get("ports", []))


def test_data_volume_is_shared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts: dict[str, set[str]] = {}
    for name in ("api", "worker-gpu", "worker-cpu"):
        data_dir = interpolate(environment(services[name])["QUARRY_DATA_DIR"])
        for volume in services[name].get("volumes", []):
            source, _, target = str(volume).partition(":")
            if target.split(":")[0] == data_dir:
                mounts[name] = {source}
        assert name in mounts, f"{name} does not mount a volume at QUARRY_DATA_DIR={data_dir}"
    sources = set.union(*mounts.values())
    assert len(sources) == 1, f"api and workers mount different data volumes: {mounts}"
    assert sources <= set(compose.get("volumes") or {}), "the data volume is not a named volume"


def test_postgres(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    password = environment(postgres)["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?"), "require POSTGRES_PASSWORD from .env"
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert str(services["redis"]["image"]).startswith("redis:7")


def test_quarry_env(services: dict[str, dict[str, Any]]) -> None:
    for name in ("migrate", "api", "worker-gpu", "worker-cpu", "flower"):
        env = environment(services[name])
        for key in ("QUARRY_DATABASE_URL", "QUARRY_BROKER_URL", "QUARRY_RESULT_BACKEND"):
            assert env.get(key), f"{name} lacks {key}"
        assert interpolate(env["QUARRY_DATABASE_URL"]).startswith("postgresql://")
        assert "@postgres:5432/" in env["QUARRY_DATABASE_URL"]
        assert env["QUARRY_BROKER_URL"].startswith("redis://redis:6379")
    assert environment(services["worker-gpu"])["QUARRY_EMBEDDER__DEVICE"] == "cuda"


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        build = svc.get("build")
        build_args = build.get("args", {}) if isinstance(build, dict) else {}
        for key, value in [*environment(svc).items(), *dict(build_args).items()]:
            value = "" if value is None else str(value)
            if SECRET_KEY.search(key):
                assert value == "" or value.startswith("${"), f"{name}: literal secret in {key}"
            for password in re.findall(r"://[^:/@\s]+:([^@]+)@", value):
                assert password.startswith("${"), f"{name}: literal password in {key}"


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_cmd_is_real() -> None:
    cmds = [rest for keyword, rest in dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    argv = json.loads(cmds[-1])  # exec form: a JSON array
    assert argv[:2] == ["quarry", "serve"]
    assert "--no-migrate" in argv
    assert option_value(argv, "--host") == "0.0.0.0"
    check_quarry_command(argv)


def test_dockerfile_runtime() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "run as a non-root user"
    assert ("EXPOSE", "8000") in instructions
    env = dockerfile_env()
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("TRANSFORMERS_OFFLINE") == "1"
    assert not any(SECRET_KEY.search(k) for k in (*env, *dockerfile_args())), "secret in image"


def test_dockerfile_installs_what_compose_runs() -> None:
    packages = image_packages()
    assert "flower" in packages, "the flower service needs flower in the image"
    assert "models" in dockerfile_args().get("EXTRAS", "").split(","), "bundled weights"


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip().rstrip("/") for line in lines}
    assert ignored >= {".env", ".venv", ".git", ".quarry"}


# --------------------------------------------------------------------------- .env.example


def test_env_example_has_no_secrets(services: dict[str, dict[str, Any]]) -> None:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert values.get("POSTGRES_PASSWORD") == ""
    assert values.get("QUARRY_API_KEYS") == ""
    for key, value in values.items():
        if SECRET_KEY.search(key):
            assert value == "", f".env.example sets {key}; leave secrets empty"
    # Every variable compose.yaml interpolates is documented.
    used = {m["name"] for m in INTERPOLATION.finditer(COMPOSE_FILE.read_text())}
    assert used <= set(values), f"undocumented in .env.example: {sorted(used - set(values))}"


# --------------------------------------------------------------------------- pyproject


def test_console_script() -> None:
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert scripts["quarry"] == "cli.main:main"
    module_name, _, attr = scripts["quarry"].partition(":")
    assert callable(getattr(importlib.import_module(module_name), attr))
