"""The `fedmarket` command line: every command registers itself on one typer app; `main` runs
it and turns every expected error into one line on stderr and a non-zero exit, never a traceback."""

from . import account, broker, dashboard, deploy, localnet, models, ops, roles  # noqa: F401 - each module registers its commands
from . import flower as _flower  # noqa: F401 - Flower commands (flwr imported only when they run)
from . import main as _commands  # noqa: F401 - the core commands register themselves
from .app import app, run

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedmarket` command."""
    return run(argv)
