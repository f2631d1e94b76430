"""Resolve model names to local files, load embedders, and keep loaded ones in a pool.

Nothing here reaches a model hub: names resolve to a packaged model, a local directory or the
local Hugging Face cache, and a missing model raises :class:`ModelNotAvailable` saying what to
install.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from core.errors import InvalidRequest, ModelNotAvailable
from embedder.base import Embedder
from embedder.llm.config import PRESETS
from embedder.llm.names import resolve_llm
from embedder.packaged import (
    PACKAGED_MODELS,
    PackagedModel,
    find_packaged,
    packaged_index,
    packaged_model_path,
    packaged_names,
    packaged_summary,
)

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_BACKEND = "sentence-transformers"
#: Backend of LLM embedders; names that designate one (see :mod:`embedder.llm.names`) always use it.
LLM_BACKEND = "llm"

#: Deprecated read-only view ``{name or alias: model}`` of the packaged sentence-transformers
#: models, for callers of the former table; use :func:`is_packaged_model` /
#: :func:`packaged_model_names`. The table is :data:`embedder.packaged.PACKAGED_MODELS`.
KNOWN_MODELS: Mapping[str, PackagedModel] = MappingProxyType(
    packaged_index("sentence-transformers")
)


def packaged_model_names() -> list[str]:
    """Every name and alias of the packaged models (MiniLM, SmolLM2, ...), in table order.

    LLM names among them also take a preset suffix (``smollm2:design5``), which
    :func:`is_packaged_model` accepts; the suffixed forms are not listed here.
    """
    return packaged_names()


def is_packaged_model(name: str) -> bool:
    """Whether ``name`` designates a packaged model: a name or alias of one, or a packaged
    LLM's name with a valid preset suffix (``smollm2:design5``).

    Looks at the name only: the package need not be installed, and nothing is loaded.
    """
    if find_packaged(name) is not None:
        return True
    base, sep, preset = name.rpartition(":")
    return bool(sep) and preset in PRESETS and find_packaged(base, "llm") is not None


def _from_hf_cache(name: str) -> Path | None:
    """The snapshot of ``name`` already in the local Hugging Face cache, without network."""
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached, bad repo id, or huggingface_hub missing: all mean "not here"
        return None


@dataclass(frozen=True)
class _Target:
    """A resolved name. ``backend`` is the one it needs (``None``: the caller's choice);
    ``variant`` tells apart models built from the same files (LLM presets)."""

    name: str
    path: Path
    backend: str | None = None
    variant: str = ""


def _resolve_target(name: str) -> _Target:
    """What ``name`` designates: a packaged model, an LLM embedder name (see
    :func:`embedder.llm.names.resolve_llm`), a local model directory or a Hugging Face cache
    entry. Touches the file system (stats, ``find_spec``), never the network."""
    packaged = find_packaged(name, "sentence-transformers")
    if packaged is not None:
        return _Target(packaged.name, packaged_model_path(packaged))
    llm = resolve_llm(name)
    if llm is not None:
        return _Target(llm.name, llm.path, LLM_BACKEND, llm.preset or "")
    return _Target(*_resolve_local(name))


def _resolve(name: str) -> tuple[str, Path]:
    """``(canonical name, model directory or GGUF file)`` for ``name``."""
    target = _resolve_target(name)
    return target.name, target.path


def _resolve_local(name: str) -> tuple[str, Path]:
    """A local model directory, or a Hugging Face repo id already in the local cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise ModelNotAvailable(
                f"Directory '{name}' holds no model (no modules.json or config.json)."
            )
        return name, path.resolve()
    cached = _from_hf_cache(name)
    if cached is not None:
        return name, cached
    raise ModelNotAvailable(
        f"Model '{name}' is not installed: it is not a packaged model, a local directory, or in "
        f"the local Hugging Face cache. Packaged models: {packaged_summary()}. Packaged LLMs "
        f"take a preset suffix (<name>:{'|'.join(PRESETS)}). Or pass a local model directory.",
        details={
            "model": name,
            "known_models": packaged_names(),
            "install": {m.name: m.install_command for m in PACKAGED_MODELS},
        },
    )


def resolve_model_path(name: str) -> Path:
    """The local directory (or GGUF file) holding model ``name``; :class:`ModelNotAvailable`
    if none."""
    return _resolve(name)[1]


@dataclass(frozen=True)
class LoadOptions:
    """How a backend loads a model: device, batching, and ``torch.compile`` where supported
    (the LLM backend; others ignore ``compile``)."""

    device: str = "auto"
    batch_tokens: int = 16_384
    max_batch_size: int = 256
    compile: bool = False


class BackendFactory(Protocol):
    """Builds an :class:`Embedder` from a local model directory."""

    def __call__(self, path: Path, *, name: str, options: LoadOptions) -> Embedder: ...


def _sentence_transformers(path: Path, *, name: str, options: LoadOptions) -> Embedder:
    # Imported here so that importing embedder does not pull in torch and transformers.
    # ``compile`` is ignored: small encoders are bound by the host, not by fusable kernels.
    from embedder.sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
        path,
        name=name,
        device=options.device,
        batch_tokens=options.batch_tokens,
        max_batch_size=options.max_batch_size,
    )


def _llm(path: Path, *, name: str, options: LoadOptions) -> Embedder:
    # Imported here so that importing embedder does not pull in torch and transformers.
    from embedder.llm.model import LLMEmbedder

    return LLMEmbedder.from_name(
        path,
        name=name,
        device=options.device,
        batch_tokens=options.batch_tokens,
        max_batch_size=options.max_batch_size,
        compile=options.compile,
    )


_BACKENDS: dict[str, BackendFactory] = {
    "sentence-transformers": _sentence_transformers,
    LLM_BACKEND: _llm,
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``factory`` loadable as backend ``name``."""
    if name in _BACKENDS:
        raise ValueError(f"Embedder backend '{name}' is already registered")
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    """Names of the registered embedder backends."""
    return sorted(_BACKENDS)


def get_backend(name: str) -> BackendFactory:
    """The factory registered as ``name``; :class:`InvalidRequest` listing valid ones if none."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise InvalidRequest(
            f"Unknown embedder backend '{name}'. Valid backends: {', '.join(available_backends())}"
        ) from None


def _load(name: str, path: Path, *, backend: str, options: LoadOptions) -> Embedder:
    factory = get_backend(backend)
    logger.info("loading embedder %s (backend %s, device %s)", name, backend, options.device)
    return factory(path, name=name, options=options)


def load_embedder(
    name: str,
    *,
    device: str = "auto",
    batch_tokens: int = 16_384,
    max_batch_size: int = 256,
    backend: str = DEFAULT_BACKEND,
    compile: bool = False,
) -> Embedder:
    """Resolve ``name`` to local files and load it. ``device="auto"`` picks CUDA when present.

    Names of LLM embedders (``smollm2:design5``, a directory with ``quarry_embedder.json``)
    always load with the ``llm`` backend; ``compile`` runs those through ``torch.compile``.
    """
    target = _resolve_target(name)
    return _load(
        target.name,
        target.path,
        backend=target.backend or backend,
        options=LoadOptions(device, batch_tokens, max_batch_size, compile),
    )


class EmbedderPool:
    """Loaded embedders, one per model directory (and LLM preset), shared by every caller.

    ``get`` is thread-safe: concurrent first calls for one model load it once, and loading one
    model does not block callers of models already loaded. A requested name is resolved to
    files once per pool (the first ``get`` that loads or finds its model); later calls with
    that name are a dictionary lookup. Two names of one model (``minilm`` and
    ``all-MiniLM-L6-v2``) share one loaded embedder.
    """

    def __init__(
        self,
        device: str = "auto",
        batch_tokens: int = 16_384,
        max_batch_size: int = 256,
        *,
        backend: str = DEFAULT_BACKEND,
        compile: bool = False,
    ) -> None:
        get_backend(backend)  # fail fast on a bad name
        self.options = LoadOptions(device, batch_tokens, max_batch_size, compile)
        self.backend = backend
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[Path, str], threading.Lock] = {}
        # Loaded embedders by resolved files, and the same embedders by every name asked for.
        self._embedders: dict[tuple[Path, str], Embedder] = {}
        self._by_name: dict[str, Embedder] = {}

    @property
    def device(self) -> str:
        """Device every model of the pool loads on."""
        return self.options.device

    @property
    def batch_tokens(self) -> int:
        """Token budget of one forward pass."""
        return self.options.batch_tokens

    @property
    def max_batch_size(self) -> int:
        """Most texts in one forward pass."""
        return self.options.max_batch_size

    @property
    def compile(self) -> bool:
        """Whether LLM embedders are compiled at load."""
        return self.options.compile

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbedderPool:
        """A pool configured by ``settings.embedder``."""
        conf = settings.embedder
        return cls(conf.device, conf.batch_tokens, conf.max_batch_size, compile=conf.compile)

    def get(self, name: str) -> Embedder:
        """The embedder for ``name``, loading it on first use.

        Raises :class:`ModelNotAvailable` (nothing is cached then, so a later call, after the
        model was installed, resolves again) or :class:`InvalidRequest` for a bad name.
        """
        with self._lock:
            embedder = self._by_name.get(name)
        if embedder is not None:
            return embedder
        # Resolution stats files; done outside the lock so other names are not held up.
        target = _resolve_target(name)
        key = (target.path, target.variant)
        with self._lock:
            embedder = self._embedders.get(key)
            if embedder is not None:
                self._by_name[name] = embedder
                return embedder
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            embedder = self._embedders.get(key)
            if embedder is None:
                embedder = _load(
                    target.name,
                    target.path,
                    backend=target.backend or self.backend,
                    options=self.options,
                )
            with self._lock:
                self._embedders.setdefault(key, embedder)
                self._by_name[name] = embedder
        return embedder

    def loaded(self) -> list[str]:
        """Names of the models loaded so far, in load order."""
        with self._lock:
            return [embedder.name for embedder in self._embedders.values()]
