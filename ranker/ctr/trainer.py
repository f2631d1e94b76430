"""Training of CTR models: batches gathered on the device, validation every epoch, early
stopping on validation AUC, checkpoints, several seeds.

Batches are built on the training device from flat arrays: the behaviour array of the
dataset and, per sample, its item, label and history span. Histories are cut to the model's
``max_history`` most recent behaviours, padded with ``-1`` to the longest in the batch and
masked. Training batches are drawn in length buckets (a shuffled chunk of samples sorted by
history length, cut into batches, batches shuffled), so little of a batch is padding.

Layout of ``out`` for one seed::

    out/quarry_ctr.json, catalogue.json, model.safetensors   the best epoch's model
    out/checkpoints/last.pt                                   while training (--resume)

:func:`train_seeds` runs several seeds into ``out/seed-<s>/`` and returns the results record
that ``quarry train ctr`` writes as ``out/metrics.json`` (validation and test AUC/GAUC/logloss
per seed, each seed's test predictions, and the test samples they belong to), which
``quarry eval ctr`` compares across models.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import Conflict, InvalidRequest
from ranker.ctr.config import CTRConfig
from ranker.ctr.metrics import ctr_metrics
from ranker.ctr.models import CTRModule
from ranker.ctr.persistence import CONFIG_FILE, save_model
from ranker.ctr.registry import build_module, make_config
from ranker.ctr.samples import CTRData, SampleSet, SplitName

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CHECKPOINT = Path("checkpoints") / "last.pt"
#: Samples per length bucket, in batches.
BUCKET_BATCHES = 50


@dataclass(frozen=True)
class TrainOptions:
    """Optimisation and runtime settings (not saved with the model)."""

    epochs: int = 20
    batch_size: int = 256
    eval_batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2  # epochs without a better validation AUC before stopping; 0: never
    device: str = "auto"
    bucket: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} must be at least 1")
        if self.patience < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise InvalidRequest("patience and weight_decay must be >= 0, lr > 0")


@dataclass
class SeedResult:
    """One trained seed: where its model is, its best epoch, metrics and test predictions."""

    seed: int
    model_dir: str
    version: str
    best_epoch: int
    epochs: list[dict[str, Any]]
    validation: dict[str, float]
    test: dict[str, float]
    test_probs: np.ndarray = field(repr=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["test_predictions"] = [round(float(p), 6) for p in out.pop("test_probs")]
        return out


class DeviceSamples:
    """A dataset's behaviours and one split's samples as device tensors, cut into batches."""

    def __init__(self, data: CTRData, part: SampleSet, device: torch.device) -> None:
        self.device = device
        self.behaviours = torch.as_tensor(data.behaviours, dtype=torch.long, device=device)
        self.item = torch.as_tensor(part.item, dtype=torch.long, device=device)
        self.label = torch.as_tensor(part.label, dtype=torch.float32, device=device)
        self.start = torch.as_tensor(part.hist_start, dtype=torch.long, device=device)
        self.end = torch.as_tensor(part.hist_end, dtype=torch.long, device=device)
        self.lengths = part.history_length

    def __len__(self) -> int:
        return len(self.item)

    def batch(
        self, index: np.ndarray, max_history: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(items, history, mask, labels)`` of samples ``index``; history ``(B, L)``, the
        most recent ``max_history`` behaviours, oldest first, ``-1`` padded."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.device)
        end = self.end[idx]
        lengths = (end - self.start[idx]).clamp(max=max_history)
        width = int(min(self.lengths[index].max(initial=0), max_history))
        steps = torch.arange(width, device=self.device)
        mask = steps < lengths.unsqueeze(1)
        pos = (end - lengths).unsqueeze(1) + steps
        top = max(len(self.behaviours) - 1, 0)
        history = torch.where(mask, self.behaviours[pos.clamp(0, top)], -1)
        return self.item[idx], history, mask, self.label[idx]

    def train_batches(
        self, batch_size: int, rng: np.random.Generator, *, bucket: bool, max_history: int
    ) -> list[np.ndarray]:
        """One epoch's batches of sample indices, shuffled (in length buckets)."""
        order = rng.permutation(len(self))
        if not bucket:
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        batches: list[np.ndarray] = []
        span = batch_size * BUCKET_BATCHES
        clipped = np.minimum(self.lengths, max_history)
        for i in range(0, len(order), span):
            chunk = order[i : i + span]
            chunk = chunk[np.argsort(clipped[chunk], kind="stable")]
            batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def eval_batches(self, batch_size: int) -> list[np.ndarray]:
        """All samples, sorted by history length, in batches."""
        order = np.argsort(self.lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def predict(module: CTRModule, samples: DeviceSamples, batch_size: int = 2048) -> np.ndarray:
    """Click probabilities of every sample, in sample order."""
    was_training = module.training
    module.eval()
    out = np.empty(len(samples), dtype=np.float32)
    with torch.inference_mode():
        for index in samples.eval_batches(batch_size):
            items, history, mask, _ = samples.batch(index, module.config.max_history)
            out[index] = torch.sigmoid(module(items, history, mask)).float().cpu().numpy()
    module.train(was_training)
    return out


def _split_metrics(data: CTRData, name: SplitName, probs: np.ndarray) -> dict[str, float]:
    part = data.part(name)
    return ctr_metrics(part.user, part.label, probs)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="batch")


def _train_epoch(
    module: CTRModule,
    optimizer: torch.optim.Optimizer,
    samples: DeviceSamples,
    batches: Sequence[np.ndarray],
    tick: Callable[[int], Any],
) -> float:
    """One pass over ``batches``; the mean training loss (one device sync, at the end)."""
    loss_fn = torch.nn.BCEWithLogitsLoss()
    total = torch.zeros((), device=samples.device)
    seen = 0
    for index in batches:
        items, history, mask, labels = samples.batch(index, module.config.max_history)
        loss = loss_fn(module(items, history, mask), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(index)
        seen += len(index)
        tick(1)
    return float(total) / max(seen, 1)


def _checkpoint_payload(
    module: CTRModule,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    state: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        **state,
    }


def train_model(
    data: CTRData,
    config: CTRConfig,
    options: TrainOptions,
    out: Path,
    *,
    seed: int = 0,
    resume: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> SeedResult:
    """Train one model on ``data``'s train split, early-stopped on validation AUC; save the
    best epoch's model to ``out`` and report validation and test metrics."""
    from embedder.base import resolve_device

    out = Path(out)
    checkpoint = out / CHECKPOINT
    if not resume and (checkpoint.exists() or (out / CONFIG_FILE).exists()):
        raise Conflict(
            f"{out} already holds a CTR model or checkpoint; pass --resume or a new --out"
        )
    device = torch.device(resolve_device(options.device))
    started = time.perf_counter()
    torch.manual_seed(seed)
    module = build_module(config, data.catalogue.categories).to(device)
    optimizer = torch.optim.Adam(
        module.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    rng = np.random.default_rng(seed)
    train = DeviceSamples(data, data.part("train"), device)
    validation = DeviceSamples(data, data.part("validation"), device)
    if len(train) == 0 or len(validation) == 0:
        raise InvalidRequest(
            "The split left no training or no validation samples; use a longer log or change "
            "the split fractions"
        )
    state: dict[str, Any] = {"epoch": 0, "best_auc": -math.inf, "best_epoch": 0, "stale": 0}
    state["epochs"] = []
    best: dict[str, torch.Tensor] | None = None
    if resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        module.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        best = saved["best"]
        state = {k: saved[k] for k in ("epoch", "best_auc", "best_epoch", "stale", "epochs")}
        logger.info("Resuming %s at epoch %d", out, state["epoch"])

    max_history = config.max_history
    while state["epoch"] < options.epochs and (
        options.patience == 0 or state["stale"] < options.patience
    ):
        epoch = state["epoch"] + 1
        tick = time.perf_counter()
        module.train()
        batches = train.train_batches(
            options.batch_size, rng, bucket=options.bucket, max_history=max_history
        )
        desc = f"{config.kind} seed {seed} epoch {epoch}"
        with _progress(len(batches), desc, options.progress) as bar:
            train_loss = _train_epoch(module, optimizer, train, batches, bar.update)
        val = _split_metrics(
            data, "validation", predict(module, validation, options.eval_batch_size)
        )
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "validation": val,
            "seconds": round(time.perf_counter() - tick, 2),
        }
        state["epochs"].append(record)
        improved = val["auc"] > state["best_auc"]
        if improved:
            state.update(best_auc=val["auc"], best_epoch=epoch, stale=0)
            best = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        logger.info(
            "%s seed %d epoch %d: loss %.4f, validation AUC %.4f GAUC %.4f logloss %.4f%s",
            config.kind,
            seed,
            epoch,
            record["train_loss"],
            val["auc"],
            val["gauc"],
            val["logloss"],
            " (best)" if improved else "",
        )
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(_checkpoint_payload(module, optimizer, rng, {**state, "best": best}), tmp)
        tmp.replace(checkpoint)

    if best is not None:
        module.load_state_dict(best)
    test = DeviceSamples(data, data.part("test"), device)
    val_probs = predict(module, validation, options.eval_batch_size)
    test_probs = predict(module, test, options.eval_batch_size)
    meta = {
        "seed": seed,
        "best_epoch": state["best_epoch"],
        "train_options": asdict(options),
        # How histories were built: the serving side keeps the same behaviours.
        "sample_options": data.options.to_dict(),
        "data": {"source": data.source, "summary": data.summary()},
        **(metadata or {}),
    }
    version = save_model(module.cpu(), data.catalogue, out, metadata=meta)
    shutil.rmtree(out / CHECKPOINT.parent, ignore_errors=True)
    return SeedResult(
        seed=seed,
        model_dir=str(out),
        version=version,
        best_epoch=state["best_epoch"],
        epochs=state["epochs"],
        validation=_split_metrics(data, "validation", val_probs),
        test=_split_metrics(data, "test", test_probs) if len(test) else {},
        test_probs=test_probs,
        seconds=round(time.perf_counter() - started, 2),
    )


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "n": len(arr),
    }


def summarise(results: Sequence[SeedResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation (over seeds) of each validation and test metric."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split in ("validation", "test"):
        metrics = [getattr(r, split) for r in results]
        out[split] = {
            m: _mean_std([x[m] for x in metrics])
            for m in ("auc", "gauc", "logloss")
            if metrics and all(m in x for x in metrics)
        }
    return out


def train_seeds(
    data: CTRData,
    kind: str,
    out: Path,
    *,
    seeds: Sequence[int] = (0,),
    model_options: Mapping[str, Any] | None = None,
    options: TrainOptions | None = None,
    name: str | None = None,
    resume: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``kind`` once per seed into ``out/seed-<s>/``; return the results record (what
    ``quarry train ctr`` writes as ``out/metrics.json``)."""
    from ranker.ctr.persistence import read_model_config

    options = options or TrainOptions()
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidRequest(f"Seeds must be distinct and at least one, got {list(seeds)}")
    config = make_config(
        kind,
        n_items=len(data.catalogue),
        n_categories=data.catalogue.n_categories,
        options=model_options,
    )
    if "max_history" not in (model_options or {}) and config.max_history > data.options.max_history:
        # Keep no more history at serving time than training ever showed the model.
        config = config.with_options(max_history=data.options.max_history)
    out = Path(out)
    results: list[SeedResult] = []
    for seed in seeds:
        seed_dir = out / f"seed-{seed}"
        logger.info("Training %s, seed %d -> %s", kind, seed, seed_dir)
        if resume and (seed_dir / CONFIG_FILE).exists() and not (seed_dir / CHECKPOINT).exists():
            # Finished before the interruption: keep it, its metrics are in its config.
            results.append(_finished(data, seed_dir, seed, options, read_model_config(seed_dir)))
            continue
        results.append(
            train_model(
                data, config, options, seed_dir, seed=seed, resume=resume, metadata=metadata
            )
        )
    test = data.part("test")
    record = {
        "kind": "ctr",
        "name": name or kind,
        "model": kind,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "train_options": asdict(options),
        "data": {
            "source": data.source,
            "options": data.options.to_dict(),
            "summary": data.summary(),
            "test_fingerprint": data.fingerprint("test"),
        },
        "summary": summarise(results),
        "seeds": [r.to_dict() for r in results],
        "test_samples": {
            "users": data.user_ids[test.user].astype(str).tolist(),
            "items": [data.catalogue.item_ids[i] for i in test.item],
            "labels": test.label.astype(int).tolist(),
        },
        **({"metadata": dict(metadata)} if metadata else {}),
    }
    return record


def _finished(
    data: CTRData, seed_dir: Path, seed: int, options: TrainOptions, record: dict[str, Any]
) -> SeedResult:
    """The result of a seed trained before a resumed run: re-predicted from its saved model."""
    from ranker.ctr.persistence import load_model

    model = load_model(seed_dir, device=options.device)
    val = DeviceSamples(data, data.part("validation"), model.device)
    test = DeviceSamples(data, data.part("test"), model.device)
    val_probs = predict(model.module, val, options.eval_batch_size)
    test_probs = predict(model.module, test, options.eval_batch_size)
    return SeedResult(
        seed=seed,
        model_dir=str(seed_dir),
        version=model.version,
        best_epoch=int(record.get("metadata", {}).get("best_epoch", 0)),
        epochs=[],
        validation=_split_metrics(data, "validation", val_probs),
        test=_split_metrics(data, "test", test_probs),
        test_probs=test_probs,
    )
