"""Command-line interface (`fedmarket ...`)."""

from .main import app, main

__all__ = ["app", "main"]
