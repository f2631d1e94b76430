"""The embedder interface every backend implements, and device selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from core.errors import InvalidRequest

EmbedKind = Literal["query", "document"]
EMBED_KINDS: tuple[str, ...] = get_args(EmbedKind)


@runtime_checkable
class Embedder(Protocol):
    """A loaded text embedding model.

    ``embed`` returns float32 ``(n, dim)`` rows in the order of ``texts``. Implementations are
    safe to call from several threads at once (the API serves requests from a thread pool).
    """

    name: str
    dim: int
    max_seq_length: int
    device: str

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: EmbedKind = "document",
        normalize: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; ``progress(n)`` is called after each forward batch of ``n`` texts."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies after truncation, special tokens included."""
        ...


def check_texts(texts: Sequence[str]) -> None:
    """Raise :class:`InvalidRequest` for a bare string, a common slip for ``[text]``."""
    if isinstance(texts, str):
        raise InvalidRequest("texts must be a sequence of strings; wrap a single text in a list")


def check_kind(kind: str) -> None:
    """Raise :class:`InvalidRequest` unless ``kind`` is one of :data:`EMBED_KINDS`."""
    if kind not in EMBED_KINDS:
        raise InvalidRequest(f"Invalid embed kind '{kind}'. Valid kinds: {', '.join(EMBED_KINDS)}")


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is visible, else ``"cpu"``; check explicit CUDA."""
    import torch  # deferred: importing embedder must stay cheap

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidRequest(
            f"Device '{device}' was requested but CUDA is not available. Use 'cpu' or 'auto'."
        )
    return device
