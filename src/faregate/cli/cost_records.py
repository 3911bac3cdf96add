"""`faregate cost --from-records`: what recorded traffic cost, and what it would have cost on other models."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import typer
from rich.console import Console

from faregate.cli.usage import parse_time
from faregate.config import Settings
from faregate.evals.recorded import read_traffic, render
from faregate.types import Price


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cost_from_records(settings: Settings, targets: dict[str, Price], since: str, until: str) -> None:
    if settings.store.postgres_url is not None:
        # The query reads SQLite's file directly; PostgreSQL deployments have `faregate usage`.
        typer.echo("faregate: --from-records reads the SQLite store; this config uses PostgreSQL", err=True)
        raise typer.Exit(2)
    now = time.time()
    start, end = parse_time(since, now), parse_time(until, now)
    try:
        traffic = asyncio.run(read_traffic(settings.store.path, start, end))
    except FileNotFoundError as exc:
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(2) from None
    console = Console(width=max(Console().width, 150))
    if not traffic:
        console.print(f"no requests recorded from {_when(start)} to {_when(end)}")
        return
    title = f"Recorded traffic {_when(start)} → {_when(end)}: actual cost, and the same tokens on each model"
    console.print(render(traffic, targets, title))
    if targets:
        console.print(
            "Each 'on MODEL' column prices the same billed tokens at that model's list price;"
            " cache hits stay free on any model.",
            highlight=False,
        )
