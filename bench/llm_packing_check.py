"""Packed batches agree with padded ones on a GPU: varlen flash attention vs SDPA, bf16.

A small random Qwen2 (GQA, bias on q/k/v) embeds mixed-length texts with padded batches on
the CPU in float32 (the reference), padded on the GPU, and packed on the GPU, eager and
compiled; the result file records the largest absolute differences of the unit-norm embeddings.

    python bench/llm_packing_check.py --out bench/results
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, write_result

TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "protein folding and gene expression in the cell",
    "",
    "cat",
] * 7


def main() -> None:
    ap = argparse.ArgumentParser(description="packed vs padded LLM embedder batches on CUDA")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch
    from torch.nn.attention import varlen

    from embedder.llm import LLMEmbedder, LLMEmbeddingModel, tiny_backbone

    if not torch.cuda.is_available():
        sys.exit("this check needs a CUDA GPU")
    record: dict[str, Any] = {
        "what": "max |packed - padded| of unit-norm embeddings (tiny random Qwen2, 35 texts)",
        "varlen_attn_signature": str(inspect.signature(varlen.varlen_attn)),
        "results": {},
    }
    for preset in ("design1", "design5"):

        def build(preset: str = preset) -> LLMEmbeddingModel:
            backbone = tiny_backbone("qwen2", hidden_size=128, num_heads=4, num_layers=3)
            return LLMEmbeddingModel.from_preset(backbone, preset)

        reference = LLMEmbedder(build(), device="cpu", packed=False).embed(TEXTS)
        model = build()
        padded = LLMEmbedder(model, device="cuda", packed=False).embed(TEXTS)
        row: dict[str, Any] = {"padded_cuda_vs_cpu": float(np.abs(padded - reference).max())}
        for compiled in (False, True):
            emb = LLMEmbedder(model, device="cuda", compile=compiled)
            got = emb.embed(TEXTS)
            key = "compiled" if compiled else "eager"
            row[f"packed_{key}"] = emb.packed
            row[f"packed_{key}_vs_padded_cuda"] = float(np.abs(got - padded).max())
            row[f"packed_{key}_vs_cpu"] = float(np.abs(got - reference).max())
        record["results"][preset] = row
        print(preset, json.dumps(row), flush=True)
    write_result("llm_packing_check_cuda", record, out=args.out)


if __name__ == "__main__":
    main()
