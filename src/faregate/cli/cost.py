"""`faregate cost`: projected monthly cost per model, for a split, and per provider, at catalog prices."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from faregate.catalog import Model
from faregate.cli.common import ConfigOption, ModelLookup, load_or_exit
from faregate.evals.costs.projection import (
    Line,
    MoneyText,
    Workload,
    display_usd,
    exact_usd,
    format_share,
    parse_share,
    parse_split,
    project,
    split_cost,
)


def _lookup(catalog: ModelLookup, name: str) -> Model:
    model = catalog.get(name)
    if model is None:
        hint = catalog.suggest(name)
        typer.echo(
            f"faregate: unknown model {name!r}" + (f"; did you mean {', '.join(hint)}?" if hint else ""),
            err=True,
        )
        raise typer.Exit(2)
    return model


def _saving_cells(line: Line, baseline: Line, money: MoneyText) -> list[str]:
    saving = line.saving_against(baseline.monthly)
    if line is baseline:
        return ["baseline", ""]
    share = "" if saving.share is None else format_share(saving.share.quantize(Decimal("0.001")))
    return [money(saving.amount), share]


def _table(title: str, first: str, lines: list[tuple[str, Line]], baseline: Line, money: MoneyText) -> Table:
    table = Table(title=title)
    table.add_column(first)
    # Text(), here and for the rows' labels: model and provider names are not rich markup.
    for column in ("in $/1M", "out $/1M", "per request", "per month", f"saving vs {baseline.label}", "saved"):
        table.add_column(Text(column), justify="right")
    for label, line in lines:
        price = line.price
        table.add_row(
            Text(label),
            "" if price is None else money(price.input),
            "" if price is None else money(price.output),
            "" if line.per_request is None else money(line.per_request),
            money(line.monthly),
            *_saving_cells(line, baseline, money),
        )
    return table


def _describe(workload: Workload) -> str:
    requests = "request" if workload.requests_per_month == 1 else "requests"
    text = (
        f"{workload.requests_per_month:,} {requests}/month × ({workload.input_tokens:,} in + "
        f"{workload.output_tokens:,} out) tokens"
    )
    if workload.cache_hit_rate:
        billed = workload.billed_requests.normalize()
        text += f", {format_share(workload.cache_hit_rate)} cache hits → {billed:,f} billed"
    return text


def register(app: typer.Typer) -> None:
    @app.command()
    def cost(
        requests_per_month: Annotated[
            int | None, typer.Option("--requests-per-month", "-n", help="Requests a month.")
        ] = None,
        input_tokens: Annotated[
            int | None, typer.Option("--input-tokens", "-i", help="Input tokens per request.")
        ] = None,
        output_tokens: Annotated[
            int | None, typer.Option("--output-tokens", "-o", help="Output tokens per request.")
        ] = None,
        model: Annotated[
            list[str] | None,
            typer.Option(
                "--model", "-m", help="A model to price (repeatable; default: every curated model)."
            ),
        ] = None,
        cache_hit_rate: Annotated[
            str, typer.Option(help="Share of requests answered from the gateway cache, free (0.3 or 30%).")
        ] = "0",
        split: Annotated[
            str | None, typer.Option(help="A routing split to price, e.g. gpt-4o=0.2,deepseek-v4-flash=0.8.")
        ] = None,
        baseline: Annotated[
            str | None, typer.Option(help="Model to compare against (default: baseline_model in the config).")
        ] = None,
        compare_providers: Annotated[
            str | None, typer.Option(help="Also price this model at each provider that sells it.")
        ] = None,
        from_records: Annotated[
            bool, typer.Option(help="Price the recorded traffic instead: what it cost, and on each --model.")
        ] = False,
        since: Annotated[
            str, typer.Option(help="With --from-records: start (7d, 24h, or an ISO date).")
        ] = "7d",
        until: Annotated[str, typer.Option(help="With --from-records: end.")] = "now",
        exact: Annotated[
            bool, typer.Option("--exact", help="Print money with every digit (default: rounded for reading).")
        ] = False,
        config: ConfigOption = None,
    ) -> None:
        """Project the monthly cost of a workload per model, with the saving against a baseline.

        Exact decimal arithmetic at catalog list prices (USD per 1M tokens); the table shows cents
        from a dollar up and four significant digits below.
        """
        settings = load_or_exit(config)
        money = exact_usd if exact else display_usd
        if from_records:
            # Only this path reads the store: its modules load only here.
            from faregate.cli.cost_records import cost_from_records

            catalog = ModelLookup(settings)
            targets = {m.name: m.list_price for m in (_lookup(catalog, n) for n in model or [])}

            def embeds(name: str) -> bool:
                found = catalog.get(name)
                return found is not None and found.embeds

            cost_from_records(settings, targets, since, until, money, embeds)
            return
        if requests_per_month is None or input_tokens is None or output_tokens is None:
            raise typer.BadParameter(
                "give --requests-per-month, --input-tokens and --output-tokens (or --from-records)"
            )
        try:
            workload = Workload(requests_per_month, input_tokens, output_tokens, parse_share(cache_hit_rate))
            shares = parse_split(split) if split else None
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        catalog = ModelLookup(settings)
        base = _lookup(catalog, baseline or settings.baseline_model)
        if model:
            names = model
        elif shares:
            names = list(shares)
        else:
            # Chat models only: an embedding model is no alternative for a chat workload.
            names = [m.name for m in catalog.curated.all() if m.curated and not m.embeds]
        models = list({m.name: m for m in (_lookup(catalog, n) for n in names)}.values())
        base_line = project(base.name, base.list_price, workload)
        others = [(m.name, project(m.name, m.list_price, workload)) for m in models if m is not base]
        rows = [(base.name, base_line), *sorted(others, key=lambda row: row[1].monthly)]
        if shares:
            split_models = {name: _lookup(catalog, name) for name in shares}
            prices = {name: m.list_price for name, m in split_models.items()}
            label = " + ".join(f"{split_models[n].name} {format_share(s)}" for n, s in shares.items())
            rows.append((f"split: {label}", Line("split", split_cost(prices, shares, workload), None)))
        console = Console(width=max(Console().width, 160))
        console.print(_table(f"Monthly cost: {_describe(workload)}", "model", rows, base_line, money))
        if compare_providers:
            target = _lookup(catalog, compare_providers)
            list_line = project("list price", target.list_price, workload)
            offers = sorted(target.offers, key=lambda o: project(o.provider, o.price, workload).monthly)
            lines = [(f"{target.name} list price", list_line)]
            for o in offers:
                name = f"{o.provider}{'' if o.available else ' (off)'} · {o.upstream_model}"
                lines.append((name, project(o.provider, o.price, workload)))
                if o.peak is not None:
                    # The hours its provider bills more: a month of requests in them costs this.
                    hours = " ".join(o.peak.hours)
                    lines.append((f"{name} at {hours} UTC", project(o.provider, o.peak.price, workload)))
            if not target.offers:
                typer.echo(f"{target.name}: no provider offers in the catalog")
            console.print(
                _table(f"{target.name} by provider", "provider · upstream name", lines, list_line, money)
            )
