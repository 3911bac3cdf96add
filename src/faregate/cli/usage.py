"""`faregate usage`: spend and request counts from the request records, per model, key, provider, route
or wire (chat, messages, responses, embeddings)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from faregate.cli.common import ConfigOption, load_or_exit, require_store
from faregate.config import Settings
from faregate.errors import ConfigError
from faregate.evals.costs.projection import MoneyText, display_usd, exact_usd
from faregate.store.analytics import EVERY_GROUP
from faregate.store.analytics_rows import Dimension, GroupTotals, Slice
from faregate.store.backends import open_backends
from faregate.store.protocols import StoreUnavailable

_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"(\d+(?:\.\d+)?)([mhdw])")


class GroupChoice(StrEnum):
    """--by values (typer wants an Enum for choices); a test keeps them equal to the analytics'
    DIMENSIONS."""

    model = "model"
    provider = "provider"
    key = "key"
    route = "route"
    wire = "wire"

    @property
    def group_by(self) -> Dimension:
        return self.value


def parse_time(text: str, now: float) -> float:
    """'24h', '7d', '30m', '2w' (ago), 'now', or an ISO date/time (UTC unless it names a zone)."""
    text = text.strip()
    if text == "now":
        return now
    match = _AGO.fullmatch(text)
    if match:
        ago = now - float(match[1]) * _UNIT_SECONDS[match[2]]
        # Before year 1 (or infinitely far: a float of 400 digits) no date can name it, and the
        # report's title overflowed with a traceback.
        try:
            datetime.fromtimestamp(ago, UTC)
        except (OverflowError, ValueError, OSError):
            raise typer.BadParameter(f"{text!r} is too far back (before the year 1)") from None
        return ago
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration like 24h, 7d, 30m, 2w nor an ISO date like 2025-01-31"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_span(since: str, until: str, now: float) -> tuple[float, float]:
    """--since and --until as a start before an end: the other way round is a mistake to say,
    not an empty report."""
    start, end = parse_time(since, now), parse_time(until, now)
    if start >= end:
        raise typer.BadParameter("--since must be before --until", param_hint="--since")
    return start, end


@dataclass(slots=True, frozen=True)
class UsageRow:
    """One group's line: the dashboard's totals (Analytics.breakdown), errors being every refusal
    and failure (HTTP status >= 400)."""

    group: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal

    @classmethod
    def of(cls, group: GroupTotals) -> UsageRow:
        t = group.totals
        return cls(
            group.group, t.requests, t.errors + t.client_errors, t.prompt_tokens, t.completion_tokens, t.cost
        )


@dataclass(slots=True)
class UsageReport:
    rows: list[UsageRow]
    key_names: dict[str, str]


async def _report(settings: Settings, since: float, until: float, group_by: Dimension) -> UsageReport:
    backends = await open_backends(settings, accounts=False)
    try:
        groups = await backends.analytics.analytics.breakdown(Slice(since, until), group_by, EVERY_GROUP)
        names = (
            {row.id: row.name for row in await backends.store.list_keys(include_revoked=True)}
            if group_by == "key"
            else {}
        )
    finally:
        await backends.close()
    return UsageReport([UsageRow.of(g) for g in groups], names)


def _label(row: UsageRow, group_by: Dimension, key_names: dict[str, str]) -> Text:
    if row.group is None:
        return Text("(no key)" if group_by == "key" else "(none)", style="dim")
    if group_by == "key" and row.group in key_names:
        return Text(f"{key_names[row.group]} ({row.group})")
    # Text(): names come from requests and config, not rich markup.
    return Text(row.group)


def _numbers(
    requests: int, errors: int, prompt: int, completion: int, cost: Decimal, money: MoneyText
) -> list[str]:
    return [f"{requests:,}", f"{errors:,}", f"{prompt:,}", f"{completion:,}", money(cost)]


def render(
    report: UsageReport, group_by: Dimension, since: float, until: float, money: MoneyText = display_usd
) -> Table:
    def when(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")

    rows = [
        (
            _label(r, group_by, report.key_names),
            _numbers(r.requests, r.errors, r.prompt_tokens, r.completion_tokens, r.cost, money),
        )
        for r in report.rows
    ]
    total = _numbers(
        sum(r.requests for r in report.rows),
        sum(r.errors for r in report.rows),
        sum(r.prompt_tokens for r in report.rows),
        sum(r.completion_tokens for r in report.rows),
        sum((r.cost for r in report.rows), Decimal(0)),
        money,
    )
    table = Table(title=f"Usage by {group_by}, {when(since)} to {when(until)} UTC")
    # On a narrow terminal the names fold onto more lines; numbers and money keep their full width.
    table.add_column(group_by, overflow="fold", min_width=12)
    headings = ("requests", "errors", "prompt\ntokens", "completion\ntokens", "cost (USD)")
    for i, heading in enumerate(headings):
        cells = [total[i], *(numbers[i] for _, numbers in rows), *heading.split("\n")]
        widest = max(len(cell) for cell in cells)
        table.add_column(heading, justify="right", no_wrap=True, min_width=widest)
    for label, numbers in rows:
        table.add_row(label, *numbers)
    table.add_section()
    table.add_row("total", *total, style="bold")
    return table


def min_width(table: Table) -> int:
    """Width with every column at its min_width: one space of padding each side, one border each."""
    return sum((column.min_width or 0) + 3 for column in table.columns) + 1


def register(app: typer.Typer) -> None:
    @app.command("usage")
    def usage(
        since: Annotated[
            str, typer.Option(help="Start: a duration ago (24h, 7d, 30m, 2w) or an ISO date/time (UTC).")
        ] = "24h",
        until: Annotated[str, typer.Option(help="End (exclusive), same forms as --since.")] = "now",
        by: Annotated[GroupChoice, typer.Option("--by", help="Group by.")] = GroupChoice.model,
        exact: Annotated[
            bool, typer.Option("--exact", help="Print money with every digit (default: rounded for reading).")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Spend, requests, errors (HTTP status >= 400) and tokens from the request records."""
        group_by = by.group_by
        now = time.time()
        start, end = parse_span(since, until, now)
        settings = load_or_exit(config)
        require_store(settings)
        try:
            report = asyncio.run(_report(settings, start, end, group_by))
        except StoreUnavailable as exc:
            typer.echo(f"faregate: store unavailable: {exc}", err=True)
            raise typer.Exit(1) from None
        except ConfigError as exc:
            typer.echo(f"faregate: {exc}", err=True)
            raise typer.Exit(2) from None
        if not report.rows:
            typer.echo(f"No requests recorded between {since} and {until}.")
            return
        table = render(report, group_by, start, end, exact_usd if exact else display_usd)
        # On a terminal too narrow for the numbers, print wider and let it wrap lines rather than
        # cut an amount.
        Console(width=max(Console().width, min_width(table))).print(table)
