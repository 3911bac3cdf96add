"""`faregate keys create|list|revoke`: manage API keys in the configured store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from faregate.accounts.keys import KeyStore
from faregate.cli.common import ConfigOption, load_or_exit
from faregate.config import Settings
from faregate.errors import ConfigError, InvalidRequest
from faregate.store import StoreUnavailable, open_store

T = TypeVar("T")


def utc_text(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _run(settings: Settings, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Run one key operation on the configured store, turning expected failures into exit codes."""

    async def go() -> T:
        store = await open_store(settings.store)
        try:
            return await action(KeyStore(store))
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except InvalidRequest as exc:
        typer.echo(f"faregate: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except StoreUnavailable as exc:
        typer.echo(f"faregate: store unavailable: {exc}", err=True)
        raise typer.Exit(1) from None
    except ConfigError as exc:
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("create")
    def create(
        name: Annotated[str, typer.Option("--name", "-n", help="A label for the key (who or what uses it).")],
        premium: Annotated[bool, typer.Option("--premium", help="A premium key (prefix fg_pro_).")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Create a key and print it. The raw key is shown only this once."""
        key, raw = _run(load_or_exit(config), lambda keys: keys.create(name, premium=premium))
        tier = "premium key" if key.premium else "key"
        typer.echo(f"Created {tier} {key.id} ({key.name}). Store it now; it cannot be shown again:")
        # Plain echo, on its own line: rich would wrap it at the terminal width.
        typer.echo(raw)

    @keys_app.command("list")
    def list_keys(
        active: Annotated[bool, typer.Option("--active", help="Hide revoked keys.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """List keys (never their raw values)."""
        listed = _run(load_or_exit(config), lambda keys: keys.list(include_revoked=not active))
        if not listed:
            typer.echo("No keys. Create one with: faregate keys create --name NAME")
            return
        table = Table("id", "name", "prefix", "created (UTC)", "revoked (UTC)")
        for key in listed:
            # Text(): a name is user input, not rich markup.
            table.add_row(
                key.id, Text(key.name), key.prefix, utc_text(key.created_at), utc_text(key.revoked_at)
            )
        Console().print(table)

    @keys_app.command("revoke")
    def revoke(
        id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The key's id, or its name.")],
        config: ConfigOption = None,
    ) -> None:
        """Revoke a key. A running gateway stops accepting it within auth.key_cache_ttl_s."""
        if not _run(load_or_exit(config), lambda keys: keys.revoke(id_or_name)):
            typer.echo(f"faregate: no active key with id or name {id_or_name!r}", err=True)
            raise typer.Exit(1)
        typer.echo(f"Revoked {id_or_name}.")
