"""The `faregate` console script. One module per command group registers itself here.

`faregate serve` and `faregate sim` are long-running servers: they load only their own
module, so the analysis commands' imports (NumPy, SciPy, matplotlib, the openai SDK)
never cost them start-up time or memory.
"""

from __future__ import annotations

import importlib
import sys

import typer

HELP = "Faregate: one OpenAI-compatible endpoint for every model, with cost on every response."
# In the order `faregate --help` lists them.
COMMAND_MODULES = (
    "serve",
    "sim",
    "keys",
    "credits",
    "models",
    "usage",
    "cost",
    "replay",
    "router",
    "cache_eval",
    "eval",
)
SERVERS = {"serve": "serve", "sim": "sim"}


def build_app(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    app = typer.Typer(name="faregate", help=HELP, no_args_is_help=True, add_completion=False)

    @app.callback()
    def root() -> None:
        """Faregate: one OpenAI-compatible endpoint for every model, with cost on every response."""

    for name in modules:
        importlib.import_module(f"faregate.cli.{name}").register(app)
    return app


def __getattr__(name: str) -> typer.Typer:
    # `from faregate.cli.main import app` (tests, embedding) builds the full app on first use.
    if name == "app":
        return build_app()
    raise AttributeError(name)


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    modules = (SERVERS[command],) if command in SERVERS else COMMAND_MODULES
    build_app(modules)()


if __name__ == "__main__":
    main()
