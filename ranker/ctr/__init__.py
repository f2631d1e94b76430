"""Long-sequence CTR models (DIN, SDIM, DARE, TWIN) and behaviour-sequence encoding.

Importing this package loads no model and does not import torch.
"""

from __future__ import annotations

from ranker.ctr.base import Catalogue, CTRServingModel, UserState

__all__ = ["CTRServingModel", "Catalogue", "UserState"]
