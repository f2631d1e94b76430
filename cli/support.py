"""Helpers shared by every ``quarry`` sub-command module (kept apart from ``cli.main``, which
imports those modules to register them)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer

from core.errors import QuarryError
from core.logging import configure_logging
from core.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn domain errors into one red line and exit code 1, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except QuarryError as exc:
            typer.secho(f"error ({exc.code}): {exc.message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def setup_cli() -> Settings:
    """Settings plus logging, for a command about to do real work."""
    settings = get_settings()
    configure_logging(settings.log_level, json_logs=settings.log_json)
    return settings
