"""Quarry core: settings, database, ORM models, errors, logging, the CLI."""

from core.errors import QuarryError
from core.settings import Settings, get_settings

__all__ = ["QuarryError", "Settings", "get_settings"]
