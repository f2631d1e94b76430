"""Reranker kinds, name resolution and a pool of loaded rerankers.

A reranker is named by one of:

- ``embedder:MODEL`` — the bi-encoder stand-in over one of Quarry's embedders;
- a directory written by ``quarry train reranker`` (it holds ``quarry_reranker.json``
  naming its kind; ``fusion`` directories combine other rerankers, :mod:`ranker.text.fusion`)
  or any Hugging Face sequence-classification model directory (a cross-encoder);
- a packaged name listed in :data:`PACKAGED_RERANKERS`: ``smollm2-pointwise`` and
  ``smollm2-likelihood`` (zero-shot SmolLM2-135M-Instruct, the LLM kind, scoring yes/no
  log-odds and query likelihood) and the trained weights that ship in
  ``ranker/text/weights/<name>/`` (``quarry-li-cranfield``).

Kinds register a loader with :func:`register_kind`; the built-in ones (``cross-encoder``,
``late-interaction``, ``knrm``, ``llm`` and ``fusion``) are registered here with loaders that
import torch only when called. An unknown name fails with the list of valid ones. Nothing
reaches a model hub.
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
from ranker.text.config import CONFIG_FILE, MODEL_KINDS

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "KINDS",
    "PACKAGED_RERANKERS",
    "SHIPPED_RERANKERS",
    "WEIGHTS_ROOT",
    "KindLoader",
    "LoadOptions",
    "RerankerPool",
    "load_reranker",
    "register_kind",
    "register_packaged",
    "valid_names",
]

#: Where the trained rerankers that ship with Quarry live, one directory per name.
WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class LoadOptions:
    """How rerankers load and batch: device (``auto`` picks CUDA when present), token budget
    of one forward pass and the most pairs in one."""

    device: str = "auto"
    #: None: 65,536 on CUDA (one pass for 100 typical candidates), 16,384 on the CPU.
    batch_tokens: int | None = None
    max_batch_size: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> LoadOptions:
        """The server's ``QUARRY_RERANK__DEVICE``, ``__BATCH_TOKENS`` and ``__MAX_BATCH_SIZE``."""
        conf = settings.rerank
        return cls(conf.device, conf.batch_tokens, conf.max_batch_size)


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


def _model_directory(path: Path, name: str, options: LoadOptions) -> TextReranker:
    from ranker.text.loaders import load_directory

    return load_directory(path, name, options)


def _fusion_directory(path: Path, name: str, options: LoadOptions) -> TextReranker:
    from ranker.text.fusion import load_fusion

    return load_fusion(path, name, options)


for _kind in MODEL_KINDS:
    register_kind(_kind, _model_directory)
del _kind
register_kind("fusion", _fusion_directory)


def _shipped(name: str, options: LoadOptions) -> TextReranker:
    path = WEIGHTS_ROOT / name
    if not (path / CONFIG_FILE).is_file():
        raise ModelNotAvailable(
            f"The packaged reranker {name!r} is missing from this installation "
            f"(expected {CONFIG_FILE} under ranker/text/weights/{name}/); reinstall Quarry.",
            details={"model": name},
        )
    return _model_directory(path, name, options)


def _smollm2_pointwise(name: str, options: LoadOptions) -> TextReranker:
    from ranker.text.loaders import zero_shot

    return zero_shot("llm", "smollm2", name, options)


def _smollm2_likelihood(name: str, options: LoadOptions) -> TextReranker:
    from ranker.text.loaders import zero_shot

    return zero_shot("llm", "smollm2", name, options, {"scoring": "query-likelihood"})


#: Trained rerankers shipped under ``ranker/text/weights/`` (see each one's README).
SHIPPED_RERANKERS: tuple[str, ...] = ("quarry-li-cranfield",)

for _name in SHIPPED_RERANKERS:
    register_packaged(_name, _shipped)
del _name
register_packaged("smollm2-pointwise", _smollm2_pointwise)
register_packaged("smollm2-likelihood", _smollm2_likelihood)


def _bi_encoder(arg: str, name: str, options: LoadOptions) -> TextReranker:
    from embedder import load_embedder
    from ranker.text.bi_encoder import BiEncoderReranker

    model = arg or "all-MiniLM-L6-v2"
    embedder = load_embedder(
        model,
        device=options.device,
        batch_tokens=options.batch_tokens or 16_384,
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
    kinds = ", ".join(sorted(KINDS))
    return [
        *sorted(PACKAGED_RERANKERS),
        "embedder:MODEL",
        f"a reranker directory (kinds: {kinds}, or a Hugging Face cross-encoder)",
    ]


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
        return cls(LoadOptions.from_settings(settings))

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
