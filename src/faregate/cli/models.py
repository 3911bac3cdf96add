"""`faregate models`: the catalog as a readable table, filterable."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.table import Table
from rich.text import Text

from faregate.catalog import Model, build_catalog
from faregate.cli.common import (
    ConfigOption,
    curated_catalog,
    folding_column,
    load_or_exit,
    print_table,
    whole_column,
)


def _matches(
    model: Model, search: str | None, provider: str | None, modality: str | None, available: bool
) -> bool:
    if available and not model.available:
        return False
    if search and search.lower() not in " ".join((model.name, *model.aliases)).lower():
        return False
    if provider and all(o.provider != provider for o in model.offers):
        return False
    return not (modality and modality not in model.modalities)


def register(app: typer.Typer) -> None:
    @app.command()
    def models(
        config: ConfigOption = None,
        search: Annotated[
            str | None, typer.Argument(help="Show models whose name or alias contains this.")
        ] = None,
        provider: Annotated[str | None, typer.Option(help="Only models this provider offers.")] = None,
        modality: Annotated[
            str | None, typer.Option(help="Only models accepting this input (image, audio…).")
        ] = None,
        available: Annotated[
            bool, typer.Option("--available", help="Only models with an enabled provider.")
        ] = False,
        all_models: Annotated[
            bool, typer.Option("--all", help="Include the broad catalog (thousands of models).")
        ] = False,
    ) -> None:
        """List models with prices (USD per 1M tokens), context, modalities, the settings each refuses,
        the reasoning efforts it takes and its offers."""
        # Imported here: the registry module loads the upstream transport, which a listing never uses.
        from faregate.providers.registry import simulator_active, with_simulator

        settings = load_or_exit(config)
        if simulator_active(settings):
            settings = with_simulator(settings)
        # The broad catalog is listed only with --all or a search: load it only then.
        catalog = build_catalog(settings) if all_models or search else curated_catalog(settings)
        rows = [
            m
            for m in catalog.all()
            if (all_models or m.curated or search) and _matches(m, search, provider, modality, available)
        ]
        if not rows:
            wanted = " ".join(
                f"{label} {value!r}"
                for label, value in (("matching", search), ("from", provider), ("reading", modality))
                if value
            )
            hint = catalog.suggest(search) if search else []
            typer.echo(
                f"faregate: no model {wanted or 'in the catalog'}"
                + (" with an enabled provider" if available else "")
                + (f"; did you mean {', '.join(hint)}?" if hint else ""),
                err=True,
            )
            raise typer.Exit(1)
        offers = [
            ", ".join(
                f"{o.provider}{'' if o.available else ' (off)'} {o.price.input}/{o.price.output}"
                + (
                    ""
                    if o.peak is None
                    else f" ({o.peak.price.input}/{o.peak.price.output} {' '.join(o.peak.hours)} UTC)"
                )
                for o in m.offers
            )
            or "-"
            for m in rows
        ]
        aliases = [", ".join(m.aliases) for m in rows]
        # As GET /v1/models says them: the settings the model is sent without, and the efforts it
        # takes (another is sent as the nearest); "-": none refused, the client's effort sent as given.
        refused = [", ".join(m.refused_params) or "-" for m in rows]
        efforts = ["-" if m.efforts is None else ", ".join(m.efforts) for m in rows]
        cells = [
            [
                str(m.list_price.input),
                str(m.list_price.output),
                f"{m.context_window:,}",
                f"{m.max_output_tokens:,}" if m.max_output_tokens else "-",
                "+".join(sorted(m.modalities)),
            ]
            for m in rows
        ]
        table = Table(title=f"{len(rows)} model(s)  ·  USD per 1M tokens")
        # The name is printed whole (it is what a request or --model names); aliases and offers fold.
        whole_column(table, "model", [m.name for m in rows])
        folding_column(table, "aliases", aliases)
        for i, heading in enumerate(("in", "out", "context", "max out", "modalities")):
            justify: Literal["left", "right"] = "left" if heading == "modalities" else "right"
            whole_column(table, heading, [row[i] for row in cells], justify=justify)
        folding_column(table, "refuses", refused)
        folding_column(table, "efforts", efforts)
        folding_column(table, "offers", offers)
        for m, alias, numbers, refuses, effort, offer in zip(
            rows, aliases, cells, refused, efforts, offers, strict=True
        ):
            # Text(), not str: names come from the config and the catalog, not rich markup (a
            # "[beta]" in a name was taken for a style and vanished).
            table.add_row(
                Text(m.name, style="" if m.available else "dim"),
                Text(alias),
                *numbers,
                Text(refuses),
                Text(effort),
                Text(offer),
            )
        print_table(table, at_least=200)
