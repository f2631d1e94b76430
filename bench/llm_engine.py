"""LLM embedder engine throughput and model FLOP utilisation (MFU) on a GPU.

Random weights of real shapes (throughput does not depend on weight values): SmolLM2-135M
and Qwen2-0.5B. Quarry's engine (``LLMEmbedder.embed``: tokenise once, length-sorted
token-budget batches, bf16, SDPA) for design1 (causal, EOS) and design5 (bidirectional,
MLTP), side by side with the loop a user would write: a plain transformers forward over
batches of 64 in input order with tokenizer padding and last-token pooling. Two length
regimes: realistic (log-normal word counts, median ~100) and fixed 512-token inputs.

MFU = 2 x non-embedding parameters x real tokens / time / 790 TFLOP/s (H200 bf16 ceiling).

    python bench/llm_engine.py --texts 4096
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import summary, time_fn, write_result

PEAK_BF16 = 790e12
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "qwen2-0.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description="LLM embedder engine benchmark")
    ap.add_argument("--texts", type=int, default=4096)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script")
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModel

    from embedder.llm import LLMEmbedder, LLMEmbeddingModel, tiny_tokenizer
    from embedder.llm.backbone import Backbone, set_attention_mode
    from embedder.llm.pooling import gather_tokens, last_token_index

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    tok = tiny_tokenizer([" ".join(words)])  # one token per word: lengths are exact
    regimes = {
        "realistic": np.clip(rng.lognormal(4.6, 0.7, size=args.texts).astype(int), 5, 510),
        "fixed512": np.full(args.texts, 510),  # + EOS (+ BOS) ~ 512 tokens
    }
    results: dict[str, Any] = {}
    for shape in args.shapes:
        cfg = AutoConfig.for_model(**SHAPES[shape])
        for regime, counts in regimes.items():
            texts = [" ".join(rng.choice(words, size=int(c))) for c in counts]
            for preset in ("design1", "design5"):
                torch.manual_seed(0)
                model = AutoModel.from_config(cfg, attn_implementation="sdpa")
                n_params = (
                    sum(p.numel() for p in model.parameters()) - cfg.vocab_size * cfg.hidden_size
                )
                attention = "causal" if preset == "design1" else "bidirectional"
                set_attention_mode(model, attention, is_decoder=True)
                emb = LLMEmbedder(
                    LLMEmbeddingModel.from_preset(
                        Backbone(model, tok, None, True, attention), preset
                    ),
                    device=args.device,
                    batch_tokens=65536,
                    max_batch_size=512,
                )
                tokens = int(sum(emb.count_tokens(texts)))
                st = summary(
                    time_fn(lambda e=emb, t=texts: e.embed(t), warmup=1, repeats=args.repeats)
                )
                key = f"{shape}/{regime}/quarry_{preset}"
                results[key] = _row(tokens, len(texts), st["median_s"], n_params)
                print(key, results[key], flush=True)
                if preset == "design1":
                    hf = model
                    tok.padding_side = "right"

                    def plain(hf: Any = hf, texts: list[str] = texts) -> None:
                        for i in range(0, len(texts), 64):
                            enc = tok(texts[i : i + 64], padding=True, return_tensors="pt").to(
                                args.device
                            )
                            with (
                                torch.inference_mode(),
                                torch.autocast(args.device, torch.bfloat16),
                            ):
                                h = hf(**enc, use_cache=False).last_hidden_state
                                gather_tokens(
                                    h, last_token_index(enc["attention_mask"])
                                ).float().cpu()

                    sb = summary(time_fn(plain, warmup=1, repeats=args.repeats))
                    key_b = f"{shape}/{regime}/plain_hf_forward_bs64"
                    results[key_b] = _row(tokens, len(texts), sb["median_s"], n_params)
                    print(key_b, results[key_b], flush=True)
                del emb, model
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    ratios = {
        f"{s}/{r}": results[f"{s}/{r}/quarry_design1"]["tokens_per_s"]
        / results[f"{s}/{r}/plain_hf_forward_bs64"]["tokens_per_s"]
        for s in args.shapes
        for r in regimes
    }
    path = write_result(
        f"llm_engine_{args.device}",
        {
            "what": "tokens/s and MFU of Quarry's LLM embedder engine vs a plain HF forward loop",
            "texts": args.texts,
            "mfu_definition": "2 x non-embedding params x real tokens / s / 790e12",
            "results": results,
            "ratios_quarry_design1_over_plain": ratios,
        },
    )
    print(ratios)
    print(f"wrote {path}")


def _row(tokens: int, n: int, seconds: float, n_params: int) -> dict[str, float]:
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "texts_per_s": n / seconds,
        "mfu": 2 * n_params * tokens / seconds / PEAK_BF16,
    }


if __name__ == "__main__":
    main()
