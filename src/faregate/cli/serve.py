"""`faregate serve`: run the gateway."""

from __future__ import annotations

from typing import Annotated

import typer

from faregate.cli.common import ConfigOption, load_or_exit
from faregate.config import config_path
from faregate.server.app import Gateway

SNIPPET = """\
from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key="{key}")
reply = client.chat.completions.create(
    model="deepseek-v4-flash",
    messages=[{{"role": "user", "content": "Say hello"}}],
)
print(reply.choices[0].message.content)
print("cost (USD):", reply.usage.cost)
"""


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: ConfigOption = None,
        host: Annotated[str | None, typer.Option(help="Listen address (default from config).")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port (default from config: 4000).")] = None,
        new_key: Annotated[
            bool, typer.Option("--new-key/--no-new-key", help="Create an API key at start and print it.")
        ] = False,
    ) -> None:
        """Start the gateway (and the provider simulator when no provider key is set)."""
        from faregate.server.runner import run

        settings = load_or_exit(config)
        if host:
            settings.server.host = host
        if port:
            settings.server.port = port

        async def announce(gateway: Gateway, base_url: str) -> None:
            if not new_key:
                return
            key, raw = await gateway.keys.create(name="quickstart")
            mode = (
                "simulated providers (no provider API key set)"
                if "sim" in gateway.providers.names()
                else ("providers: " + ", ".join(gateway.providers.names()))
            )
            typer.echo(
                f"\nFaregate is running at {base_url}  [{mode}]\n"
                f"API key (shown once, id {key.id}): {raw}\n\n"
                f"{SNIPPET.format(base_url=base_url, key=raw)}",
            )

        path = config_path(config)
        run(settings, announce, str(path) if path else None)
