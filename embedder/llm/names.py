"""Resolve LLM embedder names (``smollm2``, ``smollm2:design5``, ``<dir>``) to local files.

Torch-free and offline. Forms understood:

- a directory holding :data:`~embedder.llm.config.CONFIG_NAME` (a saved LLM embedder);
- ``<model>[:<preset>]`` where ``<model>`` is a packaged model (``smollm2``,
  ``SmolLM2-135M-Instruct``), a local Hugging Face model directory, or a ``.gguf`` file, and
  ``<preset>`` one of ``design1`` … ``design5``. Packaged models and ``.gguf`` files default to
  :data:`~embedder.llm.config.DEFAULT_PRESET`; a plain Hugging Face directory without a preset
  is left to the default (sentence-transformers) backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from core.errors import InvalidRequest, ModelNotAvailable
from embedder.llm.config import BACKBONE_DIR, CONFIG_NAME, DEFAULT_PRESET, PRESETS, BackboneSource
from embedder.packaged import (
    PackagedModel,
    find_packaged,
    packaged_index,
    packaged_model_path,
    packaged_names,
)

#: Deprecated read-only view ``{name or alias: model}`` of the packaged LLMs, for callers of
#: the former table; use :func:`embedder.is_packaged_model`. The table is
#: :data:`embedder.packaged.PACKAGED_MODELS`.
LLM_MODELS: Mapping[str, PackagedModel] = MappingProxyType(packaged_index("llm"))


def packaged_llm(name: str) -> PackagedModel | None:
    """The packaged LLM called ``name`` (no preset suffix), or ``None``."""
    return find_packaged(name, "llm")


def _not_a_backbone(source: str, what: str = "") -> ModelNotAvailable:
    """``<what>'source' is not a packaged LLM (...), a Hugging Face model directory or ...``."""
    llms = packaged_names("llm")
    return ModelNotAvailable(
        f"{what}'{source}' is not a packaged LLM ({', '.join(llms)}), a Hugging Face model "
        "directory or a .gguf file.",
        details={"model": source, "known_models": llms},
    )


@dataclass(frozen=True)
class LLMTarget:
    """What an LLM embedder name designates.

    ``path`` is a saved embedder directory (``preset`` is ``None``), or a backbone: a Hugging
    Face model directory or a ``.gguf`` file, to be topped with the untrained head of ``preset``.
    """

    name: str
    path: Path
    preset: str | None


def split_preset(name: str) -> tuple[str, str | None]:
    """``("smollm2", "design5")`` for ``"smollm2:design5"``; ``(name, None)`` without a preset.

    A suffix after the last ``:`` counts as a preset only if it is one, or if the part before
    it is a packaged model (then an unknown suffix is an error listing the valid presets).
    """
    base, sep, suffix = name.rpartition(":")
    if not sep or not base:
        return name, None
    if suffix in PRESETS:
        return base, suffix
    if packaged_llm(base) is not None:
        raise InvalidRequest(
            f"Invalid preset '{suffix}' in '{name}'. Valid presets: {', '.join(PRESETS)}"
        )
    return name, None


def is_saved_embedder(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``LLMEmbeddingModel.save``."""
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def _is_backbone(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".gguf"
    return path.is_dir() and ((path / "config.json").is_file() or any(path.glob("*.gguf")))


def resolve_llm(name: str) -> LLMTarget | None:
    """The LLM embedder ``name`` designates, or ``None`` when it is not an LLM embedder name.

    Raises :class:`ModelNotAvailable` for a packaged model that is not installed and for a
    ``<path>:<preset>`` whose path holds no model.
    """
    path = Path(name).expanduser()
    if is_saved_embedder(path):
        return LLMTarget(name, path.resolve(), None)
    base, preset = split_preset(name)
    packaged = packaged_llm(base)
    if packaged is not None:
        preset = preset or DEFAULT_PRESET
        return LLMTarget(f"{packaged.name}:{preset}", packaged_model_path(packaged), preset)
    base_path = Path(base).expanduser()
    if preset is not None:
        if not _is_backbone(base_path):
            raise _not_a_backbone(base)
        return LLMTarget(name, base_path.resolve(), preset)
    if base_path.is_file() and base_path.suffix == ".gguf":
        return LLMTarget(f"{name}:{DEFAULT_PRESET}", base_path.resolve(), DEFAULT_PRESET)
    return None


def resolve_backbone(
    source: BackboneSource, base_dir: Path | None = None
) -> tuple[Path, str | None]:
    """``(directory, gguf_file or None)`` to load ``source`` from, offline.

    ``base_dir`` is the saved embedder's directory, against which :data:`BACKBONE_DIR` and other
    relative sources resolve first.
    """
    packaged = packaged_llm(source.source)
    if packaged is not None:
        gguf = packaged_model_path(packaged)
        return gguf.parent, gguf.name
    path = Path(source.source).expanduser()
    if base_dir is not None and not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if source.gguf_file is not None:
            if not (path / source.gguf_file).is_file():
                raise ModelNotAvailable(f"No GGUF file '{source.gguf_file}' in '{source.source}'.")
            return path, source.gguf_file
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0]
        if ggufs:
            raise ModelNotAvailable(
                f"Directory '{source.source}' holds several GGUF files ({', '.join(ggufs)}); "
                "name one."
            )
    where = "The saved embedder's backbone " if source.source == BACKBONE_DIR else "Backbone "
    raise _not_a_backbone(source.source, where)
