"""The trainable reranker models: one ``nn.Module`` base, per-kind subclasses, save and load.

Every Quarry kind (:data:`~ranker.text.config.MODEL_KINDS`) is a :class:`RerankModel`: a
pretrained *backbone* (an encoder or a decoder, frozen, LoRA-adapted or trained in full) plus
the kind's own *head* parameters (a classification layer, a projection, kernel weights). A
model offers the same computation two ways:

- :meth:`RerankModel.group_scores` — scores ``(B, G)`` of B queries against G documents each,
  with a graph, for training;
- :meth:`RerankModel.prepare` + :meth:`RerankModel.score_prepared` — one query's documents
  tokenised once, then scored in the batches the serving engine plans
  (:class:`ranker.text.engine.ModelReranker`).

Saving follows :mod:`ranker.text.config`: the head always goes to ``weights.safetensors``; the
backbone is written only if its weights changed, otherwise referenced by its packaged name
or path; a LoRA adapter on an unchanged backbone is saved alone and merged at load.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, ClassVar, Protocol, overload

import numpy as np
import torch
from torch import nn

from core.errors import InvalidRequest, ModelNotAvailable
from ranker.text.backbones import ResolvedBackbone, is_packaged, resolve_backbone
from ranker.text.config import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    CONFIG_FILE,
    DEFAULT_BACKBONES,
    WEIGHTS_FILE,
    KindOptions,
    RerankerConfig,
    check_backbone_training,
    check_kind,
    kind_options,
)

logger = logging.getLogger(__name__)

#: Where each kind's model class lives (imported on first use).
_KIND_MODULES: dict[str, str] = {
    "cross-encoder": "ranker.text.cross_encoder",
    "late-interaction": "ranker.text.late_interaction",
    "knrm": "ranker.text.knrm",
    "llm": "ranker.text.llm_pointwise",
    "dense": "ranker.text.dense",
}
MODEL_CLASSES: dict[str, type[RerankModel]] = {}


class Prepared(Protocol):
    """One query's documents, tokenised; ``lengths`` (tokens per document) drive batching."""

    lengths: np.ndarray


def pad_sequences(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``(len(rows), longest)`` tensors on ``device``, padded on the right."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    width = max(int(lengths.max(initial=0)), 1)
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return to_device(ids, device), to_device(mask, device)


@overload
def to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor: ...
@overload
def to_device(array: None, device: torch.device | str) -> None: ...
def to_device(array: np.ndarray | None, device: torch.device | str) -> torch.Tensor | None:
    """``array`` as a tensor on ``device``; to a GPU through page-locked memory without
    waiting, so the GPU never idles on the host between batches."""
    if array is None:
        return None
    tensor = torch.from_numpy(array)
    if torch.device(device).type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def register_model(cls: type[RerankModel]) -> type[RerankModel]:
    """Class decorator: make ``cls`` the model of ``cls.kind``."""
    MODEL_CLASSES[cls.kind] = cls
    return cls


def model_class(kind: str) -> type[RerankModel]:
    """The model class of ``kind`` (imports its module on first use)."""
    check_kind(kind)
    if kind not in MODEL_CLASSES:
        importlib.import_module(_KIND_MODULES[kind])
    return MODEL_CLASSES[kind]


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ModelNotAvailable(
            "LoRA needs the `peft` package: `pip install peft`.", details={"install": "peft"}
        ) from None
    return peft


class RerankModel(nn.Module):
    """Base of the reranker models (see the module docstring).

    ``source`` is how the backbone is recorded when saved unchanged (a packaged name or an
    absolute path); ``backbone_modified`` says its weights differ from ``source``'s (trained in
    full, or an adapter merged), so a save must write them.
    """

    kind: ClassVar[str]

    def __init__(self, source: str, tokenizer: Any, options: KindOptions) -> None:
        super().__init__()
        self.source = source
        self.tokenizer = tokenizer
        self.options = options
        self.backbone_modified = False
        self.backbone_training = "frozen"
        # Not a submodule: the PEFT wrapper shares the backbone's (injected) modules.
        self.__dict__["_peft"] = None
        # Fast tokenizers are not safe to call from several threads at once.
        self._tokenizer_lock = threading.Lock()

    # --- what a kind provides -----------------------------------------------------------------

    @classmethod
    def build(cls, resolved: ResolvedBackbone, source: str, options: KindOptions) -> RerankModel:
        """Load the backbone from ``resolved`` and create a freshly initialised head."""
        raise NotImplementedError

    def backbone_module(self) -> nn.Module:
        """The pretrained part: what is frozen, LoRA-adapted or trained in full."""
        raise NotImplementedError

    def pretrained(self) -> Any:
        """The Hugging Face model written to ``backbone/`` (has ``save_pretrained``)."""
        return self.backbone_module()

    def group_scores(self, queries: Sequence[str], groups: Sequence[Sequence[str]]) -> torch.Tensor:
        """Float32 scores ``(B, G)``: query ``b`` against each of its ``G`` documents."""
        raise NotImplementedError

    def prepare(self, query: str, documents: Sequence[str]) -> Prepared:
        """Tokenise one query's documents for :meth:`score_prepared` (done once per call)."""
        raise NotImplementedError

    def score_prepared(self, prepared: Any, rows: np.ndarray) -> torch.Tensor:
        """Float32 scores of the documents ``rows`` of ``prepared``, in that order."""
        raise NotImplementedError

    # --- shared machinery ---------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the parameters are."""
        return next(self.parameters()).device

    @contextlib.contextmanager
    def tokenizing(self) -> Iterator[Any]:
        """The tokenizer, held exclusively (rerankers are called from a thread pool)."""
        with self._tokenizer_lock:
            yield self.tokenizer

    def _backbone_prefix(self) -> str:
        target = self.backbone_module()
        for name, module in self.named_modules():
            if module is target:
                return f"{name}." if name else ""
        raise RuntimeError("the backbone is not a submodule of the model")

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The kind's own parameters and persistent buffers (everything but the backbone)."""
        prefix = self._backbone_prefix()
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(prefix)
        }

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable head parameters."""
        backbone = {id(p) for p in self.backbone_module().parameters()}
        return [p for p in self.parameters() if id(p) not in backbone and p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable backbone parameters (none when frozen; the adapter's under LoRA)."""
        return [p for p in self.backbone_module().parameters() if p.requires_grad]

    @property
    def has_adapter(self) -> bool:
        """Whether a LoRA adapter is attached (not merged)."""
        return self.__dict__["_peft"] is not None

    def set_backbone_training(
        self,
        mode: str,
        *,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.1,
        target_modules: str | list[str] = "all-linear",
    ) -> None:
        """Freeze the backbone, attach a LoRA adapter to it, or train it in full."""
        check_backbone_training(mode)
        if self.has_adapter:
            raise InvalidRequest("The backbone already has a LoRA adapter")
        backbone = self.backbone_module()
        backbone.requires_grad_(mode == "full")
        if mode == "lora":
            peft = _peft()
            config = peft.LoraConfig(
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=target_modules,
            )
            # Injected in place: the backbone module keeps its place in this model, with
            # LoRA layers inside; only their parameters require gradients.
            self.__dict__["_peft"] = peft.get_peft_model(backbone, config)
        self.backbone_training = mode

    def train(self, mode: bool = True) -> RerankModel:
        """As ``nn.Module.train``, but a frozen backbone stays in eval mode (no dropout), so its
        outputs are a fixed function of the text (and may be cached)."""
        super().train(mode)
        if mode and self.backbone_training == "frozen":
            self.backbone_module().eval()
        return self

    def _load_adapter(self, directory: Path) -> None:
        peft = _peft()
        backbone = self.backbone_module()
        wrapped = peft.PeftModel.from_pretrained(backbone, str(directory))
        wrapped.merge_and_unload()  # in place: the backbone module now holds merged weights
        self.backbone_modified = True

    def _save_backbone(self, path: Path) -> None:
        model = self.pretrained()
        state = None
        if self.has_adapter:
            # The base weights alone, under their original names; the adapter is saved apart.
            state = {
                k.replace(".base_layer.", "."): v
                for k, v in model.state_dict().items()
                if "lora_" not in k
            }
        model.save_pretrained(str(path), state_dict=state)
        self.tokenizer.save_pretrained(str(path))

    def save(self, directory: str | Path) -> Path:
        """Write the model to ``directory`` (see :mod:`ranker.text.config`); returns it."""
        from safetensors.torch import save_file

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        source = self.source
        if self.backbone_modified or self.backbone_training == "full":
            self._save_backbone(path / BACKBONE_DIR)
            source = BACKBONE_DIR
        if self.has_adapter:
            self.__dict__["_peft"].save_pretrained(str(path / ADAPTER_DIR))
        save_file(self.head_state_dict(), str(path / WEIGHTS_FILE))
        RerankerConfig(
            kind=self.kind,
            backbone=source,
            options=self.options.to_dict(),
            backbone_training=self.backbone_training,
            adapter=self.has_adapter,
        ).save(path)
        logger.info("saved %s reranker to %s", self.kind, path)
        return path


class PairRerankModel(RerankModel):
    """A kind that reads each (query, document) pair as one sequence (cross-encoder, LLM):
    subclasses tokenise pairs (:meth:`encode_pairs`, whose result has ``lengths``) and score
    rows of them (:meth:`pair_scores`); training and serving share both."""

    def encode_pairs(self, queries: Sequence[str], documents: Sequence[str]) -> Any:
        """Tokenised pairs ``(queries[i], documents[i])``; the result has ``lengths``."""
        raise NotImplementedError

    def pair_scores(self, pairs: Any, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Float32 scores of the pairs ``rows`` of ``pairs``."""
        raise NotImplementedError

    def group_scores(self, queries: Sequence[str], groups: Sequence[Sequence[str]]) -> torch.Tensor:
        size = group_size(groups)
        flat_q = [q for q, g in zip(queries, groups, strict=True) for _ in g]
        pairs = self.encode_pairs(flat_q, [d for g in groups for d in g])
        return self.pair_scores(pairs, range(len(flat_q))).view(len(groups), size)

    def prepare(self, query: str, documents: Sequence[str]) -> Prepared:
        return self.encode_pairs([query] * len(documents), documents)

    def score_prepared(self, prepared: Any, rows: np.ndarray) -> torch.Tensor:
        return self.pair_scores(prepared, rows)


def group_size(groups: Sequence[Sequence[str]]) -> int:
    """The common number of documents per query of a training step (they must be equal)."""
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or 0 in sizes:
        raise InvalidRequest("Every query needs the same, non-zero number of documents")
    return sizes.pop()


def _record_source(source: str) -> str:
    """How a backbone source is written into a saved config: packaged names as they are,
    paths absolute (so the model loads from anywhere)."""
    if is_packaged(source):
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def create_model(
    kind: str,
    backbone: str | None = None,
    options: dict[str, Any] | KindOptions | None = None,
    *,
    seed: int = 0,
) -> RerankModel:
    """A ``kind`` model over ``backbone`` (default: the kind's packaged one) with a new head
    initialised from ``seed`` (the global RNG is left untouched). Float32, on the CPU."""
    cls = model_class(kind)
    source = backbone or DEFAULT_BACKBONES[kind]
    opts = options if isinstance(options, KindOptions) else kind_options(kind, options)
    resolved = resolve_backbone(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.build(resolved, _record_source(source), opts)
    model.eval()
    return model


def is_quarry_reranker(directory: Path) -> bool:
    """Whether ``directory`` holds a Quarry reranker config."""
    return (Path(directory) / CONFIG_FILE).is_file()


def load_model(directory: str | Path) -> RerankModel:
    """Load a reranker directory: a Quarry-trained one, or a Hugging Face
    sequence-classification model (a cross-encoder, used as it is). Float32, on the CPU."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser()
    if not is_quarry_reranker(path):
        options = kind_options("cross-encoder")
        model = model_class("cross-encoder").build(ResolvedBackbone(path), str(path), options)
        model.eval()
        return model
    config = RerankerConfig.load(path)
    cls = model_class(config.kind)
    opts = kind_options(config.kind, config.options)
    resolved = resolve_backbone(config.backbone, base_dir=path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # any head init is overwritten below; keep it deterministic
        model = cls.build(resolved, _record_source(str(resolved.directory)), opts)
    if config.backbone == BACKBONE_DIR:
        model.backbone_modified = True
    else:
        model.source = config.backbone
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise InvalidRequest(f"{path} has no {WEIGHTS_FILE}")
    state = load_file(str(weights))
    expected = {k: tuple(v.shape) for k, v in model.head_state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        differ = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise InvalidRequest(
            f"{weights} does not match a {config.kind} head with these options (differing "
            f"tensors: {', '.join(differ[:5])})"
        )
    model.load_state_dict(state, strict=False)
    if config.adapter:
        model._load_adapter(path / ADAPTER_DIR)
    model.backbone_training = "frozen"  # how it was trained is in the config; now it serves
    model.eval()
    return model
