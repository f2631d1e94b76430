"""Capturing a forward as a CUDA graph: the part the CTR scorer and the cross-encoder share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: Eager runs before a capture (lazy initialisation, e.g. cuBLAS handles, must not be
#: captured).
WARMUP_RUNS = 2


def capture(
    step: Callable[[], T], device: torch.device, *, pool: Any = None
) -> tuple[torch.cuda.CUDAGraph, T]:
    """Run ``step`` :data:`WARMUP_RUNS` times on a side stream, then capture one call of it:
    the graph (``graph.replay()`` runs it again) and what the captured call returned (its
    output buffers, refilled by each replay). ``pool``: a memory pool shared with other
    graphs (``torch.cuda.graph_pool_handle()``). Errors propagate."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another thread's CUDA calls do not break this capture.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = step()
    return graph, out
