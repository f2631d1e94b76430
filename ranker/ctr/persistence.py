"""CTR model directories: save and load.

A directory holds

    quarry_ctr.json      {"format": 1, "kind", "config": {hyper-parameters}, "version",
                          "catalogue": {"file", "items", "categories"}, "metadata": {...}}
    catalogue.json       item ids, each item's category, category names
    model.safetensors    the weights (SDIM's hyperplanes and the category lookup included)

``version`` is the first 16 hex digits of the SHA-256 of ``model.safetensors``: it changes
whenever the weights do, and states encoded by one version are never scored by another.
Loading recomputes it from the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InvalidRequest, ModelNotAvailable
from ranker.ctr.catalogue import ItemCatalogue
from ranker.ctr.config import CTRConfig

if TYPE_CHECKING:
    from ranker.ctr.models import CTRModule
    from ranker.ctr.serving import CTRModel

logger = logging.getLogger(__name__)

CONFIG_FILE = "quarry_ctr.json"
CATALOGUE_FILE = "catalogue.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 1


def weights_version(path: Path) -> str:
    """The version of a weights file: a hash of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def save_model(
    module: CTRModule,
    catalogue: ItemCatalogue,
    path: Path,
    *,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Write ``module`` and ``catalogue`` as a model directory; returns the version.

    The config file is written last (to a temporary name, then renamed), so a directory with
    a config is complete.
    """
    from safetensors.torch import save_file

    if len(catalogue) != module.config.n_items:
        raise InvalidRequest(
            f"The catalogue has {len(catalogue)} items, the model {module.config.n_items}"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).unlink(missing_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"kind": module.config.kind})
    catalogue.save(path / CATALOGUE_FILE)
    version = weights_version(path / WEIGHTS_FILE)
    record = {
        "format": FORMAT,
        "kind": module.config.kind,
        "config": module.config.to_dict(),
        "version": version,
        "catalogue": {
            "file": CATALOGUE_FILE,
            "items": len(catalogue),
            "categories": catalogue.n_categories,
        },
        "metadata": metadata or {},
    }
    tmp = path / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path / CONFIG_FILE)
    return version


def read_model_config(path: Path) -> dict[str, Any]:
    """The ``quarry_ctr.json`` of a model directory (no torch)."""
    path = Path(path)
    config = path / CONFIG_FILE
    if not config.is_file():
        raise ModelNotAvailable(
            f"{path} is not a CTR model directory (no {CONFIG_FILE}); train one with "
            "`quarry train ctr`",
            details={"model": str(path)},
        )
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"{config} is not readable JSON: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InvalidRequest(f"{config}: unsupported CTR model format {record.get('format')!r}")
    return record


def load_model(path: str | Path, *, device: str = "cpu", name: str | None = None) -> CTRModel:
    """Load a model directory written by :func:`save_model` (``quarry train ctr``) as a
    serving model. ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    from safetensors.torch import load_file

    from embedder.base import resolve_device
    from ranker.ctr.registry import build_module
    from ranker.ctr.serving import CTRModel

    path = Path(path)
    record = read_model_config(path)
    config = CTRConfig.from_dict(dict(record["config"]))
    catalogue = ItemCatalogue.load(path / record["catalogue"]["file"])
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelNotAvailable(f"{path} has no {WEIGHTS_FILE}", details={"model": str(path)})
    module = build_module(config)
    try:
        module.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise InvalidRequest(f"{weights} does not fit its config: {exc}") from None
    version = weights_version(weights)
    if version != record.get("version"):
        logger.warning("%s: weights changed since saving; version is now %s", path, version)
    return CTRModel(
        module,
        catalogue,
        name=name or str(path),
        version=version,
        device=resolve_device(device),
    )
