"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faregate.config import Settings, config_path, load_settings
from faregate.errors import ConfigError

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Config file (default: $FAREGATE_CONFIG, then ./faregate.yaml)."),
]


def load_or_exit(config: str | None) -> Settings:
    try:
        return load_settings(config_path(config))
    except ConfigError as exc:
        typer.echo(f"faregate: bad configuration: {exc}", err=True)
        raise typer.Exit(2) from None


# The recorded RouteLLM outcomes ship in the repository's data/ folder, not in the installed
# package: this default resolves only when a command runs from the root of a checkout.
CHECKOUT_DATA = Path("data/routellm")


def require_data(path: Path, option: str) -> Path:
    """The data path, or one clear line saying what to pass when it is absent."""
    if not path.exists():
        hint = (
            " (the recorded outcomes ship in the Faregate repository's data/routellm: run from a "
            "checkout's root)"
            if path in (CHECKOUT_DATA, CHECKOUT_DATA / "mmlu", CHECKOUT_DATA / "gsm8k_responses.csv")
            else ""
        )
        typer.echo(f"faregate: {path} not found: pass {option} PATH{hint}", err=True)
        raise typer.Exit(2)
    return path
