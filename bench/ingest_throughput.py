"""End-to-end ingest throughput: Quarry's ingest path vs plain ``SentenceTransformer.encode``.

Quarry's number covers everything `quarry index` does on the embedded default: storing the
documents in the database, the ingest job (length-sorted token-budget batches), writing the
FAISS segment files and committing the manifest. The baseline only embeds the same texts
(`SentenceTransformer.encode`, batch 32, its default) — what a user would write by hand
before adding any index. Both run in one process, on the same texts and device, after a
warm-up.

    python bench/ingest_throughput.py --corpus ../shared/data/scifact/corpus.jsonl --limit 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/data/scifact/corpus.jsonl")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = ap.parse_args()
    if not args.corpus.exists():
        sys.exit(f"corpus not found: {args.corpus} (a BEIR corpus.jsonl; see ../shared/DATA.md)")

    import torch
    from sentence_transformers import SentenceTransformer

    from core.ingest_files import read_jsonl
    from core.migrate import upgrade
    from core.settings import Settings
    from embedder import resolve_model_path
    from service import build
    from service.collections import ensure_collection
    from service.ingest import index_documents

    docs = []
    for doc in read_jsonl(args.corpus):
        docs.append(doc)
        if len(docs) >= args.limit:
            break
    texts = [d.text for d in docs]
    model_dir = resolve_model_path("all-MiniLM-L6-v2")
    st = SentenceTransformer(str(model_dir), device=args.device, local_files_only=True)
    st.encode(texts[:64], batch_size=32)  # warm-up

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    base_times, quarry_times = [], []
    for rep in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        st.encode(texts, batch_size=32, normalize_embeddings=True)
        sync()
        base_times.append(time.perf_counter() - t0)

        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(data_dir=Path(tmp))
            settings.embedder.device = args.device
            upgrade(settings.resolved_database_url)
            c = build(settings)
            ensure_collection(c, "bench", index_spec="Flat")  # loads the model
            c.embedders.get("all-MiniLM-L6-v2").embed(texts[:64])  # warm-up
            sync()
            t0 = time.perf_counter()
            report = index_documents(c, "bench", docs, show_progress=False, poll_s=0.05)
            sync()
            quarry_times.append(time.perf_counter() - t0)
            assert report.indexed == len(docs), report
            c.close()
        print(f"repeat {rep}: encode {base_times[-1]:.2f}s, quarry ingest {quarry_times[-1]:.2f}s")

    n = len(docs)
    base_s, quarry_s = statistics.median(base_times), statistics.median(quarry_times)
    tokens = sum(
        len(x)
        for x in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]
    )
    result = {
        "name": "ingest_throughput",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "device_kind": args.device,
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sentence_transformers": __import__("sentence_transformers").__version__,
            "faiss": __import__("faiss").__version__,
        },
        "corpus": str(args.corpus.name),
        "docs": n,
        "tokens": tokens,
        "repeats": args.repeats,
        "baseline": {
            "what": "SentenceTransformer.encode(batch_size=32), embedding only",
            "median_s": base_s,
            "docs_per_s": n / base_s,
        },
        "quarry": {
            "what": "quarry index path: DB upsert + ingest job + segment write + manifest commit",
            "median_s": quarry_s,
            "docs_per_s": n / quarry_s,
        },
        "ratio_quarry_over_baseline": (n / quarry_s) / (n / base_s),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ingest_throughput_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("docs", "baseline", "quarry", "ratio_quarry_over_baseline")},
            indent=2,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
