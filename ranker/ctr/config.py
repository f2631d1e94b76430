"""Hyper-parameters of a CTR model: one dataclass for every kind, saved with the weights.

Each kind reads the fields it needs (the registry's per-kind defaults fill the rest); a field
that means nothing to a kind is kept and ignored, so one config shape serves them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from core.errors import InvalidRequest


@dataclass(frozen=True)
class CTRConfig:
    """What a CTR model is built from.

    Every behaviour (and the target) is embedded as ``[item; category]``, each field
    ``embed_dim`` wide, so behaviour vectors are ``2 * embed_dim``.

    - ``max_history``: most recent behaviours a training sample (and the DIN/DARE/TWIN serving
      state) keeps; SDIM's serving state sums every behaviour it is given.
    - ``mlp``/``dropout``: the prediction head over ``[target, interest, target * interest]``.
    - DIN: ``din_hidden`` (attention MLP widths), ``din_softmax`` (normalise the attention
      weights over the behaviours; the paper leaves them unnormalised).
    - SDIM: ``hashes`` (m SimHash functions) of ``hash_bits`` (tau) bits each.
    - DARE/TWIN: ``top_k`` behaviours kept by the attention; DARE's attention tables are
      ``attention_dim`` wide per field (``None``: ``embed_dim``). TWIN has one shared table.
    """

    kind: str
    n_items: int
    n_categories: int
    embed_dim: int = 16
    attention_dim: int | None = None
    max_history: int = 1000
    mlp: tuple[int, ...] = (200, 80)
    dropout: float = 0.0
    din_hidden: tuple[int, ...] = (64, 32)
    din_softmax: bool = True
    hashes: int = 48
    hash_bits: int = 3
    top_k: int = 20
    init_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("n_items", "n_categories", "embed_dim", "max_history", "hashes", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= self.hash_bits <= 16:
            raise InvalidRequest(f"hash_bits must be between 1 and 16, got {self.hash_bits!r}")
        if self.attention_dim is not None and self.attention_dim < 1:
            raise InvalidRequest(f"attention_dim must be positive, got {self.attention_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequest(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init_std <= 0:
            raise InvalidRequest(f"init_std must be positive, got {self.init_std!r}")
        for name in ("mlp", "din_hidden"):
            widths = getattr(self, name)
            if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
                raise InvalidRequest(f"{name} must be positive layer widths, got {widths!r}")

    @property
    def behaviour_dim(self) -> int:
        """Width of a behaviour's (representation) vector: item and category fields."""
        return 2 * self.embed_dim

    @property
    def attention_width(self) -> int:
        """Width of DARE's per-field attention embedding."""
        return self.attention_dim if self.attention_dim is not None else self.embed_dim

    def with_options(self, **options: Any) -> CTRConfig:
        """A copy with ``options`` replaced, refusing names that are not fields."""
        check_option_names(options)
        return replace(self, **_normalise(options))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mlp"] = list(self.mlp)
        out["din_hidden"] = list(self.din_hidden)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CTRConfig:
        check_option_names(data)
        return cls(**_normalise(data))


def option_names() -> list[str]:
    """Every hyper-parameter a config has (for error messages and the CLI)."""
    return [f.name for f in fields(CTRConfig)]


def check_option_names(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise InvalidRequest(
            f"Unknown model option(s) {', '.join(map(repr, unknown))}. "
            f"Valid options: {', '.join(option_names())}"
        )


def _normalise(options: dict[str, Any]) -> dict[str, Any]:
    """Lists (from JSON) and "200,80" strings (from the CLI) become tuples of ints."""
    out = dict(options)
    for name in ("mlp", "din_hidden"):
        value = out.get(name)
        if isinstance(value, str):
            try:
                out[name] = tuple(int(v) for v in value.split(",") if v.strip())
            except ValueError:
                raise InvalidRequest(
                    f"{name} must be comma-separated integers, got {value!r}"
                ) from None
        elif isinstance(value, list | tuple):
            out[name] = tuple(value)
    return out
