"""The `quarry` CLI on the embedded default: db upgrade, index with progress, search, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _quarry(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUARRY_DATA_DIR": str(tmp_path / "data")}
    env.pop("QUARRY_BROKER_URL", None)
    env.pop("QUARRY_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_index_then_search(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    rows = [
        {
            "id": "sun",
            "text": "The sun is a star at the centre of the solar system.",
            "metadata": {"kind": "astro"},
        },
        {
            "id": "bread",
            "text": "Knead the dough and let it rise before baking bread.",
            "metadata": {"kind": "food"},
        },
        {"_id": "beir1", "title": "Volcanoes", "text": "Lava erupts from the crater."},
    ]
    docs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert _quarry(tmp_path, "db", "upgrade").returncode == 0
    out = _quarry(tmp_path, "index", "kb", str(docs))
    assert out.returncode == 0, out.stderr
    assert "3 documents: 3 new" in out.stdout and "3 indexed" in out.stdout
    assert "indexing" in out.stderr  # the progress bar
    again = _quarry(tmp_path, "index", "kb", str(docs))
    assert "3 unchanged" in again.stdout and "0 indexed" in again.stdout

    found = _quarry(tmp_path, "search", "kb", "how is bread baked", "-k", "2", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)["data"]
    assert hits[0]["id"] == "bread" and len(hits) == 2
    beir = _quarry(tmp_path, "search", "kb", "volcano eruption", "-k", "1", "--json")
    top = json.loads(beir.stdout)["data"][0]
    assert top["id"] == "beir1" and top["metadata"]["title"] == "Volcanoes"
    filtered = _quarry(tmp_path, "search", "kb", "bread", "--filter", "kind=astro", "--json")
    assert [h["id"] for h in json.loads(filtered.stdout)["data"]] == ["sun"]


def test_errors_are_one_line(tmp_path: Path) -> None:
    assert _quarry(tmp_path, "db", "upgrade").returncode == 0
    out = _quarry(tmp_path, "search", "nope", "x")
    assert out.returncode == 1
    assert "error (collection_not_found): Collection 'nope' does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    out = _quarry(tmp_path, "index", "kb", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 1 and "File not found" in out.stderr
