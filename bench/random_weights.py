"""A model directory with random weights from another's config and tokenizer.

Speed benchmarks on the H200 use it when the real weights do not fit the 64 MiB carry
(``../shared/GPU.md``): speed depends on shapes, not weight values.

    python bench/random_weights.py CONFIG_AND_TOKENIZER_DIR OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="a directory with config.json and tokenizer files")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(args.seed)
    model = AutoModel.from_config(AutoConfig.from_pretrained(args.source, local_files_only=True))
    model.save_pretrained(args.out)
    for f in args.source.iterdir():
        if (
            f.is_file()
            and f.name != "config.json"
            and not f.name.endswith((".safetensors", ".bin"))
        ):
            shutil.copy(f, args.out / f.name)
    print(f"random-weight {type(model).__name__} in {args.out}")


if __name__ == "__main__":
    main()
