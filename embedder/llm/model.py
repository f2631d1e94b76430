"""LLM embedders: backbone (+ optional LoRA adapter) + pooling head + L2 normalisation.

:class:`LLMEmbeddingModel` is the ``nn.Module`` (what training will optimise);
:class:`LLMEmbedder` serves it behind the :class:`~embedder.base.Embedder` interface with the
batched engine: texts are tokenised once, grouped into length-sorted token-budget batches
(:func:`~embedder.batching.plan_batches`), run under ``torch.inference_mode`` with SDPA, bf16 on
CUDA and float32 on CPU, and scattered back to input order. On CUDA, decoder batches of mixed
lengths are packed (:mod:`embedder.llm.packing`): no padding is computed at all.

A saved embedder is one directory::

    quarry_embedder.json   backbone source, attention mode, pooling config, prefixes, lengths
    pooling/               the head: config.json (+ model.safetensors if it has parameters)
    adapter/               LoRA adapter (peft), if one was trained
    backbone/              backbone weights + tokenizer, only if they have no other source
                           (random-config models, merged adapters, ``include_backbone=True``)

Untrained presets (``smollm2:design5``) initialise their head from
:data:`~embedder.llm.config.PRESET_HEAD_SEED`, so they embed identically in every process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ModelNotAvailable
from core.priority import ForwardLock, batch_budget
from embedder.base import EmbedKind, check_kind, check_texts, resolve_device
from embedder.batching import flatten_ids, pad_rows, plan_batches
from embedder.llm.backbone import (
    Backbone,
    check_attention_mode,
    load_backbone,
    set_attention_mode,
)
from embedder.llm.compiling import compile_blocks
from embedder.llm.config import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    DEFAULT_PRESET,
    POOLING_DIR,
    PRESET_HEAD_SEED,
    BackboneSource,
    EmbedderConfig,
    get_preset,
)
from embedder.llm.names import is_saved_embedder, packaged_llm, split_preset
from embedder.llm.packing import pack_rows, packed_attention, unpack, varlen_available
from embedder.llm.pooling import PoolingHead, build_pooling

logger = logging.getLogger(__name__)


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ModelNotAvailable(
            "LoRA adapters need the `peft` package: `pip install peft`.",
            details={"install": "peft"},
        ) from None
    return peft


class LLMEmbeddingModel(nn.Module):
    """Backbone + pooling head (+ L2 normalisation): ``(input_ids, attention_mask) → (B, d)``.

    Build one with :meth:`from_preset` / :meth:`from_backbone`, or :meth:`load` a saved one.
    Only the hidden states the head needs are requested from the backbone
    (``output_hidden_states`` only for multi-layer heads).
    """

    def __init__(self, backbone: Backbone, pooling: PoolingHead, config: EmbedderConfig) -> None:
        super().__init__()
        if backbone.attention != config.attention:
            set_attention_mode(backbone.model, config.attention, is_decoder=backbone.is_decoder)
            check_attention_mode(backbone.model, config.attention)
            backbone.attention = config.attention
        if (pooling.hidden_size, pooling.num_layers) != (backbone.hidden_size, backbone.num_layers):
            raise ValueError(
                f"pooling head is for width {pooling.hidden_size} and {pooling.num_layers} layers; "
                f"the backbone has width {backbone.hidden_size} and {backbone.num_layers} layers"
            )
        self.backbone: Any = backbone.model
        self.pooling = pooling
        self.tokenizer: Any = backbone.tokenizer
        self.is_decoder = backbone.is_decoder
        if backbone.source is None:
            config = replace(config, backbone=BackboneSource(BACKBONE_DIR))
        self.config = replace(config, pooling=pooling.get_config())
        # Weights that exist nowhere else (random init, merged adapter) are saved with the model.
        self._embed_backbone = self.config.backbone.source == BACKBONE_DIR
        self._position_ids = backbone.accepts_position_ids
        self._forward_kwargs: dict[str, Any] = {"use_cache": False} if self.is_decoder else {}

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: Backbone,
        pooling: dict[str, Any] | str | PoolingHead,
        *,
        seed: int | None = PRESET_HEAD_SEED,
        **config: Any,
    ) -> LLMEmbeddingModel:
        """Top ``backbone`` with a head (a config, a mode name, or a built head).

        ``config`` sets :class:`EmbedderConfig` fields (``attention`` defaults to the
        backbone's mode). A head built here is initialised from ``seed``.
        """
        if not isinstance(pooling, PoolingHead):
            pooling = build_pooling(
                pooling, hidden_size=backbone.hidden_size, num_layers=backbone.num_layers, seed=seed
            )
        config.setdefault("attention", backbone.attention)
        source = backbone.source or BackboneSource(BACKBONE_DIR)
        return cls(backbone, pooling, EmbedderConfig(backbone=source, **config))

    @classmethod
    def from_preset(
        cls,
        source: str | BackboneSource | Backbone,
        preset: str = DEFAULT_PRESET,
        *,
        seed: int = PRESET_HEAD_SEED,
        pooling_options: dict[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        **config: Any,
    ) -> LLMEmbeddingModel:
        """Design ``preset`` (``design1`` … ``design5``) over ``source``, head untrained.

        ``source`` is a packaged name (``"smollm2"``), a model directory, a ``.gguf`` file or a
        loaded :class:`Backbone`. ``pooling_options`` adjust the preset's head (e.g.
        ``{"num_latents": 16}``); ``dtype`` is the backbone's load dtype; ``config`` sets other
        :class:`EmbedderConfig` fields.
        """
        p = get_preset(preset)
        attention = config.pop("attention", p.attention)
        if isinstance(source, Backbone):
            backbone = source
        else:
            backbone = load_backbone(
                source,
                attention=attention,
                attn_implementation=config.get("attn_implementation", "sdpa"),
                dtype=dtype,
            )
        return cls.from_backbone(
            backbone,
            {**p.pooling, **(pooling_options or {})},
            seed=seed,
            attention=attention,
            preset=p.name,
            **config,
        )

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        merge_adapter: bool = True,
        dtype: torch.dtype | None = None,
    ) -> LLMEmbeddingModel:
        """Load a directory written by :meth:`save` (backbone in ``dtype``, default as stored).

        A LoRA adapter is merged into the backbone weights unless ``merge_adapter=False``
        (keep it separate to train it further).
        """
        path = Path(directory)
        if not is_saved_embedder(path):
            raise ModelNotAvailable(f"'{directory}' is not a saved LLM embedder.")
        config = EmbedderConfig.load(path)
        backbone = load_backbone(
            config.backbone,
            attention=config.attention,
            attn_implementation=config.attn_implementation,
            base_dir=path,
            dtype=dtype,
        )
        pooling = PoolingHead.load(path / POOLING_DIR)
        model = cls(backbone, pooling, replace(config, adapter=False))
        if config.adapter:
            peft = _peft()
            model.backbone = peft.PeftModel.from_pretrained(
                model.backbone, str(path / ADAPTER_DIR), is_trainable=not merge_adapter
            )
            if merge_adapter:
                model.backbone = model.backbone.merge_and_unload()
                model._embed_backbone = True  # the merged weights exist nowhere else
            model.config = replace(model.config, adapter=not merge_adapter)
        model.eval()
        return model

    # --- LoRA ---------------------------------------------------------------------------------

    @property
    def has_adapter(self) -> bool:
        """Whether the backbone carries an (unmerged) LoRA adapter."""
        return hasattr(self.backbone, "peft_config")

    def enable_lora(
        self,
        *,
        r: int = 16,
        alpha: int = 32,
        dropout: float = 0.1,
        target_modules: str | list[str] = "all-linear",
    ) -> None:
        """Wrap the backbone in a LoRA adapter (defaults: the recipe of ``docs/methods.md``).

        ``"all-linear"`` covers every attention and MLP projection of a base model.
        """
        if self.has_adapter:
            raise ValueError("the backbone already has a LoRA adapter")
        peft = _peft()
        lora = peft.LoraConfig(
            r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules
        )
        self.backbone = peft.get_peft_model(self.backbone, lora)
        self.config = replace(self.config, adapter=True)

    def _base_model(self) -> Any:
        return self.backbone.get_base_model() if self.has_adapter else self.backbone

    # --- forward ------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return self.pooling.dim

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        normalize: bool = True,
        unpadded: bool = False,
    ) -> torch.Tensor:
        """Embeddings ``(B, dim)`` of a padded batch (either padding side), float32.

        Position ids count real tokens only, so a text gets the same positions whatever its
        padding. ``unpadded=True`` promises that every row is all real tokens: the backbone then
        gets no mask at all, so SDPA may pick its fastest (flash) kernel, which an explicit mask
        rules out; the pooling head still reads ``attention_mask``.
        """
        kwargs = dict(self._forward_kwargs)
        if self._position_ids:
            kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        needs_all = self.pooling.needs_all_layers
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=None if unpadded else attention_mask,
            output_hidden_states=needs_all,
            **kwargs,
        )
        hidden = out.hidden_states if needs_all else (out.last_hidden_state,)
        emb = self.pooling(hidden, attention_mask).float()
        return F.normalize(emb, p=2.0, dim=-1) if normalize else emb

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        max_length: int,
        gather: torch.Tensor,
        mask: torch.Tensor,
        *,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Embeddings ``(B, dim)`` of a packed batch (:func:`~embedder.llm.packing.pack_rows`).

        The backbone sees one ``(1, T)`` row of real tokens, attention confined to each text;
        the head reads the padded ``(B, T_max, d)`` view gathered back with ``gather`` and
        ``mask``. Decoders only. ``max_length`` bounds the texts' lengths.
        """
        if not self.is_decoder:
            raise ValueError("packed batches need a decoder backbone")
        needs_all = self.pooling.needs_all_layers
        with packed_attention(self.backbone):
            out = self.backbone(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=None,
                output_hidden_states=needs_all,
                cu_seq_lens_q=cu_seqlens,
                cu_seq_lens_k=cu_seqlens,
                max_length_q=max_length,
                max_length_k=max_length,
                **self._forward_kwargs,
            )
        hidden = out.hidden_states if needs_all else (out.last_hidden_state,)
        emb = self.pooling([unpack(h, gather) for h in hidden], mask).float()
        return F.normalize(emb, p=2.0, dim=-1) if normalize else emb

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path, *, include_backbone: bool | None = None) -> Path:
        """Write the model to ``directory`` (see the module docstring); returns the path.

        The backbone's weights are written only if they exist nowhere else, or if
        ``include_backbone`` is true; otherwise the config points at their source.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        embed = self._embed_backbone if include_backbone is None else include_backbone
        if self._embed_backbone and not embed:
            raise ValueError("this backbone's weights exist nowhere else; they must be saved")
        config = replace(self.config, pooling=self.pooling.get_config(), adapter=self.has_adapter)
        if embed:
            self._save_backbone(path / BACKBONE_DIR)
            config = replace(config, backbone=BackboneSource(BACKBONE_DIR))
        self.pooling.save(path / POOLING_DIR)
        if self.has_adapter:
            self.backbone.save_pretrained(str(path / ADAPTER_DIR))
        config.save(path)
        logger.info("saved LLM embedder to %s", path)
        return path

    def _save_backbone(self, path: Path) -> None:
        base = self._base_model()
        state = None
        if self.has_adapter:
            # The base weights alone, under their original names (the adapter is saved apart).
            state = {
                k.replace(".base_layer.", "."): v
                for k, v in base.state_dict().items()
                if "lora_" not in k
            }
        base.save_pretrained(str(path), state_dict=state)
        self.tokenizer.save_pretrained(str(path))


#: Rows of results kept on the device before one copy to the host (bounds device memory for
#: very large calls: 8192 rows of a 4096-wide model are 128 MiB).
_FLUSH_ROWS = 8192


def _compute_dtype(device: str) -> torch.dtype:
    """bf16 on CUDA (tensor cores, no fp16 overflow in deep decoders), float32 on CPU."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


class LLMEmbedder:
    """An :class:`~embedder.base.Embedder` over an :class:`LLMEmbeddingModel`.

    Batches follow :func:`~embedder.batching.plan_batches` with ``batch_tokens``,
    ``max_batch_size`` and ``min_fill`` (``None``: 0.75 on CPU, 0 on GPU). Query and document
    prefixes (instructions) come from the model config. The backbone runs in bf16 on CUDA and
    float32 on CPU; the head in float32; embeddings are float32. Thread-safe.

    ``compile=True`` compiles the backbone's transformer blocks in place with ``torch.compile``
    (dynamic shapes, see :mod:`embedder.llm.compiling`; a model that declares no blocks is
    compiled whole) and warms them up before returning. Long calls tokenise the next chunk
    while the device works on the current one (see :meth:`embed`). ``packed`` (``None``: on
    for decoders where varlen flash kernels exist, i.e. CUDA) runs mixed-length batches packed
    and budgets ``batch_tokens`` in real tokens; ``True`` on the CPU works, slowly (tests).
    """

    def __init__(
        self,
        model: LLMEmbeddingModel,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_tokens: int = 16_384,
        max_batch_size: int = 256,
        min_fill: float | None = None,
        compile: bool = False,
        pipeline_texts: int = 4096,
        packed: bool | None = None,
    ) -> None:
        if batch_tokens < 1 or max_batch_size < 1 or pipeline_texts < 1:
            raise ValueError("batch_tokens, max_batch_size and pipeline_texts must be >= 1")
        self.pipeline_texts = pipeline_texts
        self.device = resolve_device(device)
        self._pin = self.device.startswith("cuda")  # host → device copies through pinned memory
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        # Same trade-off as the sentence-transformers backend: on CPU compute follows padded
        # tokens, on GPU each extra forward costs more than the padding it saves.
        self.min_fill = (0.75 if self.device == "cpu" else 0.0) if min_fill is None else min_fill
        dtype = _compute_dtype(self.device)
        model.backbone.to(device=self.device, dtype=dtype)
        model.pooling.to(device=self.device, dtype=torch.float32)
        self._model = model.eval()
        if packed and not model.is_decoder:
            raise ValueError("packed batches need a decoder backbone")
        # Packed batches (no padding, flash varlen attention) wherever the kernels exist.
        self.packed = (
            model.is_decoder and varlen_available(self.device) if packed is None else packed
        )
        self.compiled = compile
        # torch.compile fuses the backbone's element-wise work (norms, rotary, SiLU-gating,
        # residuals) around the matrix products; dynamic shapes, so the ever-changing batch
        # shapes of token-budget batching share one compiled graph.
        self._forward: Callable[..., torch.Tensor] = model
        if compile and compile_blocks(model.backbone, dynamic=True) == 0:
            self._forward = torch.compile(model, dynamic=True)
        config = model.config
        self.name = name or config.preset or "llm-embedder"
        self.dim = model.dim
        max_positions = getattr(model.backbone.config, "max_position_embeddings", None)
        self.max_seq_length = int(min(config.max_seq_length, max_positions or 1 << 30))
        self._prefixes: dict[str, str] = {
            "query": config.query_prefix,
            "document": config.document_prefix,
        }
        tok = model.tokenizer
        self._tokenizer = tok
        self._pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        eos = tok.eos_token_id
        self._eos_id: int | None = None
        if config.append_eos and model.is_decoder and eos is not None:
            probe = tok("a", add_special_tokens=True)["input_ids"]
            # Some tokenizers already end every text with EOS; do not add a second one.
            self._eos_id = None if probe and probe[-1] == eos else int(eos)
        self._empty_id = int(eos if eos is not None else self._pad_id)
        self._padding_side = config.padding_side
        # Rust tokenizers raise "Already borrowed" when used from two threads at once.
        self._tokenize_lock = threading.Lock()
        # Online requests' passes go before an ingest job's (core.priority).
        self._forward_lock = ForwardLock()
        if compile:
            self._warm_up()
        logger.info(
            "LLM embedder %s: dim %d, max_seq_length %d, %s attention, pooling %s, device %s, "
            "%s, %s batches",
            self.name,
            self.dim,
            self.max_seq_length,
            config.attention,
            config.pooling["mode"],
            self.device,
            dtype,
            "packed" if self.packed else "padded",
        )

    def _warm_up(self) -> None:
        """Compile now, not in the first request: a padded batch, an unpadded one, one text.

        A batch of one is its own graph (compilers specialise sizes 0 and 1), and it is the most
        common request of all: a search query.
        """
        start = time.perf_counter()
        self.embed(["warm up", "warm up the compiled graph"])
        self.embed(["warm up", "warm up"])
        self.embed(["warm up"])
        logger.info("compiled %s in %.1f s", self.name, time.perf_counter() - start)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto", **kwargs: Any) -> LLMEmbedder:
        """Serve the model saved in ``directory``; ``kwargs`` go to the constructor."""
        kwargs.setdefault("name", str(directory))
        device = resolve_device(device)
        model = LLMEmbeddingModel.load(directory, dtype=_compute_dtype(device))
        return cls(model, device=device, **kwargs)

    @classmethod
    def from_preset(
        cls,
        source: str | BackboneSource | Backbone,
        preset: str = DEFAULT_PRESET,
        *,
        name: str | None = None,
        device: str = "auto",
        batch_tokens: int = 16_384,
        max_batch_size: int = 256,
        min_fill: float | None = None,
        compile: bool = False,
        **config: Any,
    ) -> LLMEmbedder:
        """Serve design ``preset`` over ``source`` (untrained head, see the module docstring).

        ``config`` goes to :meth:`LLMEmbeddingModel.from_preset`.
        """
        device = resolve_device(device)
        config.setdefault("dtype", _compute_dtype(device))
        model = LLMEmbeddingModel.from_preset(source, preset, **config)
        return cls(
            model,
            name=name,
            device=device,
            batch_tokens=batch_tokens,
            max_batch_size=max_batch_size,
            min_fill=min_fill,
            compile=compile,
        )

    @classmethod
    def from_name(cls, path: Path, *, name: str, **kwargs: Any) -> LLMEmbedder:
        """The embedder a name resolved by :func:`embedder.llm.names.resolve_llm` designates.

        ``path`` is a saved embedder directory, or a backbone topped with the preset named in
        ``name``'s ``:designN`` suffix (default :data:`~embedder.llm.config.DEFAULT_PRESET`).
        """
        if is_saved_embedder(path):
            return cls.load(path, name=name, **kwargs)
        base, preset = split_preset(name)
        # Packaged models are recorded by name, so a saved copy finds them on another machine.
        source = base if packaged_llm(base) is not None else str(path)
        return cls.from_preset(source, preset or DEFAULT_PRESET, name=name, **kwargs)

    # --- Embedder interface -------------------------------------------------------------------

    @property
    def model(self) -> LLMEmbeddingModel:
        """The underlying model."""
        return self._model

    def __repr__(self) -> str:
        return f"LLMEmbedder(name={self.name!r}, device={self.device!r})"

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(flat ids, lengths)`` exactly as inference sees them (truncation, EOS appended)."""
        limit = self.max_seq_length - (1 if self._eos_id is not None else 0)
        with self._tokenize_lock:
            rows = _encode(self._tokenizer, list(texts), limit)
        return flatten_ids(rows, append_id=self._eos_id, empty_id=self._empty_id)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies after truncation, special tokens (and EOS) included."""
        check_texts(texts)
        if len(texts) == 0:
            return []
        return self.tokenize(texts)[1].tolist()

    def embed(
        self,
        texts: Sequence[str],
        *,
        kind: EmbedKind = "document",
        normalize: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` into a float32 ``(len(texts), dim)`` array, rows in input order.

        Calls of more than ``pipeline_texts`` texts are cut into chunks of that many; each chunk
        is tokenised on a helper thread while the device runs the previous one (the Rust
        tokenizer releases the GIL), and length-sorted batches are planned within a chunk.
        Chunks are not smaller: length sorting over fewer texts pads more (at 512 texts of
        realistic lengths, 57% of the padded tokens are real instead of 79% at 4096).
        """
        check_texts(texts)
        check_kind(kind)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if len(texts) == 0:
            return out
        prefix = self._prefixes[kind]
        step = self.pipeline_texts
        spans = [(i, min(i + step, len(texts))) for i in range(0, len(texts), step)]

        def tokenize(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            part = texts[span[0] : span[1]]
            return self.tokenize([prefix + t for t in part] if prefix else part)

        # Results stay on the device for a while: no host sync per batch, so padding the next
        # batch on the CPU overlaps the current forward pass on a GPU.
        pending: list[tuple[np.ndarray, torch.Tensor]] = []
        if len(spans) == 1:
            self._run_chunk(tokenize(spans[0]), 0, out, pending, normalize, progress)
        else:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quarry-tokenize") as pool:
                upcoming = pool.submit(tokenize, spans[0])
                for k, span in enumerate(spans):
                    tokens = upcoming.result()
                    if k + 1 < len(spans):
                        upcoming = pool.submit(tokenize, spans[k + 1])
                    self._run_chunk(tokens, span[0], out, pending, normalize, progress)
        _scatter(out, pending)
        return out

    def _run_chunk(
        self,
        tokens: tuple[np.ndarray, np.ndarray],
        offset: int,
        out: np.ndarray,
        pending: list[tuple[np.ndarray, torch.Tensor]],
        normalize: bool,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Forward the texts of one tokenised chunk (rows ``offset + i`` of ``out``)."""
        flat, lengths = tokens
        starts = np.cumsum(lengths) - lengths
        batches = plan_batches(
            lengths,
            batch_tokens=batch_budget(self.batch_tokens, self.device),
            max_batch_size=self.max_batch_size,
            min_fill=self.min_fill,
            packed=self.packed,
        )
        for idx in batches:
            rows = lengths[idx]
            with self._forward_lock, torch.inference_mode():
                # Equal lengths need no padding: such a batch runs as one dense block, whose
                # SDPA kernels (cuDNN, flash) outrun the varlen one.
                if self.packed and rows.min() != rows.max():
                    emb = self._forward_packed(flat, starts[idx], rows, normalize)
                else:
                    emb = self._forward_padded(flat, starts[idx], rows, normalize)
            pending.append((idx + offset, emb))
            if sum(len(i) for i, _ in pending) >= _FLUSH_ROWS:
                _scatter(out, pending)
            if progress is not None:
                progress(len(idx))

    def _forward_padded(
        self, flat: np.ndarray, starts: np.ndarray, rows: np.ndarray, normalize: bool
    ) -> torch.Tensor:
        ids, mask = pad_rows(flat, starts, rows, pad_id=self._pad_id, side=self._padding_side)
        return self._forward(
            _to_device(ids, self.device, self._pin),
            _to_device(mask.astype(np.int64), self.device, self._pin),
            normalize=normalize,
            unpadded=bool(rows.min() == rows.max()),
        )

    def _forward_packed(
        self, flat: np.ndarray, starts: np.ndarray, rows: np.ndarray, normalize: bool
    ) -> torch.Tensor:
        batch = pack_rows(flat, starts, rows)
        # Compiled blocks get one constant bound (no recompilation per batch); the kernels only
        # use it to size their grid.
        max_length = self.max_seq_length if self.compiled else int(rows.max())
        return self._model.forward_packed(
            _to_device(batch.input_ids, self.device, self._pin),
            _to_device(batch.position_ids, self.device, self._pin),
            _to_device(batch.cu_seqlens, self.device, self._pin),
            max_length,
            _to_device(batch.gather, self.device, self._pin),
            _to_device(batch.mask, self.device, self._pin),
            normalize=normalize,
        )


def _encode(tokenizer: Any, texts: list[str], limit: int) -> list[list[int]]:
    """Token ids of ``texts`` with special tokens, truncated to ``limit``, no padding.

    Fast tokenizers go straight to their Rust backend's ``encode_batch_fast`` (no offsets, no
    Python-side ``BatchEncoding``): the same ids as calling the tokenizer, in half the time.
    The truncation is set the way the tokenizer's own call sets it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        ids: list[list[int]] = tokenizer(
            texts,
            truncation=True,
            max_length=limit,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return ids
    backend.enable_truncation(
        limit, stride=0, strategy="longest_first", direction=tokenizer.truncation_side
    )
    backend.no_padding()
    return [enc.ids for enc in backend.encode_batch_fast(texts, add_special_tokens=True)]


def _to_device(array: np.ndarray, device: str, pin: bool) -> torch.Tensor:
    """Host array → device tensor; through pinned memory (an asynchronous copy) on CUDA."""
    tensor = torch.from_numpy(array)
    if not pin:
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _scatter(out: np.ndarray, pending: list[tuple[np.ndarray, torch.Tensor]]) -> None:
    """Copy pending device results into their rows of ``out`` (one transfer) and clear them."""
    if pending:
        rows = np.concatenate([idx for idx, _ in pending])
        out[rows] = torch.cat([emb for _, emb in pending]).cpu().numpy()
        pending.clear()
