"""Imports point one way. Walks every module's imports (function-level ones included) and
fails on an import against the direction below.

    core                                  the ground floor: settings, ORM, errors, files
    embedder, ranker, indexer             engines, over core (indexer and embedder do not
                                          know each other; ranker may use embedder)
    service                               the application layer, over the engines
    api, workers, cli, evaluation, bench  adapters, over service; api and workers never
                                          import each other
    migrations                            over core only
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "core",
    "embedder",
    "ranker",
    "indexer",
    "service",
    "api",
    "workers",
    "cli",
    "evaluation",
    "migrations",
    "bench",
)
ENGINES = {"embedder", "ranker", "indexer"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "embedder": {"core", "embedder"},
    "indexer": {"core", "indexer"},
    "ranker": {"core", "embedder", "ranker"},
    "service": {"core", "service", *ENGINES},
    "api": {"core", "service", "api"},
    "workers": {"core", "service", "workers"},
    "evaluation": {"core", "service", "evaluation", *ENGINES},
    "cli": {"core", "service", "cli", "evaluation", "workers", *ENGINES},
    "migrations": {"core", "migrations"},
    "bench": {"core", "service", "bench", "evaluation", *ENGINES},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".", 1)[0]
            if top in PACKAGES and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package: str) -> None:
    assert (ROOT / package).is_dir(), f"{package}/ is missing"
    assert _violations(package) == []


def test_the_walker_sees_function_level_imports(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from api.app import create_app\n    import workers.tasks\n")
    assert [m for _, m in _imports(mod)] == ["api.app", "workers.tasks"]


def test_one_construction_site_of_the_container() -> None:
    """``Container(`` is called in service/container.py's build() and nowhere else."""
    sites = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "Container"
                ):
                    sites.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert sites == ["service/container.py:" + sites[0].split(":")[1]] and len(sites) == 1
