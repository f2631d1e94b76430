"""The typed registry of CTR model kinds: name -> how to build it and its default settings.

``din``, ``din-short``, ``sdim``, ``dare`` and ``twin`` are registered here; an unknown name
fails with the list of valid ones. Building imports torch; looking names up does not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidRequest
from ranker.ctr.config import CTRConfig, check_option_names

if TYPE_CHECKING:
    from ranker.ctr.models import CTRModule

#: ``builder(config, item_categories)`` -> the torch module (``item_categories``: the
#: catalogue's category of every row, or ``None`` when weights will be loaded over it).
ModuleBuilder = Callable[[CTRConfig, "np.ndarray | None"], "CTRModule"]


@dataclass(frozen=True)
class ModelSpec:
    """One model kind: its name, a one-line summary, its builder and default options."""

    kind: str
    summary: str
    build: ModuleBuilder
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add a kind (its defaults must be valid config options)."""
    check_option_names(dict(spec.defaults))
    MODELS[spec.kind] = spec


def model_spec(kind: str) -> ModelSpec:
    """The spec of ``kind``; an unknown kind names the valid ones."""
    spec = MODELS.get(kind)
    if spec is None:
        raise InvalidRequest(
            f"Unknown model {kind!r}. Valid models: {', '.join(MODELS)}",
            details={"model": kind, "valid": list(MODELS)},
        )
    return spec


def make_config(
    kind: str, *, n_items: int, n_categories: int, options: Mapping[str, Any] | None = None
) -> CTRConfig:
    """The config of a new ``kind`` model: registry defaults, then ``options`` over them."""
    spec = model_spec(kind)
    merged = {**spec.defaults, **(options or {})}
    check_option_names(merged)
    base = CTRConfig(kind=kind, n_items=n_items, n_categories=n_categories)
    return base.with_options(**merged)


def build_module(config: CTRConfig, item_categories: np.ndarray | None = None) -> CTRModule:
    """The torch module of ``config.kind`` (imports torch)."""
    return model_spec(config.kind).build(config, item_categories)


def _din(config: CTRConfig, item_categories: np.ndarray | None) -> CTRModule:
    from ranker.ctr.models import DIN

    return DIN(config, item_categories)


def _sdim(config: CTRConfig, item_categories: np.ndarray | None) -> CTRModule:
    from ranker.ctr.models import SDIM

    return SDIM(config, item_categories)


def _dare(config: CTRConfig, item_categories: np.ndarray | None) -> CTRModule:
    from ranker.ctr.models import DARE

    return DARE(config, item_categories, shared=False)


def _twin(config: CTRConfig, item_categories: np.ndarray | None) -> CTRModule:
    from ranker.ctr.models import DARE

    if config.attention_dim not in (None, config.embed_dim):
        raise InvalidRequest(
            "twin shares one table between attention and representation: attention_dim must "
            f"equal embed_dim ({config.embed_dim}); use dare to decouple them"
        )
    return DARE(config, item_categories, shared=True)


register_model(ModelSpec("din", "DIN: target attention over the full history", _din))
register_model(
    ModelSpec(
        "din-short",
        "DIN over the last 50 behaviours (the long-history control)",
        _din,
        MappingProxyType({"max_history": 50}),
    )
)
register_model(ModelSpec("sdim", "SDIM: SimHash bucket sampling of the history", _sdim))
register_model(ModelSpec("dare", "DARE: decoupled attention/representation, top-k", _dare))
register_model(ModelSpec("twin", "TWIN: DARE's top-k attention with one shared table", _twin))
