"""First-stage candidates for reranker evaluation, made with Quarry's own search path.

For a BEIR folder: index the corpus through the ingest path (MiniLM, SQLite, in-process
jobs), search every query of a split in lexical (BM25) and hybrid (RRF) mode at depth 100,
and write the candidate lists in the TREC-DL candidates layout that ``quarry eval rerank``
and ``quarry train reranker`` read: ``[{"query": {"qid", "text"}, "hits": [{"qid",
"docid", "rank", "score", "content"}]}]``. A mode whose file is already there is not searched
again.

    python bench/rerank_data.py --data ../shared/data/scifact --split test --out .rerank-data

``--bundle DIR`` then packs what ``bench/rerank_quality.py`` reads on the GPU host, small
enough to travel with one model part (about 4 MB): the corpus passages as ingest composes
them (``{docid: title + newline + text}``, gzip), the first-stage runs compacted to
``{"queries", "run": {qid: [[docid, score], ...]}}`` (gzip), the SciFact train examples as
passage ids (``--train-negatives`` BM25 negatives per query,
drawn from BM25's top 100 by :func:`service.training.examples_from_beir`, seed 0) and the
DL19 BM25 candidates with their qrels (``--dl19``):

    python bench/rerank_data.py --data ../shared/data/scifact --split test --out .rerank-data \\
        --bundle .rerank-data/device --dl19 ../shared/data/trec-dl19

The output is derived from the datasets (not redistributable with Quarry): write it to an
ignored folder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
from pathlib import Path

#: BM25 negatives per SciFact train query in the bundle, and the depth they are drawn from.
TRAIN_NEGATIVES = 12
NEGATIVE_DEPTH = 100


def search(data: Path, split: str, depth: int, modes: list[str], out: Path) -> None:
    """Index ``data``'s corpus through the ingest path and write each mode's candidates."""
    from core.datasets import load_beir
    from core.migrate import upgrade
    from core.settings import Settings
    from service import build
    from service.collections import ensure_collection
    from service.ingest import index_documents

    dataset = load_beir(data, split)
    todo = [m for m in modes if not (out / f"{dataset.name}-{split}-{m}{depth}.json").is_file()]
    if not todo:
        return
    docs = {d.id: d.text for d in dataset.documents()}
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        upgrade(settings.resolved_database_url)
        with build(settings) as c:
            ensure_collection(c, "corpus", index_spec="Flat")
            index_documents(c, "corpus", dataset.documents())
            for mode in todo:
                entries = []
                for qid, text in dataset.queries.items():
                    result = c.searcher.search("corpus", text, k=depth, mode=mode)  # type: ignore[arg-type]
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
                path = out / f"{dataset.name}-{split}-{mode}{depth}.json"
                path.write_text(json.dumps(entries), encoding="utf-8")
                print(f"wrote {path} ({len(entries)} queries)")


def _gzip_to(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, gzip.open(target, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)


def _write_gz(data: object, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=9) as fh:
        json.dump(data, fh, separators=(",", ":"))


def bundle(
    data: Path, split: str, depth: int, modes: list[str], runs: Path, dl19: Path, out: Path
) -> None:
    """Write the GPU host's input folder ``out`` (see the module docstring)."""
    from core.datasets import load_beir, load_trec_candidates
    from service.training import examples_from_beir

    dataset = load_beir(data, split)
    # The passages as the ingest path composes them (title, newline, text): what the first
    # stage indexed and what rerankers read; the GPU host then needs no ingest code.
    passages = {d.id: d.text for d in dataset.documents()}
    _write_gz(passages, out / f"{dataset.name}-passages.json.gz")
    for mode in modes:
        cands = load_trec_candidates(runs / f"{dataset.name}-{split}-{mode}{depth}.json")
        compact = {
            "queries": cands.queries,
            "run": {q: [[h.docid, h.score] for h in hits] for q, hits in cands.candidates.items()},
        }
        _write_gz(compact, out / f"{dataset.name}-{split}-{mode}{depth}.run.json.gz")
    # Training examples as corpus ids: the texts are in the corpus already, and a passage
    # serves as a negative for many queries.
    row_of: dict[str, str] = {}
    for docid, text in passages.items():
        row_of.setdefault(text, docid)
    examples = examples_from_beir(
        data, "train", hard_negatives=TRAIN_NEGATIVES, depth=NEGATIVE_DEPTH, seed=0
    )
    target = out / f"{dataset.name}-train-ids-bm25neg{TRAIN_NEGATIVES}.jsonl.gz"
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=9) as fh:
        for e in examples:
            record = {
                "query": e.query,
                "positive_id": row_of[e.positive],
                "negative_ids": [row_of[n] for n in e.negatives],
            }
            fh.write(json.dumps(record) + "\n")
    _gzip_to(dl19 / "candidates" / "BM25_dl19.json", out / "dl19" / "BM25_dl19.json.gz")
    shutil.copy(dl19 / "qrels" / "qrels.dl19-passage.txt", out / "dl19" / "qrels.dl19-passage.txt")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({len(examples)} training examples; {size / 1e6:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--modes", default="lexical,hybrid")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, help="also write the GPU host's input folder here")
    ap.add_argument("--dl19", type=Path, help="TREC DL19 folder (candidates/, qrels/)")
    args = ap.parse_args()
    if args.bundle is not None and args.dl19 is None:
        ap.error("--bundle needs --dl19")

    modes = [m for m in args.modes.split(",") if m]
    search(args.data, args.split, args.depth, modes, args.out)
    if args.bundle is not None:
        bundle(args.data, args.split, args.depth, modes, args.out, args.dl19, args.bundle)


if __name__ == "__main__":
    main()
