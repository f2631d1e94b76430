"""Long-sequence CTR models (DIN, SDIM, DARE, TWIN) and behaviour-sequence encoding.

- data: :func:`read_log` (generic CSV/TSV/Parquet log, columns as options), :func:`read_movielens`,
  :func:`build_samples` (chronological samples, time-based split, no leakage);
- models: one registry (:data:`MODELS`, :func:`model_spec`), torch modules in
  :mod:`ranker.ctr.models`, the serving contract in :mod:`ranker.ctr.base`;
- training and metrics: :func:`train_seeds`, :func:`auc`, :func:`gauc`, :func:`logloss`;
- model directories: :func:`save_model`, :func:`load_model`.

Importing this package loads no model and does not import torch: the names below resolve
on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.lazy import lazy_exports
from ranker.ctr.base import Catalogue, CTRServingModel, UserState
from ranker.ctr.catalogue import ItemCatalogue
from ranker.ctr.config import CTRConfig
from ranker.ctr.registry import MODELS, ModelSpec, make_config, model_spec, register_model

if TYPE_CHECKING:
    from ranker.ctr.logs import (
        MOVIELENS_FORMAT,
        InteractionLog,
        LogFormat,
        read_log,
        read_movielens,
    )
    from ranker.ctr.metrics import auc, ctr_metrics, gauc, logloss, per_user_auc
    from ranker.ctr.persistence import load_model, read_model_config, save_model
    from ranker.ctr.samples import (
        CTRData,
        LeakageError,
        SampleOptions,
        SampleSet,
        build_samples,
        check_no_leakage,
    )
    from ranker.ctr.serving import CTRModel
    from ranker.ctr.trainer import TrainOptions, train_model, train_seeds

_EXPORTS: dict[str, str] = {
    "MOVIELENS_FORMAT": "ranker.ctr.logs",
    "InteractionLog": "ranker.ctr.logs",
    "LogFormat": "ranker.ctr.logs",
    "read_log": "ranker.ctr.logs",
    "read_movielens": "ranker.ctr.logs",
    "auc": "ranker.ctr.metrics",
    "ctr_metrics": "ranker.ctr.metrics",
    "gauc": "ranker.ctr.metrics",
    "logloss": "ranker.ctr.metrics",
    "per_user_auc": "ranker.ctr.metrics",
    "load_model": "ranker.ctr.persistence",
    "read_model_config": "ranker.ctr.persistence",
    "save_model": "ranker.ctr.persistence",
    "CTRData": "ranker.ctr.samples",
    "LeakageError": "ranker.ctr.samples",
    "SampleOptions": "ranker.ctr.samples",
    "SampleSet": "ranker.ctr.samples",
    "build_samples": "ranker.ctr.samples",
    "check_no_leakage": "ranker.ctr.samples",
    "CTRModel": "ranker.ctr.serving",
    "TrainOptions": "ranker.ctr.trainer",
    "train_model": "ranker.ctr.trainer",
    "train_seeds": "ranker.ctr.trainer",
}

__all__ = [
    "MODELS",
    "MOVIELENS_FORMAT",
    "CTRConfig",
    "CTRData",
    "CTRModel",
    "CTRServingModel",
    "Catalogue",
    "InteractionLog",
    "ItemCatalogue",
    "LeakageError",
    "LogFormat",
    "ModelSpec",
    "SampleOptions",
    "SampleSet",
    "TrainOptions",
    "UserState",
    "auc",
    "build_samples",
    "check_no_leakage",
    "ctr_metrics",
    "gauc",
    "load_model",
    "logloss",
    "make_config",
    "model_spec",
    "per_user_auc",
    "read_log",
    "read_model_config",
    "read_movielens",
    "register_model",
    "save_model",
    "train_model",
    "train_seeds",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
