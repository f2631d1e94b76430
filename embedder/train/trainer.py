"""Contrastive fine-tuning of LLM embedders with GradCache (the recipe of ``docs/methods.md``).

One optimizer step sees ``batch_size`` examples. Every query is scored against all
positives and hard negatives of the step (:func:`~embedder.train.loss.info_nce_loss`), so the
in-batch negatives span the whole effective batch. Memory is bounded by GradCache: with
``grad_cache_chunk`` set, all texts are first embedded in chunks without a graph, the loss and
its gradient with respect to the embeddings are computed on the full batch, and each chunk
is then embedded again with a graph and back-propagated with its slice of that gradient.
The result is the gradient of the full-batch loss (dropout masks are replayed by restoring
the RNG state of each chunk's first pass), at the cost of one extra forward pass. Plain
gradient accumulation would not do: its negatives would stop at each micro-batch.

The backbone gets a LoRA adapter (r 16, alpha 32, dropout 0.1 on all attention and MLP
projections, through :meth:`~embedder.llm.LLMEmbeddingModel.enable_lora`) or is trained in
full (``lora=False``); the pooling head is always trained in full. AdamW, linear warm-up then
linear decay to zero, gradient clipping, bf16 autocast on CUDA (float32 master weights),
float32 on CPU.

Layout of the output directory ``out``::

    quarry_embedder.json, pooling/, adapter/ ...   the trained model (LLMEmbeddingModel.save):
                                                   load_embedder(out) / EmbedderPool.get(out)
    training.json                                  config, per-step losses, versions, timings
    checkpoints/step-0000200/model/                the model at that step (loadable as well)
    checkpoints/step-0000200/trainer_state.pt      step, trainable weights, optimizer,
                                                   scheduler, RNG states, losses so far

Resuming from the latest checkpoint reproduces the uninterrupted run: the data order and
hard-negative draws are functions of ``(seed, step)``, and the RNG states that drive dropout
are restored.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from core.errors import InvalidRequest, QuarryError
from embedder.base import resolve_device
from embedder.batching import pad_rows
from embedder.llm.config import CONFIG_NAME, get_preset
from embedder.llm.model import LLMEmbedder, LLMEmbeddingModel
from embedder.llm.names import packaged_llm
from embedder.train.checkpoints import (
    CHECKPOINTS_DIR,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from embedder.train.data import TrainExample, check_examples
from embedder.train.loss import DEFAULT_TEMPERATURE, info_nce_loss

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINTS_DIR",
    "TRAINING_RECORD",
    "EmbedderTrainer",
    "TrainConfig",
    "TrainResult",
    "latest_checkpoint",
    "lr_factor",
    "train_embedder",
]

TRAINING_RECORD = "training.json"


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not (value >= 0 if allow_zero else value > 0) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass
class TrainConfig:
    """Everything that decides a training run's result (plus a few runtime knobs).

    Model: ``backbone`` is a packaged name (``"smollm2"``), a Hugging Face model directory or a
    ``.gguf`` file; ``preset`` one of ``design1`` … ``design5``; ``pooling_options`` adjust the
    head (``{"num_latents": 16}``). ``query_prefix`` (the task instruction) and
    ``document_prefix`` are stored in the model's config, so the trained embedder adds them at
    inference exactly as in training. ``max_seq_length`` truncates texts (tokens, EOS included).

    Optimisation: ``steps`` optimizer steps of ``batch_size`` examples each;
    ``grad_cache_chunk`` texts per forward pass (``None``: each of queries and documents in one
    pass). ``lr`` is the backbone's (LoRA or full) learning rate, 1e-5 as in the paper.
    ``head_lr`` is the pooling head's, default 1e-4: the head starts from random weights while
    the backbone is pretrained (and LoRA starts as a no-op), so at 1e-5 a head moves little in
    1,000 steps. Pass ``head_lr=lr`` (or ``None``) for the paper's single learning rate.
    Linear warm-up over ``warmup_steps`` then linear decay to 0 at ``steps``. ``hard_negatives``
    per example are used each step (drawn afresh, seeded, when an example carries more).

    Runtime (may change when resuming): ``checkpoint_every`` steps (0: never),
    ``keep_checkpoints`` most recent ones kept, ``device``, ``log_every``.
    """

    backbone: str = "smollm2"
    preset: str = "design5"
    pooling_options: dict[str, Any] = field(default_factory=dict)
    query_prefix: str = ""
    document_prefix: str = ""
    max_seq_length: int = 512
    steps: int = 1000
    batch_size: int = 64
    grad_cache_chunk: int | None = None
    lr: float = 1e-5
    head_lr: float | None = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    temperature: float = DEFAULT_TEMPERATURE
    hard_negatives: int = 1
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    log_every: int = 10

    #: Fields that do not change the result, and so may differ when a run is resumed.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "checkpoint_every",
        "keep_checkpoints",
        "device",
        "log_every",
    )

    def __post_init__(self) -> None:
        get_preset(self.preset)
        for name in ("steps", "batch_size", "lora_r", "keep_checkpoints", "log_every"):
            if int(getattr(self, name)) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "hard_negatives", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise InvalidRequest(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_cache_chunk is not None and self.grad_cache_chunk < 1:
            raise InvalidRequest(f"grad_cache_chunk must be >= 1, got {self.grad_cache_chunk}")
        if self.max_seq_length < 2:
            raise InvalidRequest(f"max_seq_length must be >= 2, got {self.max_seq_length}")
        _positive("lr", self.lr)
        _positive("temperature", self.temperature)
        _positive("lora_alpha", self.lora_alpha)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.head_lr is not None:
            _positive("head_lr", self.head_lr)
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)
        if not 0 <= self.lora_dropout < 1:
            raise InvalidRequest(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; refuses unknown keys."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidRequest(f"Unknown training settings: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: TrainConfig) -> list[str]:
        """Result-affecting fields whose values differ from ``other``'s."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{k}: {theirs[k]!r} -> {mine[k]!r}"
            for k in mine
            if k not in self.RUNTIME_FIELDS and mine[k] != theirs[k]
        ]


@dataclass
class TrainResult:
    """What :meth:`EmbedderTrainer.fit` did: where the model is and the per-step losses."""

    out: Path
    step: int
    steps: int
    losses: list[float]
    elapsed_s: float

    @property
    def finished(self) -> bool:
        """Whether all configured steps ran (the model in ``out`` is the final one)."""
        return self.step >= self.steps

    @property
    def final_loss(self) -> float:
        """Mean loss of the last 10 steps (NaN before the first step)."""
        return _tail_mean(self.losses)


def _tail_mean(losses: Sequence[float], n: int = 10) -> float:
    tail = list(losses)[-n:]
    return float(np.mean(tail)) if tail else float("nan")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Learning-rate multiplier before optimizer step ``step`` (0-based).

    Linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total`` (the
    schedule of ``transformers.get_linear_schedule_with_warmup``).
    """
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class _TokenTable:
    """Texts tokenised once (flat ids + lengths); any subset is padded into a batch on demand."""

    def __init__(
        self,
        tokenized: tuple[np.ndarray, np.ndarray],
        pad_id: int,
        side: Literal["left", "right"],
    ) -> None:
        self.flat, self.lengths = tokenized
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.pad_id, self.side = pad_id, side

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def pad(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)`` of ``rows``, padded like the serving engine pads."""
        return pad_rows(
            self.flat, self.starts[rows], self.lengths[rows], pad_id=self.pad_id, side=self.side
        )


@dataclass
class _Batch:
    """One step's texts: table rows of B queries and of B positives followed by M negatives."""

    queries: np.ndarray
    docs: np.ndarray
    exclude: torch.Tensor  # (B, B + M) false negatives left out of each query's softmax


class EmbedderTrainer:
    """Trains an :class:`~embedder.llm.LLMEmbeddingModel` on ``examples`` into ``out``.

    ``resume=True`` continues from the latest checkpoint in ``out`` (or starts afresh when there
    is none); otherwise ``out`` must not already hold a model or checkpoints. ``metadata``
    (e.g. where the data came from) is recorded in ``training.json``.
    """

    def __init__(
        self,
        config: TrainConfig,
        examples: Sequence[TrainExample],
        out: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        check_examples(examples)
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
            (self.out / CONFIG_NAME).exists() or (self.out / CHECKPOINTS_DIR).exists()
        ):
            raise InvalidRequest(
                f"{self.out} already holds a trained model or checkpoints; resume it or choose "
                "another output directory."
            )
        self.device = resolve_device(config.device)
        self.model = self._build_model()
        self._prepare_data(examples)
        if config.lora:
            with torch.random.fork_rng(devices=[]):  # seeded LoRA init, global RNG untouched
                torch.manual_seed(config.seed)
                self.model.enable_lora(
                    r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout
                )
        self.model.to(self.device)
        self.model.train()
        self._trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self._trainable:
            raise InvalidRequest("Nothing to train: no parameter requires a gradient")
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, warmup=config.warmup_steps, total=config.steps),
        )
        self.step = 0
        self.losses: list[float] = []
        # Global RNG (dropout) state to install when fit() starts: a seed, or a checkpoint's.
        self._rng_pending: int | dict[str, Any] | None = config.seed
        if resume:
            self._resume()

    # --- construction -------------------------------------------------------------------------

    def _build_model(self) -> LLMEmbeddingModel:
        cfg = self.config
        source = cfg.backbone
        if packaged_llm(source) is None and Path(source).expanduser().exists():
            # Recorded in the saved config: absolute, so the model loads from anywhere.
            source = str(Path(source).expanduser().resolve())
        model = LLMEmbeddingModel.from_preset(
            source,
            cfg.preset,
            seed=cfg.seed,
            pooling_options=cfg.pooling_options or None,
            dtype=torch.float32,  # master weights; CUDA computes under bf16 autocast
            query_prefix=cfg.query_prefix,
            document_prefix=cfg.document_prefix,
            max_seq_length=cfg.max_seq_length,
        )
        logger.info(
            "training %s over %s: %d backbone parameters, %d head parameters",
            cfg.preset,
            cfg.backbone,
            sum(p.numel() for p in model.backbone.parameters()),
            sum(p.numel() for p in model.pooling.parameters()),
        )
        return model

    def _prepare_data(self, examples: Sequence[TrainExample]) -> None:
        """Tokenise every distinct text once, with the serving path's tokenisation."""
        # The serving engine does the tokenisation (truncation, EOS, prefixes' placement), so
        # training sees exactly the tokens inference will. Built on the CPU in float32, which is
        # how the model was loaded, so this moves nothing.
        front = LLMEmbedder(self.model, device="cpu", name="training")
        config = self.model.config
        tok = self.model.tokenizer
        pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        query_row: dict[str, int] = {}
        doc_row: dict[str, int] = {}
        for e in examples:
            query_row.setdefault(e.query, len(query_row))
            for text in (e.positive, *e.negatives):
                doc_row.setdefault(text, len(doc_row))
        self._queries = _TokenTable(
            front.tokenize([config.query_prefix + q for q in query_row]),
            pad_id,
            config.padding_side,
        )
        self._docs = _TokenTable(
            front.tokenize([config.document_prefix + d for d in doc_row]),
            pad_id,
            config.padding_side,
        )
        self._doc_rows = doc_row
        self._ex_query = np.array([query_row[e.query] for e in examples], dtype=np.int64)
        self._ex_pos = np.array([doc_row[e.positive] for e in examples], dtype=np.int64)
        self._ex_negs = [
            np.array([doc_row[n] for n in e.negatives], dtype=np.int64) for e in examples
        ]
        # (query, relevant document) pairs as one int64 code each: a document relevant to a
        # query must never count as that query's negative.
        self._relevant = np.unique(self._ex_query * len(self._docs) + self._ex_pos)
        logger.info(
            "%d examples: %d distinct queries (mean %.1f tokens), %d distinct documents "
            "(mean %.1f tokens, %d at the %d-token limit)",
            len(examples),
            len(self._queries),
            float(self._queries.lengths.mean()),
            len(self._docs),
            float(self._docs.lengths.mean()),
            int((self._docs.lengths >= front.max_seq_length).sum()),
            front.max_seq_length,
        )

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        head = [p for p in self.model.pooling.parameters() if p.requires_grad]
        groups = [
            {"params": params, "lr": lr}
            for params, lr in ((backbone, cfg.lr), (head, cfg.head_lr or cfg.lr))
            if params
        ]
        logger.info(
            "trainable: %d backbone (%s) and %d head parameters; lr %.2g, head lr %.2g",
            sum(p.numel() for p in backbone),
            "LoRA" if cfg.lora else "full",
            sum(p.numel() for p in head),
            cfg.lr,
            cfg.head_lr or cfg.lr,
        )
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # --- one step -----------------------------------------------------------------------------

    def batch_examples(self, step: int) -> np.ndarray:
        """Indices of the examples of ``step``: a seeded permutation per epoch, cut in batches.

        A function of ``(seed, step)`` only, so a resumed run sees the same batches. The last
        partial batch of an epoch is dropped, keeping the number of negatives constant.
        """
        per_epoch = self.n_examples // self.config.batch_size
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.n_examples)
        return order[k * self.config.batch_size : (k + 1) * self.config.batch_size]

    def _batch(self, step: int) -> _Batch:
        idx = self.batch_examples(step)
        n = self.config.hard_negatives
        rng = np.random.default_rng([self.config.seed, step, 1])
        negatives: list[np.ndarray] = []
        for i in idx:
            rows = self._ex_negs[i]
            if rows.size > n:
                rows = rows[np.sort(rng.choice(rows.size, size=n, replace=False))]
            negatives.append(rows)
        queries = self._ex_query[idx]
        docs = np.concatenate([self._ex_pos[idx], *negatives])
        codes = queries[:, None] * len(self._docs) + docs[None, :]
        exclude = np.isin(codes, self._relevant)
        exclude[np.arange(len(idx)), np.arange(len(idx))] = False  # each query's own label
        return _Batch(queries, docs, torch.from_numpy(exclude))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.startswith("cuda"):
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _embed(self, table: _TokenTable, rows: np.ndarray) -> torch.Tensor:
        ids, mask = table.pad(rows)
        input_ids = torch.from_numpy(ids).to(self.device)
        attention_mask = torch.from_numpy(mask).to(self.device).long()
        with self._autocast():
            return self.model(input_ids, attention_mask)

    def _loss(self, batch: _Batch, queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        b = len(batch.queries)
        return info_nce_loss(
            queries,
            docs[:b],
            docs[b:],
            temperature=self.config.temperature,
            exclude=batch.exclude,
        )

    def _rng_devices(self) -> list[int]:
        if not self.device.startswith("cuda"):
            return []
        index = torch.device(self.device).index
        return [index if index is not None else torch.cuda.current_device()]

    def _rng_state(self) -> dict[str, Any]:
        devices = self._rng_devices()
        return {
            "cpu": torch.get_rng_state(),
            "cuda": [torch.cuda.get_rng_state(d) for d in devices],
        }

    @contextlib.contextmanager
    def _replay(self, state: dict[str, Any]) -> Iterator[None]:
        """Run the body with the RNG as it was in ``state``; restore the current one after."""
        devices = self._rng_devices()
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(state["cpu"])
            for d, s in zip(devices, state["cuda"], strict=True):
                torch.cuda.set_rng_state(s, d)
            yield

    def compute_gradients(self, step: int) -> float:
        """Accumulate into ``.grad`` the gradient of step ``step``'s full-batch loss; its value.

        With ``grad_cache_chunk`` this is GradCache (see the module docstring); without it,
        queries and documents each go through the model in one pass.
        """
        batch = self._batch(step)
        chunk = self.config.grad_cache_chunk
        if chunk is None:
            loss = self._loss(
                batch,
                self._embed(self._queries, batch.queries),
                self._embed(self._docs, batch.docs),
            )
            loss.backward()
            return float(loss.detach())
        pieces = [
            (table, rows[i : i + chunk])
            for table, rows in ((self._queries, batch.queries), (self._docs, batch.docs))
            for i in range(0, len(rows), chunk)
        ]
        n_query_pieces = math.ceil(len(batch.queries) / chunk)
        # Pass 1: embeddings without a graph, remembering each chunk's RNG state (dropout).
        states, reps = [], []
        with torch.no_grad():
            for table, rows in pieces:
                states.append(self._rng_state())
                reps.append(self._embed(table, rows).detach().requires_grad_())
        loss = self._loss(batch, torch.cat(reps[:n_query_pieces]), torch.cat(reps[n_query_pieces:]))
        loss.backward()  # d loss / d embeddings, into reps[i].grad
        # Pass 2: each chunk again, with a graph and the same dropout masks, chained to its
        # slice of the embedding gradient.
        for (table, rows), state, rep in zip(pieces, states, reps, strict=True):
            with self._replay(state):
                emb = self._embed(table, rows)
                emb.backward(gradient=rep.grad)
        return float(loss.detach())

    def train_step(self) -> float:
        """One optimizer step (the next one); returns its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.compute_gradients(self.step)
        if not math.isfinite(loss):
            raise QuarryError(
                f"Training diverged: the loss is {loss} at step {self.step}. Lower the learning "
                "rate or raise the temperature."
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

    def _install_rng(self) -> None:
        pending, self._rng_pending = self._rng_pending, None
        if isinstance(pending, int):
            torch.manual_seed(pending)  # also seeds every CUDA device
        elif pending is not None:
            torch.set_rng_state(pending["cpu"])
            devices = self._rng_devices()
            if len(pending["cuda"]) == len(devices):
                for d, s in zip(devices, pending["cuda"], strict=True):
                    torch.cuda.set_rng_state(s, d)
            elif devices:
                logger.warning("checkpoint has no CUDA RNG state for this device; dropout differs")

    def fit(self, *, stop_at: int | None = None) -> TrainResult:
        """Train up to ``config.steps`` (or to step ``stop_at``), checkpointing on the way.

        When the last step is reached, the model is saved to ``out`` with ``training.json``.
        """
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
                lr = self.scheduler.get_last_lr()[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    logger.info(
                        "step %d/%d loss %.4f (mean of last %d: %.4f) lr %.3g",
                        self.step,
                        cfg.steps,
                        loss,
                        min(cfg.log_every, len(self.losses)),
                        float(np.mean(self.losses[-cfg.log_every :])),
                        lr,
                    )
                # The last step saves the model itself, not a checkpoint.
                due = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                if due and self.step < cfg.steps:
                    self.save_checkpoint()
        elapsed = time.perf_counter() - start
        if self.step > first:
            logger.info(
                "%d steps in %.1f s (%.2f s/step)",
                self.step - first,
                elapsed,
                elapsed / (self.step - first),
            )
        if self.step >= cfg.steps:
            self.save_model(elapsed)
        return TrainResult(self.out, self.step, cfg.steps, list(self.losses), elapsed)

    # --- persistence --------------------------------------------------------------------------

    def _save_model_dir(self, directory: Path) -> None:
        # Fully trained backbone weights exist nowhere else; LoRA leaves them at their source.
        self.model.save(directory, include_backbone=None if self.config.lora else True)

    def save_model(self, elapsed_s: float = 0.0) -> Path:
        """Write the model to ``out`` (loadable by name) and ``training.json`` beside it."""
        self._save_model_dir(self.out)
        record = {
            "config": self.config.to_dict(),
            "examples": self.n_examples,
            "steps": self.step,
            "final_loss": _tail_mean(self.losses),
            "losses": self.losses,
            "elapsed_s_last_run": round(elapsed_s, 3),
            "device": self.device,
            "device_name": torch.cuda.get_device_name(self.device)
            if self.device.startswith("cuda")
            else platform.processor() or platform.machine(),
            "versions": {
                "python": platform.python_version(),
                **{pkg: _version(pkg) for pkg in ("torch", "transformers", "peft")},
            },
            **self.metadata,
        }
        (self.out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        logger.info("trained embedder saved to %s", self.out)
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
            save_model=self._save_model_dir,
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


def train_embedder(
    config: TrainConfig,
    examples: Sequence[TrainExample],
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with ``config`` on ``examples`` into ``out`` (see :class:`EmbedderTrainer`)."""
    trainer = EmbedderTrainer(
        config, examples, out, resume=resume, progress=progress, metadata=metadata
    )
    return trainer.fit()
