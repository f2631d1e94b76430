"""A lean inference forward over a Hugging Face BERT's own weights.

Hugging Face's ``BertModel.forward`` spends most of a small model's time in Python: mask
preparation, attention-interface dispatch, output dataclasses, keyword plumbing. For the
bundled MiniLM-L6 on an H200 that is ~4.7 ms per forward of 100 x 182 tokens, against well
under 1 ms of GPU work. :class:`LeanBert` computes the same ``last_hidden_state`` with plain
``torch.nn.functional`` calls (embeddings, then per layer: q/k/v projections,
``scaled_dot_product_attention`` under one boolean mask built per forward, output projection,
residual + LayerNorm, GELU FFN, residual + LayerNorm).

It holds no copy of any weight: it reads the model's own parameters, and every forward first
checks that the modules and parameters it read are still the ones the model holds (a LoRA
adapter injected, an embedding resized, parameters reassigned), re-reading them if not.
Conversions such as ``.half()`` or ``.to(device)`` and in-place updates (optimiser steps,
``load_state_dict``) keep the parameter objects, so they are seen at once. The forward has no
data-dependent Python branches, so it can be captured in a CUDA graph.

It stands in for Hugging Face's forward only in eval mode (dropout off): a module in training
mode, or one this module cannot reproduce exactly (:func:`supports`), runs Hugging Face's own
forward. The three entry points used by Quarry — :func:`last_hidden_state`,
:func:`classifier_logits` and :func:`sentence_features` — make that choice per call; set
:data:`ENABLED` to False to send every call through Hugging Face.
"""

from __future__ import annotations

import functools
import operator
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Opt-out: False sends every call through the Hugging Face (and sentence-transformers) forward.
ENABLED = True

#: ``hidden_act`` values the lean forward reproduces, with F.gelu's ``approximate`` for each.
#: ``gelu_new`` is written out in Python by Hugging Face; the fused tanh form equals it to
#: float rounding, not bit for bit.
ACTIVATIONS: dict[str, str] = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

#: The inputs a BERT forward here takes; other features send sentence-transformers' own way.
_INPUT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids"})

Tensor = torch.Tensor
# Per layer: q, k, v, attention-output, FFN-in, FFN-out (weight, bias) and two LayerNorms.
_Layer = tuple[
    Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,  # q w/b, k w/b, v w/b
    int, int, float,  # heads, head size, softmax scale
    Tensor, Tensor, Tensor, Tensor, float,  # output w/b, LayerNorm w/b/eps
    Tensor, Tensor, str,  # FFN in w/b, gelu approximation
    Tensor, Tensor, Tensor, Tensor, float,  # FFN out w/b, LayerNorm w/b/eps
]  # fmt: skip


class Unsupported(ValueError):
    """The model is not one the lean forward reproduces exactly (the message says why)."""


def _is_bert_model(model: Any) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "bert":
        return False
    from transformers import BertModel

    return isinstance(model, BertModel)


def _check_config(config: Any) -> None:
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise Unsupported("a BERT decoder (causal or cross-attention) is not supported")
    position = getattr(config, "position_embedding_type", "absolute") or "absolute"
    if position != "absolute":
        raise Unsupported(f"position_embedding_type {position!r} is not supported (absolute)")
    act = config.hidden_act
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise Unsupported(
            f"hidden_act {act!r} is not supported. Valid activations: {', '.join(ACTIVATIONS)}"
        )


def _gelu_approximation(module: Any) -> str:
    """The ``approximate`` of F.gelu that computes what the activation module computes."""
    from transformers.activations import GELUActivation, GELUTanh, NewGELUActivation

    act = getattr(module, "act", None)
    kind = type(module)
    if kind is GELUActivation and act is F.gelu:
        return "none"
    if kind is GELUTanh and isinstance(act, functools.partial) and act.func is F.gelu:
        return "tanh"
    if kind is NewGELUActivation:
        return "tanh"
    raise Unsupported(
        f"the activation {kind.__name__} is not supported. Valid activations: "
        f"{', '.join(ACTIVATIONS)}"
    )


class _Reader:
    """Reads submodules and parameters out of their parents' tables, recording each read so
    that :meth:`_State.stale` can later tell whether the model still holds the same
    objects (one dictionary lookup and identity test per read)."""

    def __init__(self) -> None:
        self.slots: list[tuple[dict[str, Any], str]] = []
        self.seen: list[Any] = []

    def take(self, table: dict[str, Any], name: str) -> Any:
        obj = table.get(name)
        self.slots.append((table, name))
        self.seen.append(obj)
        return obj

    def module(self, parent: nn.Module, name: str, kind: type[nn.Module]) -> Any:
        """``parent.name``, which must be exactly a ``kind`` (a subclass may compute otherwise)."""
        obj = self.take(parent._modules, name)
        if type(obj) is not kind:
            found = "missing" if obj is None else f"a {type(obj).__name__}"
            raise Unsupported(f"{name} is {found}, not a {kind.__name__}")
        return obj

    def param(self, module: nn.Module, name: str) -> Tensor:
        obj = self.take(module._parameters, name)
        if obj is None:
            raise Unsupported(f"{type(module).__name__} has no {name}")
        return obj

    def linear(self, parent: nn.Module, name: str) -> tuple[Tensor, Tensor]:
        lin = self.module(parent, name, nn.Linear)
        return self.param(lin, "weight"), self.param(lin, "bias")

    def layer_norm(self, parent: nn.Module, name: str) -> tuple[Tensor, Tensor, float]:
        ln = self.module(parent, name, nn.LayerNorm)
        return self.param(ln, "weight"), self.param(ln, "bias"), float(ln.eps)

    def embedding(self, parent: nn.Module, name: str) -> Tensor:
        emb = self.module(parent, name, nn.Embedding)
        if emb.max_norm is not None:  # renormalises rows in place on lookup
            raise Unsupported(f"{name} has max_norm")
        return self.param(emb, "weight")


@dataclass(frozen=True)
class _State:
    """What one read of the model found: the objects read (to notice a change), and the
    weights — or why the model cannot run here. Replaced whole, so a forward on another
    thread never sees half of a re-read."""

    slots: list[tuple[dict[str, Any], str]]
    seen: list[Any]
    layer_table: dict[str, Any]
    #: word, position, token type embeddings; LayerNorm weight, bias, eps (empty on error)
    embeddings: tuple[Any, ...]
    layers: tuple[_Layer, ...]
    error: Unsupported | None

    def stale(self) -> bool:
        current = [table.get(name) for table, name in self.slots]
        if not all(map(operator.is_, current, self.seen)):
            return True
        return self.error is None and len(self.layer_table) != len(self.layers)


def _read(bert: nn.Module) -> _State:
    """Read the weights out of ``bert``. On failure the record of what was read so far still
    lets :meth:`_State.stale` notice the model changing back (an adapter merged)."""
    from transformers.models.bert import modeling_bert as hf

    reader = _Reader()
    try:
        _check_config(bert.config)
        emb = reader.module(bert, "embeddings", hf.BertEmbeddings)
        embeddings = (
            reader.embedding(emb, "word_embeddings"),
            reader.embedding(emb, "position_embeddings"),
            reader.embedding(emb, "token_type_embeddings"),
            *reader.layer_norm(emb, "LayerNorm"),
        )
        encoder = reader.module(bert, "encoder", hf.BertEncoder)
        layer_list = reader.module(encoder, "layer", nn.ModuleList)
        layers = tuple(
            _read_layer(reader, reader.module(layer_list, key, hf.BertLayer), hf)
            for key in list(layer_list._modules)
        )
    except Unsupported as exc:
        return _State(reader.slots, reader.seen, {}, (), (), exc)
    return _State(reader.slots, reader.seen, layer_list._modules, embeddings, layers, None)


def _read_layer(reader: _Reader, layer: nn.Module, hf: Any) -> _Layer:
    if layer.add_cross_attention or layer.is_decoder:
        raise Unsupported("a layer with cross-attention or causal attention")
    attention = reader.module(layer, "attention", hf.BertAttention)
    self_attn = reader.module(attention, "self", hf.BertSelfAttention)
    heads, size = int(self_attn.num_attention_heads), int(self_attn.attention_head_size)
    q, k, v = (reader.linear(self_attn, n) for n in ("query", "key", "value"))
    attn_out = reader.module(attention, "output", hf.BertSelfOutput)
    intermediate = reader.module(layer, "intermediate", hf.BertIntermediate)
    approx = _gelu_approximation(reader.take(intermediate._modules, "intermediate_act_fn"))
    ffn_out = reader.module(layer, "output", hf.BertOutput)
    return (
        *q, *k, *v,
        heads, size, float(self_attn.scaling),
        *reader.linear(attn_out, "dense"), *reader.layer_norm(attn_out, "LayerNorm"),
        *reader.linear(intermediate, "dense"), approx,
        *reader.linear(ffn_out, "dense"), *reader.layer_norm(ffn_out, "LayerNorm"),
    )  # fmt: skip


class LeanBert:
    """The lean forward of one ``BertModel`` (see the module docstring).

    ``LeanBert(bert)(input_ids, attention_mask, token_type_ids)`` returns what
    ``bert(...).last_hidden_state`` returns in eval mode. Building one over a model it cannot
    reproduce raises :class:`Unsupported` saying why (with ``strict=False`` the reason is kept
    instead: :meth:`refresh` returns it); a model that turns into one later (a LoRA adapter
    injected) makes the call raise it, until the model turns back (the adapter merged).
    """

    def __init__(self, bert: nn.Module, *, strict: bool = True) -> None:
        if not _is_bert_model(bert):
            raise Unsupported(f"{type(bert).__name__} is not a Hugging Face BertModel")
        self._bert = weakref.ref(bert)  # the cache below is keyed on bert: no strong reference
        self._lock = threading.Lock()
        self._state = _read(bert)
        if strict and self._state.error is not None:
            raise self._state.error

    def _current(self) -> _State:
        state = self._state
        if state.stale():
            with self._lock:
                bert = self._bert()
                if bert is not None and self._state.stale():
                    self._state = _read(bert)
                state = self._state
        return state

    def refresh(self) -> Unsupported | None:
        """Re-read the model if it no longer holds what was read; the reason it cannot run
        now, or None when it can."""
        return self._current().error

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        *,
        unpad: bool = False,
    ) -> Tensor:
        """``last_hidden_state`` ``(B, L, hidden)`` in the weights' dtype. ``unpad``: on a
        CPU, run the layers over real tokens only (see :func:`_forward_unpadded`); padded
        positions then hold zeros instead of what the model computes there."""
        state = self._current()
        if state.error is not None:
            raise state.error
        return _forward(state, input_ids, attention_mask, token_type_ids, unpad)


def _forward(
    state: _State,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    token_type_ids: Tensor | None,
    unpad: bool = False,
) -> Tensor:
    batch, length = input_ids.shape
    word, position, token_type, ln_w, ln_b, eps = state.embeddings
    if length > position.shape[0]:
        raise ValueError(
            f"{length} tokens exceed the model's {position.shape[0]} position embeddings"
        )
    # The same sums in the same order as BertEmbeddings: (word + token type) + position.
    types = token_type[0] if token_type_ids is None else F.embedding(token_type_ids, token_type)
    x = F.embedding(input_ids, word) + types + position[:length]
    x = F.layer_norm(x, ln_w.shape, ln_w, ln_b, eps)
    if (
        unpad
        and attention_mask is not None
        and input_ids.device.type == "cpu"
        and not bool(attention_mask.all())
    ):
        return _forward_unpadded(state, x, attention_mask.bool())
    # Keys a query may attend to, broadcast over heads and queries: built once per forward.
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]

    def to_heads(t: Tensor, heads: int, size: int) -> Tensor:
        return t.view(batch, length, heads, size).transpose(1, 2)

    def from_heads(a: Tensor) -> Tensor:
        return a.transpose(1, 2).reshape(batch, length, a.shape[1] * a.shape[3])

    return _layers(state, x, mask, to_heads, from_heads)


def _forward_unpadded(state: _State, x: Tensor, valid: Tensor) -> Tensor:
    """The layers over the real tokens only, for a padded batch on a CPU.

    Every projection and the feed-forward block act token by token, so they run on the
    ``(tokens, hidden)`` matrix of real tokens; only attention needs the padded ``(B, L)``
    layout, and gets it by a scatter and a gather. On a CPU the matrix products are the
    whole cost and padding is paid in full, so this saves what padding would cost (a batch
    of short queries planned with ``min_fill`` 0.75 may be a quarter padding). Padded
    positions of the output are zero (pooling ignores them)."""
    batch, length, hidden = x.shape
    where = valid.reshape(-1).nonzero().squeeze(1)

    def to_heads(t: Tensor, heads: int, size: int) -> Tensor:
        out = t.new_zeros(batch * length, heads * size).index_copy_(0, where, t)
        return out.view(batch, length, heads, size).transpose(1, 2)

    def from_heads(a: Tensor) -> Tensor:
        flat = a.transpose(1, 2).reshape(batch * length, a.shape[1] * a.shape[3])
        return flat.index_select(0, where)

    x = x.reshape(batch * length, hidden).index_select(0, where)
    x = _layers(state, x, valid[:, None, None, :], to_heads, from_heads)
    return x.new_zeros(batch * length, hidden).index_copy_(0, where, x).view(batch, length, hidden)


def _layers(
    state: _State,
    x: Tensor,
    mask: Tensor | None,
    to_heads: Callable[[Tensor, int, int], Tensor],
    from_heads: Callable[[Tensor], Tensor],
) -> Tensor:
    """The encoder layers over ``x`` (token rows in any layout): ``to_heads`` turns a
    projection into ``(B, heads, L, size)`` for attention, ``from_heads`` turns attention's
    output back into ``x``'s layout."""
    for (
        qw, qb, kw, kb, vw, vb,
        heads, size, scale,
        ow, ob, n1w, n1b, n1eps,
        iw, ib, approx,
        fw, fb, n2w, n2b, n2eps,
    ) in state.layers:  # fmt: skip
        q = to_heads(F.linear(x, qw, qb), heads, size)
        k = to_heads(F.linear(x, kw, kb), heads, size)
        v = to_heads(F.linear(x, vw, vb), heads, size)
        a = from_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))
        x = F.layer_norm(F.linear(a, ow, ob) + x, n1w.shape, n1w, n1b, n1eps)
        h = F.gelu(F.linear(x, iw, ib), approximate=approx)
        x = F.layer_norm(F.linear(h, fw, fb) + x, n2w.shape, n2w, n2b, n2eps)
    return x


# One LeanBert per model, dropped with the model.
_CACHE: weakref.WeakKeyDictionary[nn.Module, LeanBert] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _lean_for(bert: nn.Module) -> LeanBert | None:
    lean = _CACHE.get(bert)
    if lean is None:
        with _CACHE_LOCK:
            lean = _CACHE.get(bert)
            if lean is None:
                lean = LeanBert(bert, strict=False)
                _CACHE[bert] = lean
    return lean if lean.refresh() is None else None


def supports(model: Any) -> bool:
    """Whether the lean forward reproduces ``model`` exactly: a Hugging Face ``BertModel``
    (or a ``BertForSequenceClassification`` around one) with absolute positions, no decoder
    or cross-attention, a GELU activation, and plain Linear / LayerNorm / Embedding modules
    (not, say, LoRA-wrapped ones). Training mode is not considered here."""
    if getattr(getattr(model, "config", None), "model_type", None) != "bert":
        return False
    bert = model if _is_bert_model(model) else _classifier_bert(model)
    return bert is not None and _lean_for(bert) is not None


def encoder_for(bert: Any) -> LeanBert | None:
    """The lean forward that can stand in for ``bert``'s own right now, or None: when
    :data:`ENABLED` is off, ``bert`` is in training mode, or :func:`supports` says no."""
    if not ENABLED or getattr(bert, "training", True) or not _is_bert_model(bert):
        return None
    return _lean_for(bert)


def last_hidden_state(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    """``model(...).last_hidden_state``: through :class:`LeanBert` when it can stand in
    (see :func:`encoder_for`), else through ``model`` itself."""
    lean = encoder_for(model)
    if lean is not None:
        return lean(input_ids, attention_mask, token_type_ids)
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    return model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def _classifier_bert(model: Any) -> Any:
    """The ``BertModel`` inside a ``BertForSequenceClassification`` with a pooler, or None."""
    if getattr(getattr(model, "config", None), "model_type", None) != "bert":
        return None
    from transformers import BertForSequenceClassification

    if not isinstance(model, BertForSequenceClassification):
        return None
    bert = model.bert
    return bert if getattr(bert, "pooler", None) is not None else None


def classifier_logits(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor | None = None,
) -> Tensor:
    """``model(...).logits`` of a sequence classifier. A ``BertForSequenceClassification``
    whose encoder :func:`encoder_for` accepts runs the lean encoder, then its own pooler,
    dropout and classifier modules (as its forward does); any other model runs as it is."""
    bert = _classifier_bert(model)
    lean = encoder_for(bert) if bert is not None else None
    if lean is None:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
    # The pooler reads the first token only (always real: inputs are right-padded).
    hidden = lean(input_ids, attention_mask, token_type_ids, unpad=True)
    return model.classifier(model.dropout(bert.pooler(hidden)))


def _token_transformer(model: Any) -> Any:
    """The BertModel of a sentence-transformers model whose first module is a plain text
    ``Transformer`` writing ``last_hidden_state`` to ``token_embeddings``, or None."""
    from sentence_transformers.base.modules import Router, Transformer

    modules = list(model._modules.values())
    first: Any = modules[0] if modules else None
    if type(first) is not Transformer or any(isinstance(m, Router) for m in modules):
        return None
    text = first.modality_config.get("text") or {}
    output = text.get("method_output_name")
    if isinstance(output, (list, tuple)) and len(output) == 1:
        output = output[0]
    if (
        text.get("method") != "forward"
        or output != "last_hidden_state"
        or first.module_output_name != "token_embeddings"
        or getattr(first, "backend", "torch") != "torch"
    ):
        return None
    bert = first.model
    if getattr(bert.config, "output_hidden_states", False):  # ST would add all_layer_embeddings
        return None
    return bert


def sentence_features(
    model: Any, features: dict[str, Tensor], *, padded: bool = True
) -> dict[str, Any]:
    """``SentenceTransformer.forward(features)``: when its first module is a Transformer over a
    BERT that :func:`encoder_for` accepts, ``token_embeddings`` come from the lean forward and
    the other modules (Pooling, Normalize, ...) run on the features as sentence-transformers
    runs them; otherwise the model's own forward. Like that forward, it fills ``features``.

    ``padded=False`` is the caller's word that every row is all real tokens (an attention
    mask of ones): the lean forward then runs attention without a mask (on CUDA, the flash
    kernel, which takes none), with the same result; the mask still reaches pooling."""
    bert = _token_transformer(model) if features.keys() <= _INPUT_KEYS else None
    lean = encoder_for(bert) if bert is not None else None
    if lean is None:
        return model.forward(features)
    # Pooling reads real tokens only (it masks the rest), so padding need not be computed.
    features["token_embeddings"] = lean(
        features["input_ids"],
        features.get("attention_mask") if padded else None,
        features.get("token_type_ids"),
        unpad=True,
    )
    out: dict[str, Any] = features
    for module in list(model._modules.values())[1:]:
        out = module(out)
    return out
