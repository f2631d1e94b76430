"""Cost of scoring candidates for one user as the history grows: DIN full attention vs SDIM
with behaviour-sequence encoding (BSE) vs DARE and TWIN (top-k over stored keys).

The history is encoded ahead of the query (``model.encode``, not timed: that is the BSE
worker's job); a request only runs ``model.score(state, candidates)``, which is what is
timed. Random weights of the default configurations (speed does not depend on weight
values), a synthetic catalogue and random histories; one run, side by side.

    python bench/ctr_cost.py --device cuda --out-dir bench/results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, cuda_sync, write_result

KINDS = ("din", "sdim", "dare", "twin")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="100,1000,10000")
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    import numpy as np
    import torch

    from ranker.ctr.catalogue import ItemCatalogue
    from ranker.ctr.registry import build_module, make_config
    from ranker.ctr.serving import CTRModel

    rng = np.random.default_rng(0)
    n_cat = 20
    categories = rng.integers(1, n_cat, size=args.items)
    catalogue = ItemCatalogue(
        [f"i{i}" for i in range(args.items)], categories, ["", *[f"c{j}" for j in range(1, n_cat)]]
    )
    lengths = [int(x) for x in args.lengths.split(",")]
    cands = rng.integers(0, args.items, size=args.candidates)
    torch.manual_seed(0)
    rows: dict[str, dict[int, float]] = {}
    for kind in KINDS:
        config = make_config(
            kind,
            n_items=args.items,
            n_categories=n_cat,
            options={"max_history": max(lengths)},
        )
        model = CTRModel(
            build_module(config, categories),
            catalogue,
            name=kind,
            version="bench",
            device=args.device,
        )
        rows[kind] = {}
        for length in lengths:
            state = model.encode(rng.integers(0, args.items, size=length))
            for _ in range(3):
                model.score(state, cands)
            cuda_sync()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model.score(state, cands)
                cuda_sync()
                times.append(time.perf_counter() - t0)
            rows[kind][length] = statistics.median(times) * 1000.0
            print(f"{kind:5s} history {length:>6}: {rows[kind][length]:8.2f} ms", flush=True)
    top = max(lengths)
    low = sorted(lengths)[-2] if len(lengths) > 1 else top
    result = {
        "what": (
            f"median ms to score {args.candidates} candidates for one user, history encoded "
            "ahead of the query (BSE); random weights of the default configs"
        ),
        "device": args.device,
        "candidates": args.candidates,
        "ms": {kind: {str(k): round(v, 3) for k, v in per.items()} for kind, per in rows.items()},
        "din_over_sdim_at_max": round(rows["din"][top] / rows["sdim"][top], 2),
        "sdim_max_over_previous": round(rows["sdim"][top] / rows["sdim"][low], 3),
        "goals": {
            "sdim_20x_faster_than_din_at_10k": rows["din"][top] / rows["sdim"][top] >= 20,
            "sdim_10k_within_1.3x_of_1k": rows["sdim"][top] / rows["sdim"][low] <= 1.3,
        },
    }
    suffix = "cuda" if args.device.startswith("cuda") else "cpu"
    path = write_result(f"ctr_cost_{suffix}", result, out=args.out_dir)
    print(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
