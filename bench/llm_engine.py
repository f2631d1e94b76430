"""LLM embedder engine throughput and model FLOP utilisation (MFU) on a GPU.

Random weights of real shapes (throughput does not depend on weight values): SmolLM2-135M
and Qwen2-0.5B. Side by side, same texts, same process:

- ``quarry_<design>``: Quarry's engine (``LLMEmbedder.embed``: tokenise once, length-sorted
  token-budget batches, bf16, SDPA, pipelined tokenisation), eager;
- ``quarry_compiled_padded_<design>``: the compiled engine with padded batches
  (``packed=False``) instead of packed ones (on CUDA the engine packs by default);
- ``quarry_compiled_<design>``: the same engine with ``compile=True`` (``torch.compile`` of
  each transformer block, dynamic shapes), after the warm-up that pays the compilation
  (``compile_s``: construction with its warm-up, plus two calls at the regime's shapes);
- ``plain_hf_forward_bs64``: the loop a user would write: a plain transformers forward over
  batches of 64 in input order with tokenizer padding and last-token pooling;
- ``sentence_transformers_bs64``: ``SentenceTransformer.encode`` over the same backbone with
  last-token pooling (it sorts by length itself), bf16.

design1 is causal + EOS pooling, design5 bidirectional + MLTP. Two length regimes: realistic
(log-normal word counts, median ~100, one token per word) and fixed 512-token inputs.
``tokenize_only`` times the tokenisation alone (part of every other row's time).

MFU = 2 x non-embedding parameters x real tokens / time / the bf16 matmul rate measured in the
same run (an 8192^3 product); ``mfu_all_params`` counts the embedding table too (the literal
"2 x params x tokens"); ``mfu_with_attention`` adds attention's own FLOPs (QK^T and PV,
4 x T^2 x width x layers per text). ``mfu`` is the conservative figure quoted.

    python bench/llm_engine.py --texts 2048 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, summary, time_fn, write_result

NOMINAL_PEAK_BF16 = 790e12
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
VARIANTS = ("eager", "compiled", "compiled_padded", "plain", "st")
_ENGINE_ROWS = {
    "eager": "quarry",
    "compiled": "quarry_compiled",
    "compiled_padded": "quarry_compiled_padded",
}


def measure_bf16_peak() -> float:
    """FLOP/s of an 8192^3 bf16 matmul on random data (median of 10 after 3 warm-ups)."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    times = time_fn(lambda: a @ b, warmup=3, repeats=10)
    return 2 * n**3 / summary(times)["median_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description="LLM embedder engine benchmark")
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--designs", nargs="+", default=["design1", "design5"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=65536)
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke run of the script")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", help="result file name (default llm_engine_<cuda|cpu>)")
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModel

    from embedder.llm import LLMEmbedder, LLMEmbeddingModel, tiny_tokenizer
    from embedder.llm.backbone import Backbone, set_attention_mode
    from embedder.llm.pooling import gather_tokens, last_token_index

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    peak = measure_bf16_peak() if cuda else NOMINAL_PEAK_BF16
    print(f"bf16 matmul ceiling: {peak / 1e12:.0f} TFLOP/s", flush=True)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    tok = tiny_tokenizer([" ".join(words)])  # one token per word: lengths are exact
    regimes = {
        "realistic": np.clip(rng.lognormal(4.6, 0.7, size=args.texts).astype(int), 5, 510),
        "fixed512": np.full(args.texts, 510),  # + BOS + EOS = 512 tokens
    }
    texts_of = {
        r: [" ".join(rng.choice(words, size=int(c))) for c in counts]
        for r, counts in regimes.items()
    }
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    compile_s: dict[str, float] = {}
    record: dict[str, Any] = {
        "what": "tokens/s and MFU of Quarry's LLM embedder engine vs a plain HF forward loop "
        "and SentenceTransformer.encode",
        "texts": args.texts,
        "bf16_peak_flops_measured": peak,
        "mfu_definition": "2 x non-embedding params x real tokens / s / measured bf16 peak "
        "(mfu_all_params: 2 x all params; mfu_with_attention adds 4 x T^2 x width x layers "
        "per text)",
        "results": results,
        "compile_s": compile_s,
        "errors": errors,
    }

    def save() -> None:
        write_result(args.name or f"llm_engine_{'cuda' if cuda else 'cpu'}", record, out=args.out)

    def run(key: str, fn: Callable[[], Any], work: Work) -> None:
        try:
            st = summary(time_fn(fn, warmup=1, repeats=args.repeats))
        except Exception as exc:  # one failing variant must not lose the others' numbers
            errors[key] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            return
        results[key] = work.row(st["median_s"], peak)
        print(key, json.dumps(results[key]), flush=True)
        save()

    for shape in args.shapes:
        cfg = AutoConfig.for_model(**SHAPES[shape])
        torch.manual_seed(0)
        with torch.device(args.device):  # initialising on the GPU is seconds faster
            base = AutoModel.from_config(cfg, attn_implementation="sdpa").to(torch.bfloat16)
        all_params = sum(p.numel() for p in base.parameters())
        non_embedding = all_params - cfg.vocab_size * cfg.hidden_size
        attn_width = cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
        state = {k: v.clone() for k, v in base.state_dict().items()}
        for regime, texts in texts_of.items():
            lengths = regimes[regime] + 2  # BOS + one token per word + EOS
            work = Work(
                tokens=int(lengths.sum()),
                texts=len(texts),
                flops=2 * non_embedding * int(lengths.sum()),
                flops_all_params=2 * all_params * int(lengths.sum()),
                # QK^T and PV over each text's own length, every layer (no causal halving).
                attention_flops=4 * attn_width * cfg.num_hidden_layers * int((lengths**2).sum()),
            )
            for preset in args.designs:
                attention = "causal" if preset == "design1" else "bidirectional"
                for variant in _ENGINE_ROWS:
                    if variant not in args.variants:
                        continue
                    with torch.device(args.device):
                        model = AutoModel.from_config(cfg, attn_implementation="sdpa")
                    model.load_state_dict(state)
                    set_attention_mode(model, attention, is_decoder=True)
                    t0 = time.perf_counter()  # compile=True compiles and warms up here
                    try:
                        emb = LLMEmbedder(
                            LLMEmbeddingModel.from_preset(
                                Backbone(model, tok, None, True, attention), preset
                            ),
                            device=args.device,
                            batch_tokens=args.batch_tokens,
                            max_batch_size=512,
                            compile=variant.startswith("compiled"),
                            packed=False if variant == "compiled_padded" else None,
                        )
                        assert int(sum(emb.count_tokens(texts))) == work.tokens
                        if variant.startswith("compiled"):
                            emb.embed(texts[:64])
                            emb.embed(texts[-64:])
                            compile_s[f"{shape}/{regime}/{variant}_{preset}"] = (
                                time.perf_counter() - t0
                            )
                    except Exception as exc:  # one failing variant must not lose the others
                        errors[f"{shape}/{regime}/{variant}_{preset}"] = repr(exc)
                        traceback.print_exc()
                        continue
                    record.setdefault("packed", {})[f"{variant}_{preset}"] = emb.packed
                    name = _ENGINE_ROWS[variant]
                    run(
                        f"{shape}/{regime}/{name}_{preset}", lambda e=emb, t=texts: e.embed(t), work
                    )
                    if variant == "eager" and preset == args.designs[0] and regime == "fixed512":
                        run(
                            f"{shape}/{regime}/tokenize_only",
                            lambda e=emb, t=texts: e.tokenize(t),
                            work,
                        )
                    del emb, model
                    if cuda:
                        torch.cuda.empty_cache()
            if "plain" in args.variants:
                with torch.device(args.device):
                    plain_model = AutoModel.from_config(cfg, attn_implementation="sdpa")
                plain_model.load_state_dict(state)
                plain_model.to(args.device, torch.bfloat16).eval()
                eos_texts = [t + " </s>" for t in texts]

                def plain(hf: Any = plain_model, texts: list[str] = eos_texts) -> None:
                    tok.padding_side = "right"
                    for i in range(0, len(texts), 64):
                        enc = tok(texts[i : i + 64], padding=True, return_tensors="pt").to(
                            args.device
                        )
                        with torch.inference_mode():
                            h = hf(**enc, use_cache=False).last_hidden_state
                            gather_tokens(h, last_token_index(enc["attention_mask"])).float().cpu()

                run(f"{shape}/{regime}/plain_hf_forward_bs64", plain, work)
                del plain_model
            if "st" in args.variants:
                try:
                    run_st(run, f"{shape}/{regime}", base, tok, texts, work, args.device)
                except Exception as exc:  # keep the other rows
                    errors[f"{shape}/{regime}/sentence_transformers_bs64"] = repr(exc)
                    traceback.print_exc()
            if cuda:
                torch.cuda.empty_cache()
        del base, state
    record["ratios"] = _ratios(results, args.shapes, list(regimes), args.designs)
    save()
    print(json.dumps(record["ratios"], indent=1))
    print(f"wrote {args.out}")


def run_st(
    run: Callable[..., None],
    prefix: str,
    base: Any,
    tok: Any,
    texts: list[str],
    work: Work,
    device: str,
) -> None:
    """SentenceTransformer.encode over ``base`` (saved to a temp dir) with last-token pooling."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        transformer = models.Transformer(tmp)
        # Loading may swap in the model family's tokenizer class (Qwen2Tokenizer for qwen2),
        # which splits these texts differently: hand it the benchmark's tokenizer itself.
        try:
            transformer.tokenizer = tok
        except AttributeError:  # sentence-transformers >= 6.1: the tokenizer is the processor
            transformer.processor = tok
        transformer.max_seq_length = 1 << 14
        pooling = models.Pooling(base.config.hidden_size, pooling_mode="lasttoken")
        st = SentenceTransformer(modules=[transformer, pooling], device=device)
        st.to(torch.bfloat16)
        eos_texts = [t + " </s>" for t in texts]
        seen = sum(
            int(transformer.tokenize(eos_texts[i : i + 256])["attention_mask"].sum())
            for i in range(0, len(eos_texts), 256)
        )
        if seen != work.tokens:
            raise RuntimeError(f"SentenceTransformer sees {seen} tokens, the others {work.tokens}")
        run(
            f"{prefix}/sentence_transformers_bs64",
            lambda: st.encode(eos_texts, batch_size=64, convert_to_tensor=True),
            work,
        )


@dataclass(frozen=True)
class Work:
    """What one pass over a regime's texts computes (the same for every variant)."""

    tokens: int
    texts: int
    flops: int  # 2 x non-embedding params x tokens
    flops_all_params: int  # 2 x all params x tokens
    attention_flops: int

    def row(self, seconds: float, peak: float) -> dict[str, float]:
        return {
            "seconds": seconds,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens / seconds,
            "texts_per_s": self.texts / seconds,
            "mfu": self.flops / seconds / peak,
            "mfu_all_params": self.flops_all_params / seconds / peak,
            "mfu_with_attention": (self.flops + self.attention_flops) / seconds / peak,
        }


def _ratios(
    results: dict[str, Any], shapes: list[str], regimes: list[str], designs: list[str]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in shapes:
        for r in regimes:
            for base in ("plain_hf_forward_bs64", "sentence_transformers_bs64"):
                for ours in ("quarry", "quarry_compiled"):
                    mine = results.get(f"{s}/{r}/{ours}_{designs[0]}")
                    theirs = results.get(f"{s}/{r}/{base}")
                    if mine and theirs:
                        out[f"{s}/{r}/{ours}_{designs[0]}_over_{base}"] = (
                            mine["tokens_per_s"] / theirs["tokens_per_s"]
                        )
    return out


if __name__ == "__main__":
    main()
