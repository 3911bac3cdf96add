"""The `faregate` console script. One module per command group registers itself here."""

from __future__ import annotations

import typer

from faregate.cli import cache_eval, cost, credits, keys, models, replay, router, serve, sim, usage

app = typer.Typer(
    name="faregate",
    help="Faregate: one OpenAI-compatible endpoint for every model, with cost on every response.",
    no_args_is_help=True,
    add_completion=False,
)

for module in (serve, sim, keys, credits, models, usage, cost, replay, router, cache_eval):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
