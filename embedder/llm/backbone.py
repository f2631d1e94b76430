"""Backbones: Hugging Face decoders or encoders, loaded offline, with an attention mode.

A backbone is loaded from a local model directory or from a GGUF file (dequantised to float by
transformers; needs the ``gguf`` package). Packaged names such as ``smollm2`` resolve to the
GGUF shipped by their pip package (see :mod:`embedder.llm.names`). Nothing reaches a model hub.

Attention mode
--------------
Decoders run ``causal`` or ``bidirectional``. Bidirectional attention uses transformers' own
switch rather than patching private methods: the backbone's ``config.is_causal`` is set to
``False``. The ``merge_with_config_defaults`` wrapper on every decoder ``forward`` (transformers
5.x) reads it, so ``masking_utils.create_causal_mask`` hands over to ``create_bidirectional_mask``
(a padding-only mask, built for the configured ``_attn_implementation``: a boolean mask for
SDPA, an additive one for eager), and ``is_causal=False`` reaches the attention function, so
SDPA or flash kernels do not apply a causal flag when no mask is materialised (no padding).
:func:`check_attention_mode` probes the loaded model and refuses it if the mode did not take
effect (a family or transformers version without that switch would otherwise silently stay
causal). Encoders are bidirectional by construction and refuse ``causal``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidRequest, ModelNotAvailable
from embedder.llm.config import AttentionMode, BackboneSource, check_attention
from embedder.llm.names import resolve_backbone

logger = logging.getLogger(__name__)

#: Families :func:`tiny_backbone` can build. All but ``bert`` are decoders.
TINY_FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "mistral", "bert")

_TINY_CORPUS = (
    "the cat sat on the mat",
    "a dog ran in the park",
    "protein folding and gene expression in the cell",
    "the patient received a dose during the clinical trial",
    "neural networks learn sentence embeddings for retrieval",
)
_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")


@dataclass
class Backbone:
    """A loaded backbone with its tokenizer.

    ``source`` is where its weights came from; ``None`` for a randomly initialised model,
    which must then be saved inside the embedder directory.
    """

    model: Any
    tokenizer: Any
    source: BackboneSource | None
    is_decoder: bool
    attention: AttentionMode

    @property
    def hidden_size(self) -> int:
        """Width ``d`` of the hidden states."""
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        """Number ``L`` of transformer layers (hidden states: ``L + 1`` with the embeddings)."""
        return int(self.model.config.num_hidden_layers)

    @property
    def accepts_position_ids(self) -> bool:
        """Whether ``forward`` takes ``position_ids`` (set from the mask under left padding)."""
        return "position_ids" in inspect.signature(self.model.forward).parameters


def is_decoder_config(config: Any) -> bool:
    """Whether ``config`` describes a decoder-only (causal LM) model."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(config, "is_decoder", False):
        return True
    model_type = getattr(config, "model_type", "")
    # Encoders such as BERT also have a causal-LM head class; they are the masked-LM ones.
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def set_attention_mode(model: Any, mode: AttentionMode, *, is_decoder: bool) -> None:
    """Make ``model`` attend ``causal`` or ``bidirectional`` (see the module docstring)."""
    check_attention(mode)
    if not is_decoder:
        if mode == "causal":
            raise InvalidRequest(
                "Encoder backbones attend bidirectionally; attention mode 'causal' needs a "
                "decoder (Llama, Qwen2, Qwen3, Mistral, ...)."
            )
        return
    model.config.is_causal = mode == "causal"


def check_attention_mode(model: Any, mode: AttentionMode) -> None:
    """Probe ``model``: the first token's state must change with the last token iff bidirectional.

    Raises :class:`ModelNotAvailable` if the model ignores the mode (two tiny forwards).
    """
    param = next(model.parameters())
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]], device=param.device) % vocab
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    first = hidden[:, 0].float()
    diff = float((first[0] - first[1]).abs().max())
    rel = 1e-2 if param.dtype in (torch.float16, torch.bfloat16) else 1e-4
    # Scaled by the median magnitude, not the largest: real LLMs carry a few "massive
    # activation" dimensions (SmolLM2's reach ~30 in bf16), which would put a max-based
    # tolerance above the genuine bidirectional change of the other dimensions.
    tol = rel * max(float(first.abs().median()), 1e-6)
    changed = diff > tol
    if changed != (mode == "bidirectional"):
        import transformers

        raise ModelNotAvailable(
            f"Attention mode '{mode}' did not take effect for model type "
            f"'{model.config.model_type}' with transformers {transformers.__version__} "
            f"(first-token change {diff:.3g}, tolerance {tol:.3g})."
        )


def _prepare_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        # Padding is masked everywhere, so any known token serves; decoders often lack one.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(directory: Path, gguf_file: str | None, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = directory / "tokenizer_config.json"
    if gguf_file is None and (directory / "tokenizer.json").is_file() and config_file.is_file():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
        if declared in _GENERIC_TOKENIZERS:
            # AutoTokenizer may swap in the model family's tokenizer class, which rebuilds
            # pre-tokenisation and disagrees with a tokenizer.json that came from elsewhere
            # (a GGUF's tokenizer saved beside Llama weights, a test tokenizer).
            return PreTrainedTokenizerFast.from_pretrained(directory, **kwargs)
    return AutoTokenizer.from_pretrained(directory, **kwargs)


def load_backbone(
    source: BackboneSource | str,
    *,
    attention: AttentionMode = "causal",
    attn_implementation: str = "sdpa",
    base_dir: Path | None = None,
    dtype: torch.dtype | None = None,
) -> Backbone:
    """Load a backbone and its tokenizer offline (``local_files_only``) on the CPU.

    ``source`` is a packaged name (``"smollm2"``), a model directory, a ``.gguf`` file or a
    :class:`BackboneSource`; ``base_dir`` resolves sources relative to a saved embedder.
    ``dtype`` defaults to the checkpoint's (float32 for dequantised GGUF).
    Raises :class:`ModelNotAvailable` saying what to install when files or packages are missing.
    """
    if isinstance(source, str):
        source = BackboneSource(source)
    directory, gguf_file = resolve_backbone(source, base_dir)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    model_kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    if gguf_file is not None:
        if importlib.util.find_spec("gguf") is None:
            raise ModelNotAvailable(
                "Loading GGUF checkpoints needs the `gguf` package: `pip install gguf` "
                "(or `pip install 'quarry[models]'`).",
                details={"install": "gguf"},
            )
        kwargs["gguf_file"] = gguf_file
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(directory, **kwargs)
        tokenizer = _load_tokenizer(directory, gguf_file, kwargs)
        model = AutoModel.from_pretrained(
            directory,
            config=config,
            attn_implementation=attn_implementation,
            **model_kwargs,
            **kwargs,
        )
    except Exception as exc:  # any load failure means these files are not a usable backbone
        logger.exception("could not load backbone %s", source.source)
        raise ModelNotAvailable(
            f"Backbone '{source.source}' could not be loaded ({type(exc).__name__})."
        ) from exc
    is_decoder = is_decoder_config(model.config)
    set_attention_mode(model, attention, is_decoder=is_decoder)
    model.eval()
    check_attention_mode(model, attention)
    logger.info(
        "loaded backbone %s (%s, %d layers, width %d, %s attention, %s)",
        source.source,
        model.config.model_type,
        model.config.num_hidden_layers,
        model.config.hidden_size,
        attention,
        model.config._attn_implementation,
    )
    return Backbone(model, _prepare_tokenizer(tokenizer), source, is_decoder, attention)


def tiny_tokenizer(texts: Sequence[str] = _TINY_CORPUS) -> Any:
    """A lower-casing word-level tokenizer over the words of ``texts``, built offline.

    It prepends ``<s>`` like Llama's tokenizer and has ``<pad>``, ``<unk>`` and ``</s>``.
    Unknown words map to ``<unk>``. For unit tests and examples.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in text.lower().split()})
    vocab = {tok: i for i, tok in enumerate((*_SPECIAL_TOKENS, *words))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def tiny_backbone(
    family: str = "llama",
    *,
    tokenizer: Any = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    attention: AttentionMode = "causal",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> Backbone:
    """A randomly initialised small backbone of ``family`` (see :data:`TINY_FAMILIES`).

    Uses :func:`tiny_tokenizer` unless ``tokenizer`` is given. Initialisation is seeded and
    leaves the global RNG untouched. For tests: nothing is downloaded.
    """
    from transformers import AutoConfig, AutoModel

    if family not in TINY_FAMILIES:
        raise InvalidRequest(
            f"Invalid tiny family '{family}'. Valid families: {', '.join(TINY_FAMILIES)}"
        )
    tokenizer = _prepare_tokenizer(tokenizer if tokenizer is not None else tiny_tokenizer())
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family != "bert":
        common.update(
            num_key_value_heads=max(1, num_heads // 2),
            head_dim=hidden_size // num_heads,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
    config = AutoConfig.for_model(family, **common)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, attn_implementation=attn_implementation)
    is_decoder = is_decoder_config(model.config)
    set_attention_mode(model, attention, is_decoder=is_decoder)
    model.eval()
    check_attention_mode(model, attention)
    return Backbone(model, tokenizer, None, is_decoder, attention)
