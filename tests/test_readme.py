"""The README's API examples, run top to bottom against a live ``quarry serve --demo``.

Each ``curl`` of the "Using the API" block goes through a wrapper that records its HTTP
status and fails the script on any 4xx/5xx, so an example that stops working (or that is
out of order, like searching a collection before creating it) fails this test."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = r"""
set -euo pipefail
curl() {
  local out code
  out=$(command curl "$@" -w $'\n%{http_code}')
  code=${out##*$'\n'}
  printf '%s\n' "${out%$'\n'*}"
  local args="$*"
  printf '%s %s\n' "$code" "${args//$'\n'/ }" >> "$CURL_LOG"
  if (( code >= 400 )); then echo "README example failed with HTTP $code: curl $*" >&2; return 1; fi
}
"""


def api_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using the API", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README has no bash block under 'Using the API'"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_block_is_found_and_starts_with_the_server_address() -> None:
    block = api_block()
    assert block.startswith("Q=http://127.0.0.1:8000\n")
    assert block.count("curl ") >= 15


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_api_examples_run_in_order(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp_path / "data"),
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--demo", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not ready in 10 minutes"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        block = api_block().replace("Q=http://127.0.0.1:8000", f"Q={base}", 1)
        curl_log = tmp_path / "curl.log"
        done = subprocess.run(
            ["bash", "-c", WRAPPER + block],
            env={**os.environ, "CURL_LOG": str(curl_log)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        calls = curl_log.read_text().splitlines()
        # Every curl of the block answered (the until-loop may poll more than once).
        assert len(calls) >= api_block().count("curl ")
        assert all(line[:1] == "2" for line in calls), calls
        assert '"cranfield"' in done.stdout and '"state":"cancelled"' not in done.stdout
        # The filtered search found the English documents only.
        assert '"id":"d1"' in done.stdout and '"dim":384' in done.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
