"""Quarry's HTTP API (FastAPI)."""

from api.app import create_app

__all__ = ["create_app"]
