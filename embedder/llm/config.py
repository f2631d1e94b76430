"""Configuration of LLM embedders: attention modes, the paper's five designs, the saved config.

Torch-free, so that name resolution in :mod:`embedder.registry` can use it without importing
torch. The designs are those of "Pooling And Attention: What Are Effective Designs For LLM-Based
Embedding Models?" (Tang and Yang, 2024); ``docs/methods.md`` describes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from core.errors import InvalidRequest

AttentionMode = Literal["causal", "bidirectional"]
ATTENTION_MODES: tuple[str, ...] = get_args(AttentionMode)

#: File that marks a directory as a saved LLM embedder (see :class:`EmbedderConfig`).
CONFIG_NAME = "quarry_embedder.json"
#: Subdirectories of a saved LLM embedder.
POOLING_DIR = "pooling"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1

#: Seed of the pooling heads of untrained presets (``smollm2:design5``): every process builds
#: the same head, so an untrained embedder still gives reproducible vectors.
PRESET_HEAD_SEED = 0
DEFAULT_PRESET = "design1"
DEFAULT_MAX_SEQ_LENGTH = 512


def check_attention(mode: str) -> None:
    """Raise :class:`InvalidRequest` unless ``mode`` is one of :data:`ATTENTION_MODES`."""
    if mode not in ATTENTION_MODES:
        raise InvalidRequest(
            f"Invalid attention mode '{mode}'. Valid modes: {', '.join(ATTENTION_MODES)}"
        )


@dataclass(frozen=True)
class Preset:
    """One of the paper's designs: an attention mode and a pooling head configuration."""

    name: str
    attention: AttentionMode
    pooling: dict[str, Any]
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("design1", "causal", {"mode": "eos"}, "causal attention, last-layer EOS state"),
        Preset(
            "design2",
            "causal",
            {"mode": "trainable", "source": "eos"},
            "causal attention, trainable cross-attention pooling over the last-layer EOS vector",
        ),
        Preset(
            "design3",
            "causal",
            {"mode": "mltp", "source": "eos"},
            "causal attention, multi-layer trainable pooling over each layer's EOS vector",
        ),
        Preset(
            "design4",
            "bidirectional",
            {"mode": "trainable", "source": "tokens"},
            "bidirectional attention, trainable cross-attention pooling over last-layer tokens",
        ),
        Preset(
            "design5",
            "bidirectional",
            {"mode": "mltp", "source": "mean"},
            "bidirectional attention, multi-layer trainable pooling (MLTP) over layer means",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`InvalidRequest` listing the valid ones if none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InvalidRequest(
            f"Invalid preset '{name}'. Valid presets: {', '.join(PRESETS)}"
        ) from None


@dataclass
class BackboneSource:
    """Where a backbone's weights live.

    ``source`` is a packaged model name (``"smollm2"``), a directory or a ``.gguf`` file path,
    or :data:`BACKBONE_DIR` for weights saved inside the embedder's own directory.
    ``gguf_file`` names the GGUF file inside ``source`` when ``source`` is a directory.
    """

    source: str
    gguf_file: str | None = None


@dataclass
class EmbedderConfig:
    """Everything :class:`~embedder.llm.model.LLMEmbeddingModel` needs besides weights.

    Saved as :data:`CONFIG_NAME`. ``pooling`` is the head's own config (``{"mode": ..., ...}``);
    its weights live in :data:`POOLING_DIR`. ``append_eos`` adds the tokenizer's EOS token after
    every text (decoders; last-token pooling then reads the state of a fixed token).
    ``padding_side`` is the side batches are padded on; results do not depend on it.
    """

    backbone: BackboneSource
    attention: AttentionMode = "causal"
    pooling: dict[str, Any] = field(default_factory=lambda: {"mode": "eos"})
    query_prefix: str = ""
    document_prefix: str = ""
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    append_eos: bool = True
    padding_side: Literal["left", "right"] = "right"
    attn_implementation: str = "sdpa"
    adapter: bool = False
    preset: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_attention(self.attention)
        if "mode" not in self.pooling:
            raise ValueError("pooling config needs a 'mode'")
        if self.max_seq_length < 2:
            raise ValueError(f"max_seq_length must be >= 2, got {self.max_seq_length}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedderConfig:
        """Inverse of :meth:`to_dict`; refuses unknown keys and newer formats."""
        version = int(data.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{CONFIG_NAME} has format_version {version}; this Quarry reads up to "
                f"{FORMAT_VERSION}. Upgrade Quarry."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown keys in {CONFIG_NAME}: {', '.join(unknown)}")
        values = dict(data)
        values["backbone"] = BackboneSource(**values["backbone"])
        return cls(**values)

    def save(self, directory: str | Path) -> Path:
        """Write :data:`CONFIG_NAME` into ``directory``; returns its path."""
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> EmbedderConfig:
        """Read :data:`CONFIG_NAME` from ``directory``."""
        return cls.from_dict(json.loads((Path(directory) / CONFIG_NAME).read_text()))
