"""Command groups with plain click help: wrapped, never cut.

Rich help (typer's default) cuts long option names at 80 columns and costs a tenth of a second to
import; click's plain help wraps at any width. Click's listings still cut each command's summary
with "..." to fit one line: these groups wrap it instead.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup


class Commands(TyperGroup):
    """A command group whose listing wraps each command's summary instead of cutting it with "..."
    to fit the terminal (click's default). `ctx` and `formatter` are typer's vendored click types."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [
            (name, command.get_short_help_str(limit=200))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command_group(**kwargs: Any) -> typer.Typer:
    """A sub-command group with plain click help (no rich: it wraps at any width and never cuts
    an option's name) and uncut command summaries."""
    return typer.Typer(cls=Commands, rich_markup_mode=None, no_args_is_help=True, **kwargs)
