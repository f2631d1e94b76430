"""Where an LLM embedder's GPU time goes: the ceilings of its parts and a kernel breakdown.

For each model shape (random weights, see ``bench/llm_engine.py``), in one process:

1. ``gemm``: the rate of each of one block's matrix products at a 65,536-token batch (q, k, v,
   o, gate, up, down; and gate+up fused into one product), against the 8192^3 ceiling;
2. ``sdpa``: scaled-dot-product attention at 512 tokens per backend (flash, cuDNN, efficient),
   bidirectional and causal, with grouped-query heads;
3. ``engine``: one :meth:`LLMEmbedder.embed` call over 512-token texts under
   ``torch.profiler``, eager and compiled: device time per kernel family (matmul, attention,
   fused Triton, other) and how much of the wall time the device was busy.

Together they bound the MFU the engine can reach (``mfu_bound``: the FLOP-weighted harmonic
mean of the parts' rates, over the ceiling) and show what is left to gain.

    python bench/llm_profile.py --out bench/results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, summary, time_fn, write_result
from bench.llm_engine import SHAPES, measure_bf16_peak

TOKENS = 65536
SEQ = 512


def _rate(fn: Any, flops: float) -> float:
    return flops / summary(time_fn(fn, warmup=3, repeats=10))["median_s"]


def gemm_rates(cfg: Any, peak: float) -> dict[str, Any]:
    """FLOP/s of one block's matrix products at ``TOKENS`` rows."""
    import torch
    import torch.nn.functional as F

    d, inter = cfg.hidden_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    shapes = {
        "q": (d, d),
        "k": (d, kv),
        "v": (d, kv),
        "o": (d, d),
        "gate": (d, inter),
        "up": (d, inter),
        "down": (inter, d),
        "qkv_fused": (d, d + 2 * kv),
        "gate_up_fused": (d, 2 * inter),
    }
    out: dict[str, Any] = {}
    for name, (k, n) in shapes.items():
        x = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        rate = _rate(lambda x=x, w=w: F.linear(x, w), 2 * TOKENS * k * n)
        out[name] = {"k": k, "n": n, "tflops": rate / 1e12, "of_peak": rate / peak}
    return out


def sdpa_rates(cfg: Any, peak: float) -> dict[str, Any]:
    """FLOP/s of SDPA at ``SEQ`` tokens, ``TOKENS // SEQ`` rows, per backend."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, h, hkv = TOKENS // SEQ, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // h
    q = torch.randn(batch, h, SEQ, hd, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, hkv, SEQ, hd, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    flops = 4 * batch * h * SEQ * SEQ * hd
    out: dict[str, Any] = {}
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        for causal in (False, True):
            key = f"{backend.lower()}/{'causal' if causal else 'bidirectional'}"
            for gqa in (True, False):
                rep = 1 if gqa else h // hkv
                kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
                name = key + ("/gqa" if gqa else "/repeat_kv")
                try:
                    with sdpa_kernel(getattr(SDPBackend, backend)):
                        rate = _rate(
                            lambda kk=kk, vv=vv, c=causal, g=gqa: F.scaled_dot_product_attention(
                                q, kk, vv, is_causal=c, enable_gqa=g
                            ),
                            flops / (2 if causal else 1),
                        )
                    out[name] = {"tflops": rate / 1e12, "of_peak": rate / peak}
                except Exception as exc:  # a backend may not support a case
                    out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    return out


_FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
    ("matmul", ("gemm", "sm90", "sm100", "cutlass", "nvjet", "xmma", "cublas")),
    ("triton", ("triton",)),
    ("copy", ("memcpy", "memset", "copy")),
)


def _family(name: str) -> str:
    low = name.lower()
    for family, keys in _FAMILIES:
        if any(k in low for k in keys):
            return family
    return "other"


def engine_breakdown(emb: Any, texts: list[str]) -> dict[str, Any]:
    """Device time per kernel family over one ``embed`` call, and the busy share of wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    emb.embed(texts)  # warm
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        emb.embed(texts)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    totals: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for evt in prof.key_averages():
        device_us = float(getattr(evt, "self_device_time_total", 0.0) or 0.0)
        if device_us <= 0 or getattr(evt, "device_type", None) is None:
            continue
        if str(evt.device_type).endswith("CPU"):
            continue
        fam = _family(evt.key)
        totals[fam] = totals.get(fam, 0.0) + device_us / 1e6
        top.append((device_us / 1e6, evt.key))
    busy = sum(totals.values())
    top.sort(reverse=True)
    return {
        "wall_s": wall,
        "device_busy_s": busy,
        "busy_share": busy / wall,
        "family_s": totals,
        "family_share": {k: v / busy for k, v in totals.items()},
        "top_kernels": [{"s": s, "name": n[:120]} for s, n in top[:12]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="LLM embedder GPU time breakdown")
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=TOKENS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModel

    from embedder.llm import LLMEmbedder, LLMEmbeddingModel, tiny_tokenizer
    from embedder.llm.backbone import Backbone, set_attention_mode

    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    torch._logging.set_logs(recompiles=True)  # a recompilation shows up in the output
    peak = measure_bf16_peak()
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    tok = tiny_tokenizer([" ".join(words)])
    texts = [" ".join(rng.choice(words, size=SEQ - 2)) for _ in range(args.texts)]
    record: dict[str, Any] = {
        "what": "ceilings of an LLM embedder's parts on this GPU and its kernel-time breakdown",
        "bf16_peak_flops_measured": peak,
        "tokens_per_batch": TOKENS,
        "seq": SEQ,
        "results": {},
    }
    for shape in args.shapes:
        cfg = AutoConfig.for_model(**SHAPES[shape])
        row: dict[str, Any] = {"gemm": gemm_rates(cfg, peak), "sdpa": sdpa_rates(cfg, peak)}
        record["results"][shape] = row
        print(shape, "gemm", {k: round(v["of_peak"], 3) for k, v in row["gemm"].items()})
        print(shape, "sdpa", row["sdpa"], flush=True)
        for compiled in (False, True):
            torch.manual_seed(0)
            with torch.device("cuda"):
                model = AutoModel.from_config(cfg, attn_implementation="sdpa")
            set_attention_mode(model, "causal", is_decoder=True)
            t0 = time.perf_counter()
            backbone = Backbone(model, tok, None, True, "causal")
            emb = LLMEmbedder(
                LLMEmbeddingModel.from_preset(backbone, "design1"),
                device="cuda",
                batch_tokens=args.batch_tokens,
                max_batch_size=512,
                compile=compiled,
            )
            construct_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            emb.embed(texts)
            first_call_s = time.perf_counter() - t0
            key = "engine_compiled" if compiled else "engine_eager"
            row[key] = engine_breakdown(emb, texts)
            row[key].update(construct_s=construct_s, first_call_s=first_call_s)
            print(shape, key, row[key], flush=True)
            write_result("llm_profile_cuda", record, out=args.out)
            del emb, model
            torch.cuda.empty_cache()
    write_result("llm_profile_cuda", record, out=args.out)


if __name__ == "__main__":
    main()
