"""What every `bbt` sub-command shares: logging set-up and one-line errors instead of tracebacks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer

from bbt.errors import BbtError


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with `verbose`) to stderr: rich on a terminal, timestamped lines otherwise."""
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow.store", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user-fixable error as one clear line and exit 2, instead of a traceback."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BbtError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return run
