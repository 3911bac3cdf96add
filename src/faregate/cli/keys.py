"""`faregate keys create|list|show|update|revoke`: manage API keys, their limits and budgets.

Every command goes through accounts.service, the same code as the /admin HTTP API, against
the store the config names (SQLite, or PostgreSQL and Redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from faregate.accounts.keys import KeyStore
from faregate.accounts.money import parse_usd, usd_text
from faregate.accounts.policy import parse_budget_specs, parse_limit
from faregate.accounts.service import AccountsService, KeyView, PolicyChange
from faregate.accounts.setup import build_accounts, new_key_credits_nano
from faregate.cli.common import (
    ConfigOption,
    folding_column,
    load_or_exit,
    print_table,
    require_store,
    whole_column,
)
from faregate.cli.groups import command_group
from faregate.config import Settings
from faregate.errors import ConfigError, FaregateError
from faregate.store.backends import open_backends
from faregate.store.protocols import StoreUnavailable

T = TypeVar("T")

RpmOption = Annotated[
    int | None, typer.Option("--rpm", min=0, help="Requests per minute (0: back to the tier's default).")
]
TpmOption = Annotated[
    int | None, typer.Option("--tpm", min=0, help="Tokens per minute (0: back to the tier's default).")
]
MaxRequestOption = Annotated[
    str | None, typer.Option("--max-request", help="Per-request cap in USD on the worst case (0: no cap).")
]
BudgetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--budget",
        help="PERIOD[:WINDOW]=USD, e.g. day=5, week:rolling=20, month=100 (calendar by default). Repeatable.",
    ),
]


def utc_text(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_accounts(
    settings: Settings, action: Callable[[AccountsService], Awaitable[T]], *, creates_store: bool = False
) -> T:
    """Run one operation on the configured store, turning expected failures into exit codes.
    Only `creates_store` (creating a key) may open a store that is not there yet."""
    if not creates_store:
        require_store(settings)

    async def go() -> T:
        backends = await open_backends(settings, analytics=False)
        try:
            keys = KeyStore(
                backends.store, cache_ttl_s=0, new_key_credits_nano=new_key_credits_nano(settings)
            )
            return await action(build_accounts(settings, backends.accounts, keys).service)
        finally:
            await backends.close()

    try:
        return asyncio.run(go())
    except FaregateError as exc:
        typer.echo(f"faregate: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except StoreUnavailable as exc:
        typer.echo(f"faregate: store unavailable: {exc}", err=True)
        raise typer.Exit(1) from None
    except ConfigError as exc:
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(2) from None


def policy_change(
    rpm: int | None, tpm: int | None, max_request: str | None, budgets: list[str] | None, clear_budgets: bool
) -> PolicyChange:
    change = PolicyChange()
    if rpm is not None:
        change.requests_per_minute = parse_limit(rpm or None, "--rpm")
    if tpm is not None:
        change.tokens_per_minute = parse_limit(tpm or None, "--tpm")
    if max_request is not None:
        nano = parse_usd(max_request, "--max-request", allow_zero=True)
        change.max_request_nano = nano or None
    if clear_budgets:
        change.budgets = ()
    if budgets:
        change.budgets = parse_budget_specs(budgets)
    return change


def _per_minute(limit: int | None) -> str:
    return "unlimited" if limit is None else f"{limit:,}"


def print_view(view: KeyView) -> None:
    key = view.key
    limits = view.limits
    lines = [
        f"{key.id}  {key.name}  {key.prefix}  {'premium' if key.premium else 'standard'}"
        + (f"  REVOKED {utc_text(key.revoked_at)} UTC" if key.revoked else ""),
        f"  balance   ${usd_text(view.balance_nano)}  (in flight: ${usd_text(view.held_nano)} reserved)",
        f"  spend     today ${usd_text(view.today_nano)}, this month ${usd_text(view.month_nano)}",
        f"  limits    {_per_minute(limits.requests_per_minute)} requests/min, "
        f"{_per_minute(limits.tokens_per_minute)} tokens/min, per request "
        + (
            f"${usd_text(view.policy.max_request_nano)}"
            if view.policy.max_request_nano is not None
            else "no cap"
        ),
    ]
    for spend in view.budgets:
        budget = spend.window.budget
        lines.append(
            f"  budget    {budget.label}: ${usd_text(spend.spent_nano)} of ${usd_text(budget.limit_nano)}"
            + (f", resets {utc_text(spend.window.resets_at)} UTC" if spend.window.resets_at else "")
        )
    for line in lines:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    keys_app = command_group(help="Create, list, change and revoke API keys.")
    app.add_typer(keys_app, name="keys")

    @keys_app.command("create")
    def create(
        name: Annotated[str, typer.Option("--name", "-n", help="A label for the key (who or what uses it).")],
        premium: Annotated[bool, typer.Option("--premium", help="A premium key (prefix fg_pro_).")] = False,
        credits: Annotated[
            str | None,
            typer.Option("--credits", help="Starting credits in USD (default: the configured grant)."),
        ] = None,
        rpm: RpmOption = None,
        tpm: TpmOption = None,
        max_request: MaxRequestOption = None,
        budget: BudgetOption = None,
        config: ConfigOption = None,
    ) -> None:
        """Create a key and print it. The raw key is shown only this once."""

        async def action(service: AccountsService) -> tuple[KeyView, str]:
            nano = None if credits is None else parse_usd(credits, "--credits", allow_zero=True)
            change = policy_change(rpm, tpm, max_request, budget, False)
            return await service.create_key(name, premium, nano, change)

        settings = load_or_exit(config)
        view, raw = run_accounts(settings, action, creates_store=True)
        key = view.key
        tier = "premium key" if key.premium else "key"
        # With metering off a balance is not spent: say that the key spends without limit.
        credits_text = f"with ${usd_text(view.balance_nano)} of credits"
        if settings.accounts.enabled:
            funds = credits_text
        elif view.balance_nano:
            funds = f"{credits_text}, not used while metering is off (accounts: {{enabled: true}})"
        else:
            funds = "unmetered: metering is off, so it spends without limit (accounts: {enabled: true})"
        typer.echo(f"Created {tier} {key.id} ({key.name}), {funds}. Store it now; it cannot be shown again:")
        # Plain echo, on its own line: rich would wrap it at the terminal width.
        typer.echo(raw)

    @keys_app.command("list")
    def list_keys(
        active: Annotated[bool, typer.Option("--active", help="Hide revoked keys.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """List keys with their balances (never their raw values)."""
        listed = run_accounts(load_or_exit(config), lambda service: service.list_keys(not active))
        if not listed:
            typer.echo("No keys. Create one with: faregate keys create --name NAME")
            return
        keys = [view.key for view in listed]
        balances = [usd_text(view.balance_nano) for view in listed]
        created = [utc_text(key.created_at) for key in keys]
        revoked = [utc_text(key.revoked_at) for key in keys]
        table = Table()
        whole_column(table, "id", [key.id for key in keys])
        folding_column(table, "name", [key.name for key in keys])
        whole_column(table, "prefix", [key.prefix for key in keys])
        whole_column(table, "balance (USD)", balances, justify="right")
        whole_column(table, "created (UTC)", created)
        whole_column(table, "revoked (UTC)", revoked)
        for key, balance, made, ended in zip(keys, balances, created, revoked, strict=True):
            # Text(): a name is user input, not rich markup.
            table.add_row(key.id, Text(key.name), Text(key.prefix), balance, made, ended)
        print_table(table)

    @keys_app.command("show")
    def show(
        id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The key's id, or its name.")],
        config: ConfigOption = None,
    ) -> None:
        """A key's balance, reservations, spend, limits and budgets."""

        async def action(service: AccountsService) -> KeyView:
            return await service.view(await service.resolve(id_or_name))

        print_view(run_accounts(load_or_exit(config), action))

    @keys_app.command("update")
    def update(
        id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The key's id, or its name.")],
        name: Annotated[str | None, typer.Option("--name", help="A new label.")] = None,
        rpm: RpmOption = None,
        tpm: TpmOption = None,
        max_request: MaxRequestOption = None,
        budget: BudgetOption = None,
        clear_budgets: Annotated[bool, typer.Option("--clear-budgets", help="Remove every budget.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Rename a key or set its limits and budgets (--budget replaces all its budgets)."""

        async def action(service: AccountsService) -> KeyView:
            change = policy_change(rpm, tpm, max_request, budget, clear_budgets)
            return await service.update(await service.resolve(id_or_name), change, name)

        print_view(run_accounts(load_or_exit(config), action))

    @keys_app.command("revoke")
    def revoke(
        id_or_name: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The key's id, or its name.")],
        config: ConfigOption = None,
    ) -> None:
        """Revoke a key. Running gateways refuse it at its next request (see docs/accounts.md)."""

        async def action(service: AccountsService) -> tuple[KeyView | None, bool]:
            view = await service.revoke(id_or_name)
            if view is not None:
                return view, False
            # Revoking a revoked key is done again (a retry finishes a half-done revocation), so
            # it is a success: say when it was revoked.
            key_id = await service.revoked_id(id_or_name)
            return (await service.view(key_id) if key_id is not None else None), True

        view, already = run_accounts(load_or_exit(config), action)
        if view is None:
            typer.echo(f"faregate: no active key with id or name {id_or_name!r}", err=True)
            raise typer.Exit(1)
        if already:
            typer.echo(
                f"{id_or_name} was already revoked at {utc_text(view.key.revoked_at)} UTC; "
                "every gateway was told again."
            )
            return
        typer.echo(f"Revoked {id_or_name}.")
