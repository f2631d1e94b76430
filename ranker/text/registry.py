"""Reranker kinds, name resolution and a pool of loaded rerankers.

A reranker is named by one of:

- ``embedder:MODEL`` — the bi-encoder stand-in over one of Quarry's embedders;
- a directory written by ``quarry train reranker`` (it holds ``quarry_reranker.json``
  naming its kind) or any Hugging Face sequence-classification model directory (a
  cross-encoder);
- a packaged name listed in :data:`PACKAGED_RERANKERS`.

Kinds register a loader with :func:`register_kind`; an unknown name fails with the list of
valid ones. Nothing reaches a model hub.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InvalidRequest, ModelNotAvailable
from ranker.text.base import TextReranker

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)

#: The file a Quarry-trained reranker directory carries: ``{"kind": ..., ...}``.
CONFIG_FILE = "quarry_reranker.json"


@dataclass(frozen=True)
class LoadOptions:
    """How rerankers load and batch: device (``auto`` picks CUDA when present), token budget
    of one forward pass and the most pairs in one."""

    device: str = "auto"
    batch_tokens: int = 16_384
    max_batch_size: int = 256


KindLoader = Callable[[Path, str, LoadOptions], TextReranker]
"""``loader(model_dir, name, options)`` for a directory of that kind."""

KINDS: dict[str, KindLoader] = {}
#: Names that resolve to something Quarry ships or knows how to build: name -> loader of
#: ``(name, options)``.
PACKAGED_RERANKERS: dict[str, Callable[[str, LoadOptions], TextReranker]] = {}


def register_kind(kind: str, loader: KindLoader) -> None:
    """Make directories whose config says ``kind`` loadable."""
    KINDS[kind] = loader


def register_packaged(name: str, loader: Callable[[str, LoadOptions], TextReranker]) -> None:
    """Make ``name`` resolve without a path (a reranker Quarry ships or builds zero-shot)."""
    PACKAGED_RERANKERS[name] = loader


def _bi_encoder(arg: str, name: str, options: LoadOptions) -> TextReranker:
    from embedder import load_embedder
    from ranker.text.bi_encoder import BiEncoderReranker

    model = arg or "all-MiniLM-L6-v2"
    embedder = load_embedder(
        model,
        device=options.device,
        batch_tokens=options.batch_tokens,
        max_batch_size=options.max_batch_size,
    )
    return BiEncoderReranker(embedder, name)


def _dir_kind(path: Path) -> str | None:
    config = path / CONFIG_FILE
    if config.is_file():
        try:
            kind = json.loads(config.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"{config} is not readable JSON: {exc}") from exc
        return str(kind) if kind else None
    hf = path / "config.json"
    if hf.is_file():
        try:
            archs = json.loads(hf.read_text(encoding="utf-8")).get("architectures") or []
        except (OSError, ValueError):
            archs = []
        if any(str(a).endswith("ForSequenceClassification") for a in archs):
            return "cross-encoder"
    return None


def valid_names() -> list[str]:
    """What :func:`load_reranker` accepts, for error messages."""
    return [*sorted(PACKAGED_RERANKERS), "embedder:MODEL", "a reranker directory"]


def load_reranker(name: str, options: LoadOptions | None = None) -> TextReranker:
    """Load the reranker ``name`` names (see the module docstring)."""
    options = options or LoadOptions()
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("A reranker name is required")
    head, sep, arg = name.partition(":")
    if sep and head == "embedder":
        return _bi_encoder(arg, name, options)
    if name in PACKAGED_RERANKERS:
        return PACKAGED_RERANKERS[name](name, options)
    path = Path(name).expanduser()
    if path.is_dir():
        kind = _dir_kind(path)
        if kind is None:
            raise InvalidRequest(
                f"{path} is neither a Quarry reranker (no {CONFIG_FILE}) nor a Hugging Face "
                "sequence-classification model"
            )
        loader = KINDS.get(kind)
        if loader is None:
            raise InvalidRequest(
                f"{path} is a {kind!r} reranker; known kinds: {', '.join(sorted(KINDS))}"
            )
        return loader(path, name, options)
    raise ModelNotAvailable(
        f"Unknown reranker {name!r}. Valid rerankers: {', '.join(valid_names())}",
        details={"model": name},
    )


class RerankerPool:
    """Loaded rerankers by name, shared by every caller; thread-safe, each loaded once."""

    def __init__(self, options: LoadOptions | None = None) -> None:
        self.options = options or LoadOptions()
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._loaded: dict[str, TextReranker] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RerankerPool:
        conf = settings.rerank
        return cls(LoadOptions(conf.device, conf.batch_tokens, conf.max_batch_size))

    def get(self, name: str) -> TextReranker:
        with self._lock:
            found = self._loaded.get(name)
            if found is not None:
                return found
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:
            with self._lock:
                found = self._loaded.get(name)
            if found is not None:
                return found
            logger.info("Loading reranker %s", name)
            reranker = load_reranker(name, self.options)
            with self._lock:
                self._loaded[name] = reranker
            return reranker

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(self._loaded)
