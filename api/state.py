"""Everything the API process holds for its lifetime, built in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from api.metrics import Metrics
from service import Container
from service.jobs import Housekeeper


@dataclass
class AppState:
    container: Container
    metrics: Metrics
    housekeeper: Housekeeper | None = None
