"""`faregate cost --from-records`: what recorded traffic cost, and what it would have cost on other models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import typer

from faregate.cli.common import print_table, require_store
from faregate.cli.cost_records_table import render
from faregate.cli.usage import parse_span
from faregate.config import Settings
from faregate.evals.costs.projection import MoneyText
from faregate.store.analytics_rows import Slice, Traffic
from faregate.store.backends import open_records_reader
from faregate.store.protocols import StoreUnavailable
from faregate.types import Price


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _read(settings: Settings, since: float, until: float) -> list[Traffic]:
    """Per-model traffic from the store the gateway writes, read-only (never migrated, never locked)."""
    reader = await open_records_reader(settings)
    try:
        return await reader.traffic(Slice(since, until), "model")
    finally:
        await reader.close()


def cost_from_records(
    settings: Settings,
    targets: dict[str, Price],
    since: str,
    until: str,
    money: MoneyText,
    embeds: Callable[[str], bool] = lambda _: False,
) -> None:
    now = time.time()
    start, end = parse_span(since, until, now)
    require_store(settings)
    try:
        traffic = asyncio.run(_read(settings, start, end))
    except StoreUnavailable as exc:
        # A runtime failure (exit 1, as in `faregate usage`), not a usage error.
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(1) from None
    if not traffic:
        typer.echo(f"no requests recorded from {_when(start)} to {_when(end)}")
        return
    title = f"Recorded traffic {_when(start)} → {_when(end)}: actual cost, and the same tokens on each model"
    console = print_table(render(traffic, targets, title, money, embeds), at_least=150)
    if targets:
        console.print(
            "Each 'on MODEL' column prices the same billed tokens at that model's list price;"
            " cache hits stay free on any model.",
            highlight=False,
        )
