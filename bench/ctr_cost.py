"""Cost of scoring candidates for one user as the history grows: DIN full attention vs SDIM
with behaviour-sequence encoding (BSE) vs DARE and TWIN (top-k over stored keys).

What is timed is the served call, ``CTRModel.score(state, candidates)``: numpy state and
candidate rows in, numpy probabilities out, with the device synchronised. The history is
encoded ahead of the query (``model.encode``, not timed: that is the BSE worker's job). The
models run side by side in one process, on the same history and candidates, each after its
own warm-up (which also captures the CUDA graphs). Two ways a request receives its state,
alternated call by call:

- ``ms``: a new writeable copy per call, as the Redis state store decodes one per request
  (the state is copied to the device on every call);
- ``ms_same_state``: the same read-only state object every call, as the in-process store
  hands it out (the model's state cache keeps its device copy).

``sdim-eager`` is SDIM with CUDA graphs off (the same module), to show what they do; every
graphed model is also checked against eager scoring of the same module (1e-5). Random
weights of the default configurations (speed does not depend on weight values), a synthetic
catalogue, one random history per length shared by all models.

    python bench/ctr_cost.py --device cuda --out-dir bench/results
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import RESULTS, cuda_sync, write_result

if TYPE_CHECKING:
    import numpy as np

    from ranker.ctr.base import UserState
    from ranker.ctr.models import CTRModule
    from ranker.ctr.serving import CTRModel

KINDS = ("din", "sdim", "dare", "twin")
#: Timed rows: each kind, plus SDIM without CUDA graphs.
ROWS = ("din", "sdim", "sdim-eager", "dare", "twin")


def _fresh(state: UserState) -> UserState:
    """A writeable copy of ``state``, as a state decoded from Redis is."""
    import numpy as np

    return {k: np.array(v) for k, v in state.items()}


def _timed(model: CTRModel, state: UserState, cands: np.ndarray) -> float:
    cuda_sync()
    t0 = time.perf_counter()
    model.score(state, cands)
    cuda_sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    ap.add_argument("--lengths", default="100,1000,10000")
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per model and length")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls first (per mode)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    import numpy as np
    import torch

    from ranker.ctr.catalogue import ItemCatalogue
    from ranker.ctr.registry import build_module, make_config
    from ranker.ctr.serving import CTRModel

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    rng = np.random.default_rng(0)
    n_cat = 20
    categories = rng.integers(1, n_cat, size=args.items)
    catalogue = ItemCatalogue(
        [f"i{i}" for i in range(args.items)], categories, ["", *[f"c{j}" for j in range(1, n_cat)]]
    )
    lengths = [int(x) for x in args.lengths.split(",")]
    cands = rng.integers(0, args.items, size=args.candidates)
    torch.manual_seed(0)

    def serve(module: CTRModule, name: str, *, graphs: bool) -> CTRModel:
        return CTRModel(
            module, catalogue, name=name, version="bench", device=args.device, cuda_graphs=graphs
        )

    models: dict[str, CTRModel] = {}
    eager: dict[str, CTRModel] = {}  # the same modules scored eagerly: the check
    for kind in KINDS:
        options = {"max_history": max(lengths)}
        config = make_config(kind, n_items=args.items, n_categories=n_cat, options=options)
        module = build_module(config, categories)
        models[kind] = serve(module, kind, graphs=True)
        eager[kind] = serve(module, f"{kind}-eager", graphs=False)
    models["sdim-eager"] = eager["sdim"]

    ms: dict[str, dict[int, float]] = {row: {} for row in ROWS}
    ms_same: dict[str, dict[int, float]] = {row: {} for row in ROWS}
    diff: dict[str, float] = {}
    for length in lengths:
        history = rng.integers(0, args.items, size=length)
        states = {row: models[row].encode(history) for row in ROWS}
        for kind in KINDS:
            if models[kind].uses_cuda_graphs:
                got = models[kind].score(_fresh(states[kind]), cands)
                want = eager[kind].score(_fresh(states[kind]), cands)
                diff[kind] = max(diff.get(kind, 0.0), float(np.abs(got - want).max()))
        for row in ROWS:  # one model at a time, so no model runs in another's wake
            model, state = models[row], states[row]
            for _ in range(args.warmup):
                model.score(_fresh(state), cands)
                model.score(state, cands)
            times, times_same = [], []
            for _ in range(args.repeats):
                times.append(_timed(model, _fresh(state), cands))
                times_same.append(_timed(model, state, cands))
            ms[row][length] = statistics.median(times) * 1000.0
            ms_same[row][length] = statistics.median(times_same) * 1000.0
            print(
                f"{row:10s} history {length:>6}: {ms[row][length]:8.3f} ms "
                f"(same state object {ms_same[row][length]:8.3f} ms)",
                flush=True,
            )
    top = max(lengths)
    low = sorted(lengths)[-2] if len(lengths) > 1 else top
    graphs = {kind: models[kind].uses_cuda_graphs for kind in KINDS}
    result = {
        "what": (
            f"median ms of CTRModel.score for {args.candidates} candidates of one user (numpy "
            "state in, probabilities out, device synchronised), history encoded ahead of the "
            "query (BSE); ms: a new writeable state per call (as decoded from Redis), "
            "ms_same_state: the same read-only state object (the in-process store); "
            "sdim-eager: SDIM without CUDA graphs; random weights of the default configs"
        ),
        "device": args.device,
        "candidates": args.candidates,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cuda_graphs": graphs,
        "ms": {row: {str(k): round(v, 4) for k, v in per.items()} for row, per in ms.items()},
        "ms_same_state": {
            row: {str(k): round(v, 4) for k, v in per.items()} for row, per in ms_same.items()
        },
        "din_over_sdim_at_max": round(ms["din"][top] / ms["sdim"][top], 2),
        "din_over_sdim_eager_at_max": round(ms["din"][top] / ms["sdim-eager"][top], 2),
        "sdim_max_over_previous": round(ms["sdim"][top] / ms["sdim"][low], 3),
        "max_abs_diff_graphs_vs_eager": diff,
        "goals": {
            "sdim_20x_faster_than_din_at_10k": ms["din"][top] / ms["sdim"][top] >= 20,
            "sdim_10k_within_1.3x_of_1k": ms["sdim"][top] / ms["sdim"][low] <= 1.3,
            "graphs_equal_eager_within_1e-5": all(d <= 1e-5 for d in diff.values()),
        },
    }
    path = write_result(f"ctr_cost_{args.device}", result, out=args.out_dir)
    print(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
