"""Where an encoder's time goes: tokenising, padding and the forward pass, one at a time.

Two paths of the bundled MiniLM are taken apart:

- bulk embedding (``--corpus``, e.g. SciFact): the whole corpus tokenised through the
  Hugging Face wrapper and through :class:`embedder.tokenizing.FastTokenizer`; then, with all
  batches padded on the device beforehand, the forward passes alone (synchronised once at the
  end), with the attention mask always passed and with it dropped for unpadded batches;
- one query's 100 cross-encoder candidates (``--candidates``, DL19 BM25): ``prepare``
  (tokenising the pairs), padding, and the forward pass, each synchronised and timed alone.

Each figure is the median of ``--repeats`` runs. The end-to-end benchmarks are
``embed_throughput.py`` and ``rerank_speed.py``; this one says which part to work on.

    python bench/encoder_profile.py --model DIR --corpus corpus.jsonl \
        --candidates BM25_dl19.json --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import read_texts, time_fn, write_result


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    return round(statistics.median(time_fn(fn, warmup=1, repeats=repeats)) * 1000, 3)


def _bulk(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch

    from embedder import SentenceTransformerEmbedder
    from embedder.sentence_transformers import _has_padding
    from embedder.tokenizing import FastTokenizer

    texts = read_texts(args.corpus, args.limit)
    emb = SentenceTransformerEmbedder(args.model, device=args.device)
    wrapper = emb._tokenizer
    fast = FastTokenizer(wrapper, max_length=emb.max_seq_length)
    r = args.repeats

    def hf() -> Any:
        return wrapper(
            texts, truncation=True, max_length=emb.max_seq_length, return_attention_mask=False
        )

    flat, offsets, lengths = emb._flatten({"input_ids": fast(texts)})
    batches = emb._plan(lengths)
    padded = [emb._pad(flat, offsets[i], lengths[i]) for i in batches]
    flags = [_has_padding(lengths[i]) for i in batches]
    pinned = emb.device.startswith("cuda")

    def forwards(use_flags: bool) -> None:
        with torch.inference_mode():
            for feats, flag in zip(padded, flags, strict=True):
                emb._forward(dict(feats), True, flag if use_flags else True)

    out["bulk"] = {
        "docs": len(texts),
        "tokens": int(lengths.sum()),
        "batches": len(batches),
        "unpadded_batches": flags.count(False),
        "tokenize_wrapper_ms": _median_ms(hf, r),
        "tokenize_fast_ms": _median_ms(lambda: fast(texts), r),
        "flatten_ms": _median_ms(lambda: emb._flatten({"input_ids": fast(texts)}), r),
        "pad_all_batches_ms": _median_ms(
            lambda: [emb._pad(flat, offsets[i], lengths[i], pinned=pinned) for i in batches], r
        ),
        "forward_all_masked_ms": _median_ms(lambda: forwards(False), r),
        "forward_all_ms": _median_ms(lambda: forwards(True), r),
        "embed_end_to_end_ms": _median_ms(lambda: emb.embed(texts), r),
    }
    print("bulk", out["bulk"], flush=True)


def _rerank(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.datasets import load_trec_candidates
    from ranker.text import LoadOptions, load_reranker

    cands = load_trec_candidates(args.candidates)
    queries = [
        (cands.queries[q], [h.content for h in hits][:100]) for q, hits in cands.candidates.items()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        m = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
        m.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(args.model).save_pretrained(tmp)
        reranker: Any = load_reranker(tmp, LoadOptions(device=args.device))
    model = reranker.model
    prepared = [model.prepare(q, d) for q, d in queries]
    plans = [reranker.plan(p.lengths) for p in prepared]
    r = args.repeats

    def prepare_all() -> None:
        for q, d in queries:
            model.prepare(q, d)

    def forward_all() -> None:
        with torch.inference_mode():
            for p, plan in zip(prepared, plans, strict=True):
                for rows in plan:
                    model.score_prepared(p, rows)

    def score_all() -> None:
        for q, d in queries:
            reranker.score(q, d)

    n = len(queries)
    out["rerank"] = {
        "queries": n,
        "passes_per_query": statistics.mean(len(p) for p in plans),
        "prepare_ms_per_query": round(_median_ms(prepare_all, r) / n, 3),
        "pad_and_forward_ms_per_query": round(_median_ms(forward_all, r) / n, 3),
        "score_ms_per_query": round(_median_ms(score_all, r) / n, 3),
    }
    print("rerank", out["rerank"], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="MiniLM directory (sentence-transformers)")
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--limit", type=int, default=100_000)
    ap.add_argument("--candidates", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    out: dict[str, Any] = {"device": args.device, "model": args.model}
    if args.corpus:
        _bulk(args, out)
    if args.candidates:
        _rerank(args, out)
    suffix = "cuda" if args.device.startswith("cuda") else "cpu"
    print(f"wrote {write_result(f'encoder_profile_{suffix}', out, out=args.out_dir)}")


if __name__ == "__main__":
    main()
