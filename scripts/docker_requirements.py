"""Write the requirement list the Quarry image installs, computed from pyproject.toml alone.

The Dockerfile runs this in its dependency layer (before the source is copied, so the layer
stays cached until the dependencies change) and tests/test_packaging.py runs the very same
code to check that the list resolves to wheels only:

    python scripts/docker_requirements.py --extras models --extra-packages "flower>=2.0" \\
        /tmp/requirements.txt

The list is the base ``[project.dependencies]``, each named extra's optional dependencies and
the extra packages, minus the excluded distributions (torch by default: the image installs it
first from its own index and pins it with a constraint). Standard library only: it runs in
the image's fresh virtual environment.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

DEFAULT_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
DEFAULT_EXCLUDE = ("torch",)
_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def canonical_name(requirement: str) -> str:
    """The PEP 503 normalised distribution name of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def split_words(value: str, sep: str | None = None) -> list[str]:
    """Non-empty, stripped items of ``value`` split on ``sep`` (whitespace when None)."""
    return [item.strip() for item in value.split(sep) if item.strip()]


def image_requirements(
    pyproject: Path = DEFAULT_PYPROJECT,
    extras: Iterable[str] = (),
    extra_packages: Iterable[str] = (),
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
) -> list[str]:
    """Requirement strings for the image, in pyproject order, excluded names dropped."""
    with pyproject.open("rb") as fh:
        project = tomllib.load(fh)["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject has {sorted(optional)}")
        requirements += optional[extra]
    requirements += list(extra_packages)
    dropped = {canonical_name(name) for name in exclude}
    kept: list[str] = []
    for requirement in requirements:
        if canonical_name(requirement) not in dropped and requirement not in kept:
            kept.append(requirement)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="requirements file to write ('-' for stdout)")
    parser.add_argument("--pyproject", type=Path, default=DEFAULT_PYPROJECT)
    parser.add_argument("--extras", default="", help="comma-separated extras, e.g. models,gpu")
    parser.add_argument(
        "--extra-packages", default="", help="whitespace-separated requirements, e.g. flower>=2.0"
    )
    parser.add_argument(
        "--exclude",
        default=" ".join(DEFAULT_EXCLUDE),
        help="whitespace-separated distribution names to leave out (default: torch)",
    )
    args = parser.parse_args(argv)
    requirements = image_requirements(
        args.pyproject,
        extras=split_words(args.extras, ","),
        extra_packages=split_words(args.extra_packages),
        exclude=split_words(args.exclude),
    )
    text = "\n".join(requirements) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
