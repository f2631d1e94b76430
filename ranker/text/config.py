"""What a Quarry-trained reranker directory holds, and each kind's options. Torch-free.

A reranker directory::

    quarry_reranker.json   {"kind", "version", "backbone", "backbone_training", "adapter",
                            "options": {...}}
    weights.safetensors    the kind's own parameters (classification head, projection,
                           kernel weights); empty for the LLM kind, which has none
    backbone/              only when the backbone's weights changed (trained in full, or an
                           adapter merged into it): a Hugging Face model directory
    adapter/               only when a LoRA adapter was trained on an unchanged backbone
    training.json          how it was trained (written by the trainer)

``backbone`` is a packaged model name (``all-MiniLM-L6-v2``, ``smollm2``), an absolute path,
or ``backbone`` (the directory inside). Weights that ship in a package are referenced by name,
never copied. Options are a per-kind dataclass: unknown keys fail with the list of valid ones,
the habit of sentence-transformers' ``config_keys``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from core.errors import InvalidRequest

#: The file naming a directory's kind (also :data:`ranker.text.registry.CONFIG_FILE`).
CONFIG_FILE = "quarry_reranker.json"
WEIGHTS_FILE = "weights.safetensors"
BACKBONE_DIR = "backbone"
ADAPTER_DIR = "adapter"
#: Bumped when the directory layout changes incompatibly.
CONFIG_VERSION = 1

BackboneTraining = Literal["frozen", "full", "lora"]
BACKBONE_TRAINING: tuple[str, ...] = get_args(BackboneTraining)

#: The kinds whose models Quarry builds, trains and saves (``embedder:MODEL`` is not one).
MODEL_KINDS: tuple[str, ...] = ("cross-encoder", "late-interaction", "knrm", "llm", "dense")


def check_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`MODEL_KINDS`, else :class:`InvalidRequest` listing them."""
    if kind not in MODEL_KINDS:
        raise InvalidRequest(
            f"Invalid reranker kind {kind!r}. Valid kinds: {', '.join(MODEL_KINDS)}"
        )
    return kind


def check_backbone_training(mode: str) -> str:
    """``mode`` if it is ``frozen``, ``full`` or ``lora``, else :class:`InvalidRequest`."""
    if mode not in BACKBONE_TRAINING:
        raise InvalidRequest(
            f"Invalid backbone training {mode!r}. Valid modes: {', '.join(BACKBONE_TRAINING)}"
        )
    return mode


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidRequest(f"Option {name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class KindOptions:
    """Base of the per-kind option sets. ``max_length`` bounds the tokens of one scored unit:
    the (query, document) pair for cross-encoders and LLMs, the document for late interaction
    and KNRM."""

    max_length: int = 512

    #: Option names whose values are tuples (JSON lists).
    TUPLES: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        _at_least("max_length", self.max_length, 4)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> KindOptions:
        """The options in ``data`` over the defaults; unknown keys fail listing the valid ones."""
        data = dict(data or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise InvalidRequest(
                f"Invalid option(s) {', '.join(unknown)} for this reranker kind. "
                f"Valid options: {', '.join(valid)}"
            )
        for key in cls.TUPLES:
            if key in data and isinstance(data[key], list | tuple):
                data[key] = tuple(data[key])
        try:
            return cls(**data)
        except TypeError as exc:
            raise InvalidRequest(f"Invalid reranker options: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CrossEncoderOptions(KindOptions):
    """monoBERT: ``[CLS] query [SEP] document [SEP]`` → one logit (two-label models: the
    difference of the logits). Pairs longer than ``max_length`` lose tokens from the longer
    side first."""


@dataclass(frozen=True)
class LateInteractionOptions(KindOptions):
    """ColBERT: query and document token vectors, projected to ``dim`` and L2-normalised.

    Markers are inserted after ``[CLS]`` (ColBERT's ``[Q]`` and ``[D]``; BERT's unused
    vocabulary slots by default). With ``query_augmentation`` the query is padded to
    ``query_length`` with ``[MASK]`` tokens that are not attended to but do get vectors and
    take part in MaxSim (ColBERT's query augmentation). ``skip_punctuation`` drops punctuation
    tokens from the document side, as ColBERT does; padding is always dropped.
    ``max_length`` bounds the document's tokens.
    """

    max_length: int = 256
    dim: int = 128
    query_length: int = 32
    query_marker: str = "[unused0]"
    document_marker: str = "[unused1]"
    query_augmentation: bool = True
    skip_punctuation: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("dim", self.dim, 1)
        _at_least("query_length", self.query_length, 4)


#: K-NRM's kernels: mu = 1.0 with sigma 1e-3 (exact match), then mu = 0.9, 0.7, ..., -0.9
#: with sigma 0.1 (Xiong et al. 2017).
KNRM_MUS: tuple[float, ...] = (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, -0.1, -0.3, -0.5, -0.7, -0.9)
KNRM_SIGMAS: tuple[float, ...] = (1e-3, *([0.1] * 10))

KNRMEmbeddings = Literal["input", "contextual"]


@dataclass(frozen=True)
class KNRMOptions(KindOptions):
    """K-NRM: kernel pooling over the query x document cosine matrix of token embeddings.

    ``embeddings="input"`` (the default) uses the backbone's input word-piece embeddings:
    K-NRM's design is context-free term embeddings, under which the same word piece has
    cosine exactly 1 with itself, so the exact-match kernel (sigma 1e-3) means exact match;
    and no transformer runs, so scoring costs an embedding lookup and a matrix product.
    ``"contextual"`` uses the last layer's token states (a transformer forward per text; the
    same word in two contexts no longer matches exactly). ``activation`` is ``"none"`` (a
    plain linear score, the default: listwise softmax training wants an unbounded score) or
    ``"tanh"`` (the paper's, bounded to [-1, 1]). Special tokens (and punctuation, with
    ``skip_punctuation``) are left out on both sides. ``max_length`` bounds the document.
    """

    max_length: int = 256
    query_length: int = 32
    embeddings: str = "input"
    mus: tuple[float, ...] = KNRM_MUS
    sigmas: tuple[float, ...] = KNRM_SIGMAS
    activation: str = "none"
    skip_punctuation: bool = True

    TUPLES: ClassVar[tuple[str, ...]] = ("mus", "sigmas")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("query_length", self.query_length, 1)
        if self.embeddings not in get_args(KNRMEmbeddings):
            raise InvalidRequest(
                f"Invalid KNRM embeddings {self.embeddings!r}. Valid: input, contextual"
            )
        if self.activation not in ("none", "tanh"):
            raise InvalidRequest(f"Invalid KNRM activation {self.activation!r}. Valid: none, tanh")
        if not self.mus or len(self.mus) != len(self.sigmas):
            raise InvalidRequest("KNRM needs as many kernel sigmas as mus (at least one)")
        if not all(math.isfinite(s) and s > 0 for s in self.sigmas):
            raise InvalidRequest("KNRM kernel sigmas must be > 0")


@dataclass(frozen=True)
class DenseOptions(KindOptions):
    """A bi-encoder: query and document encoded apart, mean-pooled over their attended tokens
    (special tokens included), L2-normalised; the score is ``scale`` times their cosine.
    ``max_length`` bounds the document's tokens (256: the bundled MiniLM's own limit) and
    ``query_length`` the query's."""

    max_length: int = 256
    query_length: int = 64
    scale: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("query_length", self.query_length, 4)
        scale = self.scale
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise InvalidRequest(f"Option scale must be a number > 0, got {self.scale!r}")


#: The relevance prompt of the LLM kind; ``{query}`` and ``{document}`` are filled in.
DEFAULT_LLM_PROMPT = (
    "Query: {query}\nDocument: {document}\nIs the document relevant to the query? Answer yes or no."
)

#: The query-likelihood prompt of the LLM kind: only ``{document}`` is filled in; the query is
#: what the model is asked to write (the question-generation prompt of UPR, Sachan et al. 2022).
DEFAULT_LLM_LIKELIHOOD_PROMPT = (
    "Passage: {document}\nPlease write a question based on this passage."
)

#: How the LLM kind scores a pair.
LLM_SCORINGS: tuple[str, ...] = ("yes-no", "query-likelihood")


@dataclass(frozen=True)
class LLMPointwiseOptions(KindOptions):
    """Pointwise LLM relevance, ``prompt`` as the user turn of the model's chat template.

    ``scoring`` ``"yes-no"`` (the default): the prompt holds the query and the document, and
    the score is logit(yes) - logit(no) at the answer's first position. Several spellings count
    for each answer (``yes_tokens``, ``no_tokens``; their logits are combined by log-sum-exp),
    since an instruct model may open its answer with "Yes" as well as "yes". Each must be one
    token of the vocabulary.

    ``scoring`` ``"query-likelihood"``: the prompt holds only the document and asks for a
    question; the score is the mean log-probability of the query's tokens (and the token that
    closes the model's turn) as the model's answer. The default prompt follows the scoring.

    The query is cut to ``query_length`` tokens and the document to what ``max_length`` leaves.
    """

    prompt: str = DEFAULT_LLM_PROMPT
    query_length: int = 64
    yes_tokens: tuple[str, ...] = ("yes", "Yes")
    no_tokens: tuple[str, ...] = ("no", "No")
    scoring: str = "yes-no"

    TUPLES: ClassVar[tuple[str, ...]] = ("yes_tokens", "no_tokens")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("query_length", self.query_length, 1)
        if self.scoring not in LLM_SCORINGS:
            raise InvalidRequest(
                f"Invalid LLM scoring {self.scoring!r}. Valid: {', '.join(LLM_SCORINGS)}"
            )
        if self.scoring == "query-likelihood":
            if self.prompt == DEFAULT_LLM_PROMPT:
                object.__setattr__(self, "prompt", DEFAULT_LLM_LIKELIHOOD_PROMPT)
            if self.prompt.count("{query}") != 0 or self.prompt.count("{document}") != 1:
                raise InvalidRequest(
                    "A query-likelihood prompt needs exactly one {document} and no {query} "
                    "(the query is the answer it scores)"
                )
            return
        if self.prompt.count("{query}") != 1 or self.prompt.count("{document}") != 1:
            raise InvalidRequest("The LLM prompt needs exactly one {query} and one {document}")
        if not self.yes_tokens or not self.no_tokens:
            raise InvalidRequest("yes_tokens and no_tokens must not be empty")


KIND_OPTIONS: dict[str, type[KindOptions]] = {
    "cross-encoder": CrossEncoderOptions,
    "late-interaction": LateInteractionOptions,
    "knrm": KNRMOptions,
    "llm": LLMPointwiseOptions,
    "dense": DenseOptions,
}

#: Backbone each kind starts from unless told otherwise (packaged names).
DEFAULT_BACKBONES: dict[str, str] = {
    "cross-encoder": "all-MiniLM-L6-v2",
    "late-interaction": "all-MiniLM-L6-v2",
    "knrm": "all-MiniLM-L6-v2",
    "llm": "smollm2",
    "dense": "all-MiniLM-L6-v2",
}


def kind_options(kind: str, data: dict[str, Any] | None = None) -> KindOptions:
    """``kind``'s options from ``data`` (checked; defaults filled in)."""
    return KIND_OPTIONS[check_kind(kind)].from_dict(data)


@dataclass(frozen=True)
class RerankerConfig:
    """The contents of ``quarry_reranker.json`` (see the module docstring)."""

    kind: str
    backbone: str
    options: dict[str, Any] = field(default_factory=dict)
    backbone_training: str = "frozen"
    adapter: bool = False
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        check_kind(self.kind)
        check_backbone_training(self.backbone_training)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/quarry_reranker.json``; returns its path."""
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RerankerConfig:
        """Read ``directory/quarry_reranker.json``; clear errors for bad or newer files."""
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"{path} is not a readable reranker config: {exc}") from exc
        if not isinstance(data, dict) or "kind" not in data or "backbone" not in data:
            raise InvalidRequest(f'{path}: expected an object with "kind" and "backbone"')
        version = int(data.get("version", CONFIG_VERSION))
        if version > CONFIG_VERSION:
            raise InvalidRequest(
                f"{path} was written by a newer Quarry (layout version {version}; this one "
                f"reads up to {CONFIG_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
