"""`faregate sim`: run the provider simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)


def sim(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0 picks a free one).")
    ] = 4001,
    script: Annotated[
        Path | None, typer.Option(help="YAML script: latency, answers and faults per model.", dir_okay=False)
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Faregate config whose curated models /v1/models lists, refusing what they refuse.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Run the OpenAI-compatible provider simulator (scripted latency, answers and faults).

    Prints one line ending in the base URL when ready.
    """
    from faregate.sim import run

    # A bad script or a busy port is a StartupError: the console script prints it as one line.
    run(host, port, script, config=config)
