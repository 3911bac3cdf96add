"""Options and helpers shared by the command modules."""

from __future__ import annotations

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
