"""Score fusion: a weighted sum of component rerankers' per-query normalised scores.

A fusion reranker holds a list of *components* — any name :func:`ranker.text.load_reranker`
accepts (``embedder:all-MiniLM-L6-v2``, ``quarry-li-cranfield``, a trained directory) or
``first-stage`` — and one weight per component. For one query it scores the documents with
every component, min-max normalises each component's scores over that query's documents
(``minmax``; or ``zscore``), and returns the weighted sum of the normalised scores. The
weights are fit on judged queries by :mod:`ranker.text.train.fusion`, never on the queries
they then score.

``first-stage`` reads the documents' order as the first stage's ranking (the order
``quarry eval rerank``, the k-fold runs and the search rerank stage pass candidates in) and
scores rank r as 1 / (60 + r), reciprocal-rank fusion's form; it has no model and needs no
text. A caller that passes documents in another order must not use it.

A fusion directory holds only ``quarry_reranker.json``: ``{"kind": "fusion", "version",
"components": [{"name", "weight"}], "normalization", "fit"}``. Torch-free: components
import what they need when loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from core.errors import InvalidRequest
from ranker.text.base import TextReranker, check_inputs
from ranker.text.config import CONFIG_FILE, CONFIG_VERSION

if TYPE_CHECKING:
    from ranker.text.registry import LoadOptions

FUSION_KIND = "fusion"
#: The component that scores the documents' given (first-stage) order.
FIRST_STAGE = "first-stage"
#: Reciprocal-rank fusion's constant: rank r scores 1 / (RRF_K + r).
RRF_K = 60

Normalization = Literal["minmax", "zscore"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


def check_normalization(name: str) -> str:
    """``name`` if it is a known normalisation, else :class:`InvalidRequest` listing them."""
    if name not in NORMALIZATIONS:
        raise InvalidRequest(
            f"Invalid normalization {name!r}. Valid normalizations: {', '.join(NORMALIZATIONS)}"
        )
    return name


def normalize(scores: np.ndarray, how: str) -> np.ndarray:
    """One query's scores rescaled: to [0, 1] (``minmax``) or to mean 0, std 1 (``zscore``);
    all-equal scores become zeros (they carry no order)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        return x
    if check_normalization(how) == "minmax":
        span = float(x.max() - x.min())
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)
    std = float(x.std())
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def first_stage_scores(n: int) -> np.ndarray:
    """Scores of ``n`` documents given in first-stage order: 1 / (60 + rank)."""
    return (1.0 / (RRF_K + np.arange(1, n + 1, dtype=np.float64))).astype(np.float32)


def fuse(matrix: np.ndarray, weights: Sequence[float] | np.ndarray, how: str) -> np.ndarray:
    """Sum over components c of weights[c] * normalize(matrix[c]): one query's fused scores
    (``matrix``: C x n raw scores)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != len(weights):
        raise InvalidRequest(f"Expected {len(weights)} rows of component scores, got {m.shape}")
    normalized = np.stack([normalize(row, how) for row in m]) if m.size else m
    return (np.asarray(weights, dtype=np.float64) @ normalized).astype(np.float32)


@dataclass(frozen=True)
class FusionComponent:
    """One component: a reranker name (or ``first-stage``) and its weight."""

    name: str
    weight: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidRequest("A fusion component needs a reranker name")
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight)):
            raise InvalidRequest(f"Component {self.name!r} has a non-finite weight")


@dataclass(frozen=True)
class FusionConfig:
    """The contents of a fusion directory's ``quarry_reranker.json``. ``fit`` records how
    the weights were chosen (objective, queries, grid)."""

    components: tuple[FusionComponent, ...]
    normalization: str = "minmax"
    fit: dict[str, Any] = field(default_factory=dict)
    kind: str = FUSION_KIND
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not self.components:
            raise InvalidRequest("A fusion reranker needs at least one component")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"Fusion components repeat a name: {names}")
        check_normalization(self.normalization)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    @property
    def weights(self) -> list[float]:
        return [float(c.weight) for c in self.components]

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/quarry_reranker.json``; returns the directory."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        (path / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FusionConfig:
        """Read a fusion directory's config; clear errors for bad files."""
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            components = tuple(
                FusionComponent(str(c["name"]), float(c["weight"])) for c in data["components"]
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{path} is not a readable fusion config: {exc!r}") from exc
        if data.get("kind") != FUSION_KIND:
            raise InvalidRequest(f"{path} is a {data.get('kind')!r} reranker, not a fusion")
        if int(data.get("version", CONFIG_VERSION)) > CONFIG_VERSION:
            raise InvalidRequest(f"{path} was written by a newer Quarry")
        return cls(
            components,
            normalization=str(data.get("normalization", "minmax")),
            fit=dict(data.get("fit") or {}),
        )


class FirstStageReranker:
    """The documents' given order as scores (see the module docstring)."""

    kind = FIRST_STAGE
    name = FIRST_STAGE

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        check_inputs(query, documents)
        return first_stage_scores(len(documents))


def load_component(name: str, options: LoadOptions | None = None) -> TextReranker:
    """A component by name: ``first-stage`` or anything :func:`load_reranker` loads."""
    if name == FIRST_STAGE:
        return FirstStageReranker()
    from ranker.text.registry import load_reranker

    return load_reranker(name, options)


class FusionReranker:
    """A :class:`~ranker.text.base.TextReranker` fusing its components' scores."""

    kind = FUSION_KIND

    def __init__(self, config: FusionConfig, components: Sequence[TextReranker], name: str) -> None:
        if len(components) != len(config.components):
            raise InvalidRequest("One loaded reranker is needed per fusion component")
        self.config = config
        self.components = list(components)
        self.name = name

    def component_scores(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw scores, one row per component (C x len(documents))."""
        return np.stack(
            [np.asarray(c.score(query, documents), dtype=np.float64) for c in self.components]
        )

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        check_inputs(query, documents)
        if not documents:
            return np.empty(0, dtype=np.float32)
        matrix = self.component_scores(query, documents)
        return fuse(matrix, self.config.weights, self.config.normalization)


def load_fusion(path: Path, name: str, options: LoadOptions | None = None) -> FusionReranker:
    """Load a fusion directory and each of its components (with ``options``)."""
    config = FusionConfig.load(path)
    components = [load_component(n, options) for n in config.names]
    return FusionReranker(config, components, name)
