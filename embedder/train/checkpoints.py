"""Checkpoints shared by Quarry's trainers (embedders and rerankers): write
``out/checkpoints/step-NNNNNNN`` atomically and prune old ones; read the latest back and
restore the trainable parameters, optimizer, scheduler, losses and RNG state."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from core.errors import InvalidRequest

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MODEL = "model"
TRAINER_STATE = "trainer_state.pt"


class _Config(Protocol):
    keep_checkpoints: int

    def to_dict(self) -> dict[str, Any]: ...

    def differences(self, other: Any) -> list[str]: ...


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint under ``out`` (``None`` if there is none)."""
    root = Path(out) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / TRAINER_STATE).is_file()]
    complete = [p for p in done if p.name[5:].isdigit()]
    return max(complete, key=lambda p: int(p.name[5:]), default=None)


def write_checkpoint(
    out: Path,
    *,
    step: int,
    config: _Config,
    trainable: Sequence[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: dict[str, Any],
    losses: Sequence[float],
    save_model: Callable[[Path], object],
) -> Path:
    """Write one checkpoint into a temp folder, rename it into place, prune old ones."""
    root = out / CHECKPOINTS_DIR
    final = root / f"step-{step:07d}"
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(tmp / CHECKPOINT_MODEL)
    state = {
        "step": step,
        "config": config.to_dict(),
        "trainable": {n: p.detach().cpu() for n, p in trainable},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "losses": list(losses),
    }
    torch.save(state, tmp / TRAINER_STATE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    kept = sorted(
        (p for p in root.glob("step-*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    for old in kept[: -config.keep_checkpoints]:
        shutil.rmtree(old)
    logger.info("checkpoint %s", final)
    return final


def read_checkpoint(
    out: Path,
    *,
    config: _Config,
    config_from_dict: Callable[[dict[str, Any]], Any],
    trainable: Sequence[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[int, list[float], dict[str, Any]] | None:
    """Restore the latest checkpoint into ``trainable``, ``optimizer`` and ``scheduler``;
    returns (step, losses, RNG state), or ``None`` when ``out`` holds no checkpoint.
    Refuses a checkpoint written with other settings or for other parameters."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        logger.info("no checkpoint in %s; training from step 0", out)
        return None
    state = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)
    changed = config.differences(config_from_dict(state["config"]))
    if changed:
        raise InvalidRequest(
            f"Checkpoint {ckpt} was trained with other settings ({'; '.join(changed)}); "
            "resume with the same settings or train into another directory."
        )
    saved: dict[str, torch.Tensor] = state["trainable"]
    if sorted(saved) != sorted(n for n, _ in trainable):
        raise InvalidRequest(f"Checkpoint {ckpt} does not match this model's parameters")
    with torch.no_grad():
        for name, param in trainable:
            param.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    logger.info("resumed from %s at step %d", ckpt, int(state["step"]))
    return int(state["step"]), [float(x) for x in state["losses"]], state["rng"]
