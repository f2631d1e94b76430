"""Schemathesis fuzzing of a real ``quarry serve`` process against its own OpenAPI schema.

Every operation gets positive cases (data that fits the schema) and negative ones (data that
does not): no answer may be a 5xx, hang, or disagree with the documented status codes,
content types and bodies. A tiny random BERT stands in for MiniLM so the run stays short,
and small limits keep each request cheap.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SEED_COLLECTION = "fuzz"
SEED_DOCS = [
    {"id": "a/b/c", "text": "The telescope observed a distant galaxy.", "metadata": {"n": 1}},
    {"id": "plain", "text": "Simmer the tomato sauce with garlic.", "metadata": {"n": 2}},
    {"id": "ünï", "text": "The striker scored twice in the final.", "metadata": {"t": "x"}},
]
LIMITS = {
    "QUARRY_LIMITS__MAX_BATCH_DOCS": "8",
    "QUARRY_LIMITS__MAX_TEXT_CHARS": "2000",
    "QUARRY_LIMITS__MAX_EMBED_INPUTS": "8",
    "QUARRY_LIMITS__MAX_K": "50",
    "QUARRY_LIMITS__MAX_REQUEST_BYTES": "65536",
    # Reranking through the tiny default embedder keeps the rerank operations cheap.
    "QUARRY_RERANK__DEFAULT_MODEL": "",
    "QUARRY_RERANK__MAX_DOCUMENTS": "16",
    "QUARRY_RERANK__MAX_DOCUMENT_CHARS": "2000",
}
API_KEY = "fuzz-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Rejections a negative case may get: 413 answers a batch over the server's limits.
REJECTED = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
REQUEST_TIMEOUT_S = 10.0
# Examples per operation and generation mode (every operation of the schema); operations
# without parameters stop early (Hypothesis exhausts them), the others make up the >= 1,000 total.
MAX_EXAMPLES = {"positive": 150, "negative": 80}
MIN_TOTAL_CASES = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_tiny_model(out: Path) -> Path:
    """A random 2-layer, 32-dim BERT with MiniLM's tokenizer and mean pooling, saved as a
    sentence-transformers model directory (seconds to build and to load)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 5.2
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # pragma: no cover - older releases
        from sentence_transformers.models import Pooling, Transformer

    from embedder.packaged import find_packaged, packaged_model_path

    minilm = find_packaged("all-MiniLM-L6-v2")
    assert minilm is not None
    src = packaged_model_path(minilm)
    work = out.parent / "tiny-parts"
    tok_dir, bert_dir = work / "tokenizer", work / "bert"
    tok_dir.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, tok_dir / name)
    if (src / "special_tokens_map.json").is_file():
        shutil.copy(src / "special_tokens_map.json", tok_dir / "special_tokens_map.json")
    tokenizer = BertTokenizerFast.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(str(bert_dir))
    tokenizer.save_pretrained(str(bert_dir))
    word = Transformer(str(bert_dir), max_seq_length=128)
    pooling = Pooling(config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(out))
    return out


class Server:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port), "--no-migrate"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def tail(self, n: int = 80) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- api (exit {self.proc.poll()}) ---\n" + "\n".join(lines[-n:])

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("the API exited early\n" + self.tail())
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail("the API never became ready\n" + self.tail())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    model = build_tiny_model(tmp / "tiny-bert")
    env = {
        **os.environ,
        "QUARRY_DATA_DIR": str(tmp / "data"),
        "QUARRY_EMBEDDER__DEVICE": "cpu",
        "QUARRY_EMBEDDER__DEFAULT_MODEL": str(model),
        "QUARRY_ENV": "test",
        "QUARRY_API_KEYS": API_KEY,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **LIMITS,
    }
    for key in ("QUARRY_DATABASE_URL", "QUARRY_BROKER_URL", "QUARRY_RESULT_BACKEND"):
        env.pop(key, None)
    quarry = [sys.executable, "-m", "cli"]
    subprocess.run([*quarry, "db", "upgrade"], env=env, cwd=ROOT, check=True, timeout=120)
    srv = Server(env, _free_port(), tmp / "api.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@dataclass
class Seed:
    """A collection with documents (and the job that indexed them) for cases to hit."""

    client: httpx.Client
    job_id: str = ""

    def ensure(self) -> None:
        """(Re)create the collection and its documents if the fuzzing deleted them."""
        if self.client.get(f"/v1/collections/{SEED_COLLECTION}").status_code == 404:
            r = self.client.post("/v1/collections", json={"name": SEED_COLLECTION})
            assert r.status_code == 201, r.text
        r = self.client.post(
            f"/v1/collections/{SEED_COLLECTION}/documents", json={"documents": SEED_DOCS}
        )
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        deadline = time.monotonic() + 60
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                pytest.fail(f"the seed ingest job never finished: {job}")
            time.sleep(0.05)
            job = self.client.get(f"/v1/jobs/{job['id']}").json()
        assert job["state"] == "succeeded", job
        self.job_id = self.job_id or job["id"]

    def path_parameters(self, operation: Any) -> list[dict[str, str]]:
        """Path parameters that name existing things (random ones only ever miss them)."""
        names = {p.name for p in operation.path_parameters}
        if "doc_id" in names:
            return [{"name": SEED_COLLECTION, "doc_id": d["id"]} for d in SEED_DOCS]
        if "name" in names:
            return [{"name": SEED_COLLECTION}]
        if "job_id" in names:
            return [{"job_id": self.job_id}]
        return []


def _aim_body(case: Any) -> Any:
    """Point a search at the seed collection."""
    if isinstance(case.body, dict) and isinstance(case.body.get("collection"), str):
        case.body["collection"] = SEED_COLLECTION
    return case


def _strategy(operation: Any, mode: Any, seed: Seed) -> Any:
    """Cases of ``mode``: random ones and ones aimed at the seed, with the key (so that
    negative cases break the request itself, not only leave out the key) and without it."""
    from hypothesis import strategies as st

    branches = [operation.as_strategy(generation_mode=mode, headers=AUTH)]
    branches += [
        operation.as_strategy(generation_mode=mode, headers=AUTH, path_parameters=fixed)
        for fixed in seed.path_parameters(operation)
    ]
    if mode.is_positive:
        branches.append(branches[0].map(_aim_body))
    elif operation.definition.raw.get("security"):  # schema.auth adds the key unless negated
        branches.append(operation.as_strategy(generation_mode=mode))
    return st.one_of(branches)


@dataclass
class Tally:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _run_operation(operation: Any, mode: Any, base: str, tally: Tally, seed: Seed) -> None:
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    if not mode.is_positive:
        checks.append(negative_data_rejection)
    seed.ensure()
    label = f"{operation.label} [{mode.value}]"
    session = requests.Session()

    @settings(
        max_examples=MAX_EXAMPLES[mode.value],
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=_strategy(operation, mode, seed))
    def check(case: Any) -> None:
        tally.cases += 1
        try:
            response = case.call(base_url=base, session=session, timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            raise AssertionError(
                f"no answer within {REQUEST_TIMEOUT_S}s: {case.as_curl_command()}"
            ) from None
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        key = f"{label} {response.status_code}"
        tally.by_status[key] = tally.by_status.get(key, 0) + 1
        case.validate_response(response, checks=checks)

    try:
        check()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Unsatisfiable:
        # Nothing to negate: the operation takes no parameters (e.g. /healthz).
        if mode.is_positive:
            tally.failures.append(f"{label}: no case could be generated")
    except BaseException as exc:  # every operation runs; failures are reported together
        tally.failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:3000]}")
    finally:
        session.close()


def test_fuzz_the_openapi_schema(server: Server) -> None:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig

    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": REJECTED}}}
    )
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json", config=config, timeout=30)

    @schema.auth()
    class BearerKey:
        """The server's key on every case, except those that leave the key out on purpose."""

        def get(self, case: Any, ctx: Any) -> str:
            return API_KEY

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers["Authorization"] = f"Bearer {data}"

    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletions last in each mode (the seed is restored before every operation anyway).
    operations.sort(key=lambda op: (op.method.upper() == "DELETE", op.path, op.method))
    assert len(operations) >= 16, [op.label for op in operations]
    tally = Tally()
    start = time.monotonic()
    with httpx.Client(base_url=server.base, headers=AUTH, timeout=30) as client:
        seed = Seed(client)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for operation in operations:
                _run_operation(operation, mode, server.base, tally, seed)
                if server.proc.poll() is not None:
                    pytest.fail("the API died\n" + server.tail())
    elapsed = time.monotonic() - start
    print(
        f"\n{tally.cases} cases in {elapsed:.0f}s; statuses {dict(sorted(tally.statuses.items()))}"
    )
    for label, n in sorted(tally.by_status.items()):
        print(f"  {n:4d}  {label}")
    assert not tally.failures, "\n\n".join(tally.failures) + "\n" + server.tail(40)
    assert not [status for status in tally.statuses if status >= 500], tally.by_status
    assert tally.cases >= MIN_TOTAL_CASES, tally.by_status
    assert "Traceback" not in server.log_path.read_text(errors="replace"), server.tail()


def test_streamed_body_over_the_limit_is_413_on_a_real_server(server: Server) -> None:
    """uvicorn hands a chunked body over in pieces: the limit is found mid-stream."""
    limit = int(LIMITS["QUARRY_LIMITS__MAX_REQUEST_BYTES"])
    body = b'{"documents": [{"id": "big", "text": "' + b"x" * (2 * limit) + b'"}]}'

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {**AUTH, "content-type": "application/json"}
    url = f"{server.base}/v1/collections/{SEED_COLLECTION}/documents"
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        r = client.post(url, content=pieces(), headers=headers)
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "payload_too_large"
        r = client.post(url, content=body, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        # The server still answers on the same connection pool afterwards.
        assert client.get(f"{server.base}/healthz").status_code == 200
    r = httpx.get(f"{url}/big", headers=AUTH, timeout=REQUEST_TIMEOUT_S)
    assert r.status_code in (404, 422) and r.json()["error"]["code"] != "internal_error"
