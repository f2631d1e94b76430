"""Training any reranker kind on (query, positive, negatives) examples.

Each optimizer step takes ``batch_size`` examples (a seeded permutation per epoch, as the
embedder trainer does) and, for each, a *group* of its positive and ``negatives`` negatives:
drawn (seeded by ``(seed, step)``) from the example's own hard negatives, topped up with random
documents of the training set that are not relevant to the query when it has too few. The
model scores every group (:meth:`~ranker.text.model.RerankModel.group_scores`) and the loss is
listwise softmax cross-entropy or pointwise BCE (:mod:`ranker.text.train.loss`). Groups are
independent, so ``micro_batch`` (examples per forward pass) accumulates the exact full-batch
gradient in bounded memory.

The backbone is frozen, LoRA-adapted or trained in full (``backbone_training``; defaults per
kind in :data:`KIND_DEFAULTS`); the kind's head is always trained. Over a frozen backbone the
late-interaction and KNRM models cache the encoder's token states, so each text runs through
the encoder once. AdamW with separate backbone and head learning rates, linear warm-up and
decay (:func:`embedder.train.trainer.lr_factor`), gradient clipping, bf16 autocast on CUDA with
float32 master weights; float32 on the CPU.

Output directory ``out``::

    quarry_reranker.json, weights.safetensors [, backbone/, adapter/]   the model:
                                              load_reranker(out) / RerankerPool.get(out)
    training.json                             config, data, per-step losses, versions
    checkpoints/step-0000200/model/           the model at that step
    checkpoints/step-0000200/trainer_state.pt step, trainable weights, optimizer, scheduler,
                                              RNG states, losses so far

``resume=True`` continues from the latest checkpoint and reproduces the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from core.errors import InvalidRequest, QuarryError
from embedder.base import resolve_device
from embedder.train.checkpoints import (
    CHECKPOINTS_DIR,
    read_checkpoint,
    write_checkpoint,
)
from embedder.train.data import TrainExample, check_examples
from embedder.train.trainer import TRAINING_RECORD, TrainResult, lr_factor
from ranker.text.config import (
    CONFIG_FILE,
    DEFAULT_BACKBONES,
    RerankerConfig,
    check_backbone_training,
    check_kind,
    kind_options,
)
from ranker.text.model import RerankModel, create_model, load_model
from ranker.text.train.loss import check_loss, rerank_loss

logger = logging.getLogger(__name__)

__all__ = [
    "KIND_DEFAULTS",
    "RerankTrainConfig",
    "RerankerTrainer",
    "TrainResult",
    "train_reranker",
]


@dataclass(frozen=True)
class KindDefaults:
    """A kind's training defaults: how its backbone trains, and the two learning rates."""

    backbone_training: str
    lr: float
    head_lr: float


#: Per-kind defaults. Cross-encoders and late interaction fine-tune the encoder in full (the
#: published recipes); KNRM keeps its word-piece embeddings frozen (a few thousand judged
#: pairs would overfit 30k x 384 embeddings) and learns its kernel weights fast; the LLM gets a
#: LoRA adapter (r 16, alpha 32) and has no head of its own.
KIND_DEFAULTS: dict[str, KindDefaults] = {
    "cross-encoder": KindDefaults("full", 2e-5, 1e-4),
    "late-interaction": KindDefaults("full", 1e-5, 1e-3),
    "knrm": KindDefaults("frozen", 1e-4, 5e-2),
    "llm": KindDefaults("lora", 1e-4, 1e-4),
    # A bi-encoder that already ranks well (the bundled MiniLM) moves gently: 1e-5 in full,
    # as for late interaction; it has no head.
    "dense": KindDefaults("full", 1e-5, 1e-4),
}


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise InvalidRequest(f"{name} must be > 0, got {value}")


@dataclass
class RerankTrainConfig:
    """Everything that decides a reranker training run's result (plus runtime knobs).

    Model: ``kind`` and ``backbone`` (a packaged name or a directory; default per kind), the
    kind's ``options`` (:mod:`ranker.text.config`), ``backbone_training`` (``frozen``,
    ``full`` or ``lora``; default per kind, :data:`KIND_DEFAULTS`), or ``init``: a trained
    reranker directory of the same kind to start from (its backbone and options are used).

    Optimisation: ``steps`` of ``batch_size`` examples, each scored against ``negatives``
    negatives; ``loss`` ``listwise`` (default, see :mod:`ranker.text.train.loss`) or ``bce``;
    ``lr`` for the backbone (full or LoRA) and ``head_lr`` for the head (``None``: the kind's
    defaults); warm-up ``warmup_steps`` (``None``: a tenth of the steps, at most 100), then
    linear decay to zero.

    Runtime (may change when resuming): ``micro_batch`` examples per forward pass (``None``:
    the whole batch), ``checkpoint_every``, ``keep_checkpoints``, ``device``, ``log_every``.
    """

    kind: str = "cross-encoder"
    backbone: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    backbone_training: str | None = None
    init: str | None = None
    loss: str = "listwise"
    steps: int = 1000
    batch_size: int = 16
    negatives: int = 7
    lr: float | None = None
    head_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    seed: int = 0
    micro_batch: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    log_every: int = 10

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "micro_batch",
        "checkpoint_every",
        "keep_checkpoints",
        "device",
        "log_every",
    )

    def __post_init__(self) -> None:
        check_kind(self.kind)
        check_loss(self.loss)
        if self.backbone_training is not None:
            check_backbone_training(self.backbone_training)
        if self.init is None:
            kind_options(self.kind, self.options)  # fail early on bad options
        for name in ("steps", "batch_size", "lora_r", "lora_alpha", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("negatives", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise InvalidRequest(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise InvalidRequest(f"log_every must be >= 1, got {self.log_every}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise InvalidRequest(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise InvalidRequest(f"micro_batch must be >= 1, got {self.micro_batch}")
        if self.negatives < 1 and self.loss == "listwise":
            raise InvalidRequest("The listwise loss needs at least one negative per query")
        for name in ("lr", "head_lr", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise InvalidRequest(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.lora_dropout < 1:
            raise InvalidRequest(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def resolved(self) -> RerankTrainConfig:
        """This config with every per-kind default filled in (what is recorded)."""
        defaults = KIND_DEFAULTS[self.kind]
        return replace(
            self,
            backbone=self.backbone
            if self.init is not None
            else (self.backbone or DEFAULT_BACKBONES[self.kind]),
            backbone_training=self.backbone_training or defaults.backbone_training,
            lr=self.lr if self.lr is not None else defaults.lr,
            head_lr=self.head_lr if self.head_lr is not None else defaults.head_lr,
            warmup_steps=self.warmup_steps
            if self.warmup_steps is not None
            else min(100, self.steps // 10),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RerankTrainConfig:
        """Inverse of :meth:`to_dict`; refuses unknown keys."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidRequest(f"Unknown training settings: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: RerankTrainConfig) -> list[str]:
        """Result-affecting fields whose values differ from ``other``'s."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{k}: {theirs[k]!r} -> {mine[k]!r}"
            for k in mine
            if k not in self.RUNTIME_FIELDS and mine[k] != theirs[k]
        ]


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class _Groups:
    """Examples as index tables: texts stored once, each example's positive and negatives as
    rows, and which texts are relevant to which query (never drawn as its negatives)."""

    def __init__(self, examples: Sequence[TrainExample]) -> None:
        texts: dict[str, int] = {}
        queries: dict[str, int] = {}
        for e in examples:
            queries.setdefault(e.query, len(queries))
            for t in (e.positive, *e.negatives):
                texts.setdefault(t, len(texts))
        self.texts = list(texts)
        self.queries = list(queries)
        self.example_query = np.array([queries[e.query] for e in examples], dtype=np.int64)
        self.example_positive = np.array([texts[e.positive] for e in examples], dtype=np.int64)
        relevant: dict[int, set[int]] = {}
        for q, p in zip(self.example_query, self.example_positive, strict=True):
            relevant.setdefault(int(q), set()).add(int(p))
        self.relevant = relevant
        self.example_negatives = [
            np.array(
                [
                    n
                    for n in dict.fromkeys(texts[t] for t in e.negatives)
                    if n not in relevant[queries[e.query]]
                ],
                dtype=np.int64,
            )
            for e in examples
        ]

    def negatives(self, example: int, count: int, rng: np.random.Generator) -> list[int]:
        """``count`` negative text rows for ``example`` (its own first, then random ones)."""
        own = self.example_negatives[example]
        if own.size >= count:
            return [int(i) for i in own[np.sort(rng.choice(own.size, size=count, replace=False))]]
        chosen = [int(i) for i in own]
        banned = self.relevant[int(self.example_query[example])] | set(chosen)
        free = np.setdiff1d(np.arange(len(self.texts)), np.fromiter(banned, dtype=np.int64))
        need = count - len(chosen)
        if free.size == 0:
            raise InvalidRequest("No text in the training data can serve as a negative")
        fill = rng.choice(free, size=need, replace=bool(free.size < need))
        return chosen + [int(i) for i in fill]


class RerankerTrainer:
    """Trains a reranker of ``config.kind`` on ``examples`` into ``out`` (module docstring).

    ``resume=True`` continues from the latest checkpoint in ``out`` (or starts afresh when there
    is none); otherwise ``out`` must not already hold a model or checkpoints. ``metadata``
    (where the data came from, held-out queries) is recorded in ``training.json``.
    """

    def __init__(
        self,
        config: RerankTrainConfig,
        examples: Sequence[TrainExample],
        out: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        check_examples(examples)
        config = config.resolved()
        if config.batch_size > len(examples):
            raise InvalidRequest(
                f"batch_size {config.batch_size} exceeds the {len(examples)} training examples"
            )
        self.config = config
        self.out = Path(out)
        self.progress = progress
        self.metadata = dict(metadata or {})
        self.n_examples = len(examples)
        if not resume and (
            (self.out / CONFIG_FILE).exists() or (self.out / CHECKPOINTS_DIR).exists()
        ):
            raise InvalidRequest(
                f"{self.out} already holds a trained model or checkpoints; resume it or choose "
                "another output directory."
            )
        self.device = resolve_device(config.device)
        self.groups = _Groups(examples)
        self.model = self._build_model()
        self.model.to(self.device)
        self.model.train()
        self._trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self._trainable:
            raise InvalidRequest(
                f"Nothing to train: a {config.kind} reranker with a "
                f"{config.backbone_training} backbone has no trainable parameter"
            )
        self.optimizer = self._build_optimizer()
        warmup = int(config.warmup_steps or 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup=warmup, total=config.steps)
        )
        self.step = 0
        self.losses: list[float] = []
        self._rng_pending: int | dict[str, Any] | None = config.seed
        if resume:
            self._resume()

    # --- construction -------------------------------------------------------------------------

    def _build_model(self) -> RerankModel:
        cfg = self.config
        if cfg.init is not None:
            init = Path(cfg.init).expanduser()
            found = RerankerConfig.load(init).kind
            if found != cfg.kind:
                raise InvalidRequest(f"--init {init} is a {found} reranker, not a {cfg.kind}")
            if cfg.options and kind_options(cfg.kind, cfg.options) != kind_options(
                cfg.kind, RerankerConfig.load(init).options
            ):
                raise InvalidRequest("Options come from the --init model; do not pass others")
            model = load_model(init)
        else:
            model = create_model(cfg.kind, cfg.backbone, cfg.options, seed=cfg.seed)
        mode = str(cfg.backbone_training)
        with torch.random.fork_rng(devices=[]):  # seeded LoRA init, global RNG untouched
            torch.manual_seed(cfg.seed)
            model.set_backbone_training(
                mode, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout
            )
        enable_cache = getattr(model, "enable_cache", None)
        if mode == "frozen" and enable_cache is not None:
            enable_cache(True)
        logger.info(
            "training a %s reranker over %s (%s backbone): %d backbone and %d head parameters "
            "trainable",
            cfg.kind,
            cfg.init or cfg.backbone,
            mode,
            sum(p.numel() for p in model.backbone_parameters()),
            sum(p.numel() for p in model.head_parameters()),
        )
        return model

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        groups = [
            {"params": params, "lr": lr}
            for params, lr in (
                (self.model.backbone_parameters(), cfg.lr),
                (self.model.head_parameters(), cfg.head_lr),
            )
            if params
        ]
        return torch.optim.AdamW(groups, lr=float(cfg.lr or 0), weight_decay=cfg.weight_decay)

    # --- one step -----------------------------------------------------------------------------

    def batch_examples(self, step: int) -> np.ndarray:
        """Indices of the examples of ``step``: a seeded permutation per epoch, cut in batches
        (the last partial batch of an epoch is dropped). A function of ``(seed, step)``."""
        per_epoch = self.n_examples // self.config.batch_size
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.n_examples)
        return order[k * self.config.batch_size : (k + 1) * self.config.batch_size]

    def batch(self, step: int) -> tuple[list[str], list[list[str]]]:
        """Step ``step``'s queries and their groups (positive first, then negatives)."""
        g = self.groups
        rng = np.random.default_rng([self.config.seed, step, 1])
        queries: list[str] = []
        groups: list[list[str]] = []
        for i in self.batch_examples(step):
            rows = [int(g.example_positive[i]), *g.negatives(int(i), self.config.negatives, rng)]
            queries.append(g.queries[int(g.example_query[i])])
            groups.append([g.texts[r] for r in rows])
        return queries, groups

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.startswith("cuda"):
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compute_gradients(self, step: int) -> float:
        """Accumulate into ``.grad`` the gradient of step ``step``'s loss; return the loss."""
        queries, groups = self.batch(step)
        chunk = self.config.micro_batch or len(queries)
        total = 0.0
        for start in range(0, len(queries), chunk):
            q, g = queries[start : start + chunk], groups[start : start + chunk]
            with self._autocast():
                scores = self.model.group_scores(q, g)
            loss = rerank_loss(self.config.loss, scores) * (len(q) / len(queries))
            loss.backward()
            total += float(loss.detach())
        return total

    def train_step(self) -> float:
        """One optimizer step (the next one); returns its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.compute_gradients(self.step)
        if not math.isfinite(loss):
            raise QuarryError(
                f"Training diverged: the loss is {loss} at step {self.step}. Lower the learning "
                "rate."
            )
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for _, p in self._trainable], self.config.max_grad_norm
            )
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.losses.append(loss)
        return loss

    # --- the loop -----------------------------------------------------------------------------

    def _rng_devices(self) -> list[int]:
        if not self.device.startswith("cuda"):
            return []
        index = torch.device(self.device).index
        return [index if index is not None else torch.cuda.current_device()]

    def _rng_state(self) -> dict[str, Any]:
        return {
            "cpu": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(d) for d in self._rng_devices()],
        }

    def _install_rng(self) -> None:
        pending, self._rng_pending = self._rng_pending, None
        if isinstance(pending, int):
            torch.manual_seed(pending)
        elif pending is not None:
            torch.set_rng_state(pending["cpu"])
            devices = self._rng_devices()
            if len(pending["cuda"]) == len(devices):
                for d, s in zip(devices, pending["cuda"], strict=True):
                    torch.cuda.set_rng_state(s, d)

    def fit(self, *, stop_at: int | None = None) -> TrainResult:
        """Train up to ``config.steps`` (or to step ``stop_at``), checkpointing on the way;
        the last step saves the model to ``out`` with ``training.json``."""
        from tqdm.auto import tqdm

        cfg = self.config
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        self._install_rng()
        start = time.perf_counter()
        first = self.step
        with tqdm(
            total=cfg.steps, initial=self.step, desc="train", unit="step", disable=not self.progress
        ) as bar:
            while self.step < end:
                loss = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    logger.info(
                        "step %d/%d loss %.4f (mean of last %d: %.4f) lr %.3g",
                        self.step,
                        cfg.steps,
                        loss,
                        min(cfg.log_every, len(self.losses)),
                        float(np.mean(self.losses[-cfg.log_every :])),
                        self.scheduler.get_last_lr()[0],
                    )
                due = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                if due and self.step < cfg.steps:
                    self.save_checkpoint()
        elapsed = time.perf_counter() - start
        if self.step > first:
            logger.info("%d steps in %.1f s", self.step - first, elapsed)
        if self.step >= cfg.steps:
            self.save_model(elapsed)
        return TrainResult(self.out, self.step, cfg.steps, list(self.losses), elapsed)

    # --- persistence --------------------------------------------------------------------------

    def save_model(self, elapsed_s: float = 0.0) -> Path:
        """Write the model to ``out`` (loadable by path) and ``training.json`` beside it."""
        self.model.save(self.out)
        record = {
            "config": self.config.to_dict(),
            "examples": self.n_examples,
            "queries": len(self.groups.queries),
            "steps": self.step,
            "final_loss": float(np.mean(self.losses[-10:])) if self.losses else None,
            "losses": self.losses,
            "elapsed_s_last_run": round(elapsed_s, 3),
            "device": self.device,
            "versions": _versions(),
            **self.metadata,
        }
        (self.out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        logger.info("trained reranker saved to %s", self.out)
        return self.out

    def save_checkpoint(self) -> Path:
        """Write ``out/checkpoints/step-NNNNNNN`` atomically; prune older checkpoints."""
        return write_checkpoint(
            self.out,
            step=self.step,
            config=self.config,
            trainable=self._trainable,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            rng=self._rng_state(),
            losses=self.losses,
            save_model=self.model.save,
        )

    def _resume(self) -> None:
        restored = read_checkpoint(
            self.out,
            config=self.config,
            config_from_dict=type(self.config).from_dict,
            trainable=self._trainable,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
        )
        if restored is not None:
            self.step, self.losses, self._rng_pending = restored


def train_reranker(
    config: RerankTrainConfig,
    examples: Sequence[TrainExample],
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with ``config`` on ``examples`` into ``out`` (see :class:`RerankerTrainer`)."""
    trainer = RerankerTrainer(
        config, examples, out, resume=resume, progress=progress, metadata=metadata
    )
    return trainer.fit()
