"""`faregate serve`: run the gateway.

With `--new-key` (what `make run` does) it also makes an API key and, unless FAREGATE_MASTER_KEY
is set, a master key, and prints both once with the URLs to use them and a snippet to paste.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from faregate.cli.common import ConfigOption, load_or_exit
from faregate.config import Settings, config_path

if TYPE_CHECKING:
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


def metering_line(settings: Settings, credits: str) -> str:
    if settings.accounts.enabled:
        return f"Metering is on: this key starts with ${credits} of credits (faregate credits add to top up)."
    return (
        "Metering is off: keys spend without limit. For credits, budgets and rate limits, put\n"
        "`accounts: {enabled: true}` in faregate.yaml and restart (docs/accounts.md)."
    )


async def announce_new_keys(gateway: Gateway, base_url: str) -> str:
    """Make the quickstart keys and say how to use them (printed once: the raw keys are kept nowhere)."""
    from faregate.accounts.money import usd_text
    from faregate.accounts.setup import new_key_credits_nano

    settings = gateway.settings
    key, raw = await gateway.keys.create(name="quickstart")
    simulator = gateway.providers.simulator_url
    mode = (
        f"simulated providers at {simulator} (no provider API key set)"
        if simulator
        else ("providers: " + ", ".join(gateway.providers.names()))
    )
    root = base_url.removesuffix("/v1")
    if settings.master_key():
        master = f"Master key: the one in ${settings.auth.master_key_env}"
    else:
        raw_master = gateway.master_key.create(settings)
        master = f"Master key (shown once; admin API, dashboard, /metrics): {raw_master}"
    return (
        f"\nFaregate is running at {base_url}  [{mode}]\n"
        f"API key (shown once, id {key.id}): {raw}\n"
        f"Dashboard: {root}/dashboard  (sign in with the master key)\n"
        f"{master}\n"
        f"{metering_line(settings, usd_text(new_key_credits_nano(settings)))}\n\n"
        f"{SNIPPET.format(base_url=base_url, key=raw)}"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        config: ConfigOption = None,
        host: Annotated[str | None, typer.Option(help="Listen address (default from config).")] = None,
        port: Annotated[
            int | None, typer.Option(min=1, max=65535, help="Listen port (default from config: 4000).")
        ] = None,
        new_key: Annotated[
            bool,
            typer.Option(
                "--new-key/--no-new-key",
                help="At start, create an API key and a master key (unless FAREGATE_MASTER_KEY is set) "
                "and print them once.",
            ),
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
            if new_key:
                typer.echo(await announce_new_keys(gateway, base_url))

        path = config_path(config)
        run(settings, announce, str(path) if path else None)
