"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from faregate.catalog import Catalog, Model, build_catalog
from faregate.config import CatalogSettings, Settings, config_path, load_settings
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


def require_store(settings: Settings) -> None:
    """For a command that reads or changes what a gateway stored: the embedded store must be
    there already. Opening one creates it, so from the wrong directory (or with the wrong
    --config) such a command made an empty store and reported on it ("No requests recorded",
    a clean audit) instead of saying it looked in the wrong place. PostgreSQL is never created."""
    if settings.store.postgres_url is not None:
        return
    # Imported here: the store module loads aiosqlite, which `faregate models` never needs.
    from faregate.store.sqlite.store import DB_FILENAME

    database = Path(settings.store.path) / DB_FILENAME
    if not database.exists():
        typer.echo(
            f"faregate: no store at {database} (store.path): no gateway has run with this config "
            "here; run from the gateway's directory or pass --config",
            err=True,
        )
        raise typer.Exit(1)


def whole_column(
    table: Table, heading: str, cells: list[str], *, justify: Literal["left", "right"] = "left"
) -> None:
    """A column whose cells are printed whole, on one line: ids one copies to act on, amounts,
    times. Rich cuts a long word to fit the terminal ("key_bda641…", "1234569.6…")."""
    widest = max(len(text) for text in [*heading.split("\n"), *cells])
    # Text(): a heading may hold a name (a model's), which is not rich markup.
    table.add_column(Text(heading), no_wrap=True, min_width=widest, justify=justify)


def folding_column(table: Table, heading: str, cells: list[str]) -> None:
    """A column of free text (a name, a note): whole up to 32 characters, folded onto more lines
    beyond that or when the terminal leaves it less room."""
    widest = max(len(text) for text in [heading, *cells])
    table.add_column(heading, overflow="fold", min_width=min(widest, 32))


def print_table(table: Table, at_least: int = 0) -> Console:
    """At the terminal's width (or `at_least`), or wider when the whole columns need it: lines the
    terminal wraps are better than a cut id or amount. (Each column: its width, a space each side,
    a border.) The console, for what is printed after the table."""
    needed = sum((column.min_width or 0) + 3 for column in table.columns) + 1
    console = Console(width=max(Console().width, at_least, needed))
    console.print(table)
    return console


def strictly_between_0_and_1(value: float) -> float:
    """Callback for a share or a confidence, where 0 and 1 mean nothing (hold out everything or
    nothing; a bound that is certain). Typer's ranges here are closed only."""
    if not 0 < value < 1:
        raise typer.BadParameter(f"{value} is not strictly between 0 and 1")
    return value


def above_0_up_to_1(value: float) -> float:
    """Callback for a share that may be everything but not nothing (a quality target, a sampling
    rate): 0 keeps or samples nothing."""
    if not 0 < value <= 1:
        raise typer.BadParameter(f"{value} is not above 0 and at most 1")
    return value


def a_confidence(value: float) -> float:
    """Callback for the confidence of a bound, in the range the config takes (0.5 to below 1):
    below 0.5 a bound is more likely wrong than right, and 1 is no bound at all."""
    if not 0.5 <= value < 1:
        raise typer.BadParameter(f"{value} is not a confidence from 0.5 to below 1")
    return value


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


def curated_catalog(settings: Settings) -> Catalog:
    """The config's models without the broad catalog (about 1,800 models, a fifth of a second to
    load): enough for every command that names only curated models."""
    curated = msgspec.structs.replace(settings, catalog=CatalogSettings(broad=False))
    return build_catalog(curated)


class ModelLookup:
    """Models by name or alias for a command: curated first, the broad catalog loaded only when a
    name is not curated (and the config allows it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.curated = curated_catalog(settings)
        self._full: Catalog | None = None

    @property
    def full(self) -> Catalog:
        if self._full is None:
            self._full = build_catalog(self.settings) if self.settings.catalog.broad else self.curated
        return self._full

    def get(self, name: str) -> Model | None:
        return self.curated.get(name) or self.full.get(name)

    def suggest(self, name: str) -> list[str]:
        return self.full.suggest(name)
