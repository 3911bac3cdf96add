"""`faregate credits add|ledger|audit|instances|release-instance`: top up a key, read its ledger,
check every balance, see and release the reservations of serving instances."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from faregate.accounts.backend import AuditReport
from faregate.accounts.money import parse_usd, usd_text
from faregate.accounts.service import AccountsService, KeyView
from faregate.cli.common import ConfigOption, folding_column, load_or_exit, print_table, whole_column
from faregate.cli.groups import command_group
from faregate.cli.keys import run_accounts, utc_text
from faregate.store.holds import InstanceRow
from faregate.store.protocols import LedgerRow

KeyArgument = Annotated[str, typer.Argument(metavar="KEY", help="The key's id, or its name.")]


def _count(n: int, thing: str) -> str:
    return f"{n:,} {thing}" + ("" if n == 1 else "s")


def register(app: typer.Typer) -> None:
    credits_app = command_group(help="Credits: top up keys, read the ledger, audit balances.")
    app.add_typer(credits_app, name="credits")

    @credits_app.command("add")
    def add(
        key: KeyArgument,
        amount: Annotated[
            str, typer.Argument(metavar="USD", help="Credits to add, in USD (e.g. 25 or 0.50).")
        ],
        note: Annotated[str | None, typer.Option("--note", help="Why (kept on the ledger row).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Add credits to a key. Credits never expire."""

        async def action(service: AccountsService) -> KeyView:
            nano = parse_usd(amount, "USD")
            return await service.add_credits(await service.resolve(key), nano, note)

        view = run_accounts(load_or_exit(config), action)
        typer.echo(
            f"Added ${usd_text(parse_usd(amount, 'USD'))} to {view.key.id} ({view.key.name}); "
            f"balance ${usd_text(view.balance_nano)}."
        )

    @credits_app.command("ledger")
    def ledger(
        key: KeyArgument,
        limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Newest rows to show.")] = 50,
        config: ConfigOption = None,
    ) -> None:
        """A key's balance changes, newest first."""

        async def action(service: AccountsService) -> tuple[str, list[LedgerRow]]:
            key_id = await service.resolve(key)
            return key_id, await service.ledger(key_id, limit)

        key_id, rows = run_accounts(load_or_exit(config), action)
        if not rows:
            typer.echo(f"No ledger rows for {key if key == key_id else f'{key} ({key_id})'}.")
            return
        cells = [
            (
                utc_text(row.created_at),
                row.kind,
                usd_text(row.amount_nano),
                "" if row.cost_nano is None else usd_text(row.cost_nano),
                row.request_id or "",
            )
            for row in rows
        ]
        table = Table()
        for i, heading in enumerate(("time (UTC)", "kind", "amount (USD)", "cost (USD)", "request")):
            money = heading.endswith("(USD)")
            whole_column(table, heading, [row[i] for row in cells], justify="right" if money else "left")
        folding_column(table, "note", [row.note or "" for row in rows])
        for row, texts in zip(rows, cells, strict=True):
            table.add_row(*texts, Text(row.note or ""))
        print_table(table)

    @credits_app.command("instances")
    def instances(config: ConfigOption = None) -> None:
        """Serving processes that hold reservations: their leases and holds."""
        rows: list[InstanceRow] = run_accounts(load_or_exit(config), lambda service: service.instances())
        if not rows:
            typer.echo("No serving instance is registered, and no reservation is held.")
            return
        now = time.time()
        cells = [
            (
                row.instance_id,
                "yes" if row.alive(now) else "no",
                utc_text(row.lease_until) if row.lease_until else "lapsed",
                str(row.holds),
            )
            for row in rows
        ]
        table = Table()
        for i, heading in enumerate(("instance", "alive", "lease until (UTC)", "holds")):
            whole_column(table, heading, [row[i] for row in cells], justify="right" if i == 3 else "left")
        folding_column(table, "host", [row.host for row in rows])
        whole_column(table, "pid", [str(row.pid or "") for row in rows], justify="right")
        whole_column(
            table, "started (UTC)", [utc_text(row.started_at) if row.started_at else "" for row in rows]
        )
        for row, texts in zip(rows, cells, strict=True):
            table.add_row(
                *texts,
                Text(row.host),
                str(row.pid or ""),
                utc_text(row.started_at) if row.started_at else "",
            )
        print_table(table)

    @credits_app.command("release-instance")
    def release_instance(
        instance: Annotated[str, typer.Argument(metavar="INSTANCE", help="An id from `credits instances`.")],
        force: Annotated[
            bool, typer.Option("--force", help="Even if its lease is live (its requests may be running).")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Give back a dead instance's reservations now (the sweeper does within its lease)."""
        released: int = run_accounts(
            load_or_exit(config), lambda service: service.release_instance(instance, force)
        )
        typer.echo(f"Released {released} reservation(s) of {instance}.")

    @credits_app.command("audit")
    def audit(config: ConfigOption = None) -> None:
        """Recompute every balance from its ledger rows and report any difference (exit 1 if any)."""
        report: AuditReport = run_accounts(load_or_exit(config), lambda service: service.audit())
        typer.echo(f"Audited {_count(report.accounts, 'account')}, {_count(report.entries, 'ledger row')}.")
        if report.clean:
            typer.echo("Every balance equals the sum of its ledger rows; no reservation is dangling.")
            return
        for problem in report.problems:
            typer.echo(f"  {problem}")
        typer.echo(f"{_count(len(report.problems), 'problem')} found.", err=True)
        raise typer.Exit(1)
