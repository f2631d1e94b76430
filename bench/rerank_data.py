"""First-stage candidates for reranker evaluation, made with Quarry's own search path.

For a BEIR folder: index the corpus through the ingest path (MiniLM, SQLite, in-process
jobs), search every query of a split in lexical (BM25) and hybrid (RRF) mode at depth 100,
and write the candidate lists in the TREC-DL candidates layout that ``quarry eval rerank``
and ``quarry train reranker`` read: ``[{"query": {"qid", "text"}, "hits": [{"qid",
"docid", "rank", "score", "content"}]}]``.

    python bench/rerank_data.py --data ../shared/data/scifact --split test --out .rerank-data

The output is derived from the dataset (not redistributable with Quarry): write it to an
ignored folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--modes", default="lexical,hybrid")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from core.datasets import load_beir
    from core.migrate import upgrade
    from core.settings import Settings
    from service import build
    from service.collections import ensure_collection
    from service.ingest import index_documents

    dataset = load_beir(args.data, args.split)
    docs = {d.id: d.text for d in dataset.documents()}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        upgrade(settings.resolved_database_url)
        with build(settings) as c:
            ensure_collection(c, "corpus", index_spec="Flat")
            index_documents(c, "corpus", dataset.documents())
            for mode in args.modes.split(","):
                entries = []
                for qid, text in dataset.queries.items():
                    result = c.searcher.search("corpus", text, k=args.depth, mode=mode)  # type: ignore[arg-type]
                    hits = [
                        {
                            "qid": qid,
                            "docid": h.external_id,
                            "rank": rank,
                            "score": h.score,
                            "content": docs[h.external_id],
                        }
                        for rank, h in enumerate(result.hits, 1)
                    ]
                    entries.append({"query": {"qid": qid, "text": text}, "hits": hits})
                path = args.out / f"{dataset.name}-{args.split}-{mode}{args.depth}.json"
                path.write_text(json.dumps(entries), encoding="utf-8")
                print(f"wrote {path} ({len(entries)} queries)")


if __name__ == "__main__":
    main()
