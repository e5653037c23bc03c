"""The `keyplane` command, a package whose commands are plain functions registered in one place.

- keyplane.cli.registry: the registry. It builds the Typer app and its groups and registers every command,
  those of this package and those the features keep beside their code (``keyplane.<feature>.cli``).
- keyplane.cli.common: what the commands share (settings, the store, the consoles, tables, JSON).
- keyplane.cli.init / keys / projects / users / doctor: the core commands.

Imports flow one way: registry -> command modules -> common. Importing this package itself is light: the Typer
app is built on first use (``from keyplane.cli import app``, the console script's :func:`main`), and
:func:`app_from_env` (the ASGI factory of keyplane.serving, kept at this path for ASGI servers) never
brings in typer, click or rich.
"""

from __future__ import annotations

from typing import Any

from keyplane.serving import app_from_env

__all__ = ["app", "app_from_env", "main"]


def main() -> None:
    """The console script `keyplane`."""
    from keyplane.cli.registry import app

    app()


def __getattr__(name: str) -> Any:
    """``app`` (the Typer app of keyplane.cli.registry) and the shared helpers, imported when first asked for."""
    if name == "app":
        from keyplane.cli.registry import app

        return app
    from keyplane.cli import common

    try:
        return getattr(common, name)
    except AttributeError:
        raise AttributeError(f"module 'keyplane.cli' has no attribute {name!r}") from None
