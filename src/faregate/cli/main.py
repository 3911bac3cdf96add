"""The `faregate` console script. One module per command group registers itself here.

Start-up time: a command imports only its own module, when it runs (`LazyCommands`), and
`faregate --help` lists the commands from the table below without importing any of them. So
`faregate models` never pays for the analysis commands' NumPy, SciPy, matplotlib or the openai
SDK, and the long-running servers (`serve`, `sim`) never carry them in memory.

Start-up errors (bad configuration, a busy port, missing data, a store that cannot be opened, an
extra the command needs that is not installed) are printed as one line, `faregate: ...`, without
a traceback.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any

import typer

from faregate.cli.groups import Commands
from faregate.errors import StartupError
from faregate.extras import require

HELP = "Faregate: one OpenAI-compatible endpoint for every model, with cost on every response."


@dataclass(frozen=True, slots=True)
class Command:
    module: str
    help: str
    # Extras the command needs (faregate.extras): checked before its module is imported.
    extras: tuple[str, ...] = ()


# In the order `faregate --help` lists them. A test checks that each module registers its command.
COMMANDS = {
    "serve": Command("serve", "Start the gateway (and the provider simulator if no provider key is set)."),
    "sim": Command("sim", "Run the OpenAI-compatible provider simulator on its own."),
    "keys": Command("keys", "Create, list, change and revoke API keys."),
    "credits": Command("credits", "Top up keys, read the ledger, audit balances."),
    "models": Command("models", "List models with prices, context, modalities and offers."),
    "usage": Command("usage", "Spend, requests and tokens from the request records."),
    "cost": Command("cost", "Project a workload's monthly cost per model, or re-price past traffic."),
    "eval": Command("eval", "Compare models on a prompt set through a running gateway.", ("evals",)),
    "replay": Command(
        "replay", "Replay a routing policy on recorded outcomes, without calling models.", ("evals",)
    ),
    "router": Command(
        "router", "Train and measure the learned router and the cascade's judge.", ("evals", "semantic")
    ),
    "cache-eval": Command(
        "cache-eval", "Measure the semantic cache on the recorded questions.", ("semantic", "evals")
    ),
}
COMMAND_MODULES = tuple(dict.fromkeys(c.module.replace("-", "_") for c in COMMANDS.values()))


def _typer(**kwargs: Any) -> typer.Typer:
    # Plain click help: it wraps at any width without cutting option names, and needs no rich.
    kwargs.setdefault("cls", Commands)
    return typer.Typer(rich_markup_mode=None, add_completion=False, **kwargs)


def _module_app(module: str) -> typer.Typer:
    app = _typer(name="faregate", help=HELP, no_args_is_help=True)

    @app.callback()
    def root() -> None:
        """Faregate: one OpenAI-compatible endpoint for every model, with cost on every response."""

    importlib.import_module(f"faregate.cli.{module.replace('-', '_')}").register(app)
    return app


class LazyCommands(Commands):
    """Loads a command's module only when that command is invoked (or asked for its help).
    (`ctx` and `formatter` are typer's vendored click types, which it does not export.)"""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = COMMANDS.get(cmd_name)
        if command is None:
            return None
        for extra in command.extras:
            # Before the module is imported: its imports are what would fail.
            require(extra, f"faregate {cmd_name}")
        group = typer.main.get_command(_module_app(command.module))
        assert isinstance(group, Commands)
        return group.get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.help) for name, command in COMMANDS.items()])


def build_app(modules: tuple[str, ...] = COMMAND_MODULES) -> typer.Typer:
    """Every command registered at once (tests, embedding)."""
    app = _typer(name="faregate", help=HELP, no_args_is_help=True)

    @app.callback()
    def root() -> None:
        """Faregate: one OpenAI-compatible endpoint for every model, with cost on every response."""

    for name in modules:
        importlib.import_module(f"faregate.cli.{name}").register(app)
    return app


def lazy_app() -> typer.Typer:
    app = _typer(name="faregate", help=HELP, no_args_is_help=True, cls=LazyCommands)

    @app.callback()
    def root() -> None:
        """Faregate: one OpenAI-compatible endpoint for every model, with cost on every response."""

    return app


def __getattr__(name: str) -> typer.Typer:
    # `from faregate.cli.main import app` (tests, embedding) builds the full app on first use.
    if name == "app":
        return build_app()
    raise AttributeError(name)


def fail(message: str, code: int) -> None:
    print(f"faregate: {message}", file=sys.stderr)
    sys.exit(code)


def main() -> None:
    try:
        lazy_app()()
    except KeyboardInterrupt:
        sys.exit(130)
    except StartupError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        # A file or directory that cannot be read or written, a port, a full disk: the environment,
        # said in one line (a bug is any other exception, and keeps its traceback).
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)
    except Exception as exc:
        # Imported only now: the store package costs a tenth of a second, and only a command
        # that failed needs the class.
        from faregate.store.protocols import StoreUnavailable

        if not isinstance(exc, StoreUnavailable):
            raise
        fail(f"store unavailable: {exc}", 1)


if __name__ == "__main__":
    main()
