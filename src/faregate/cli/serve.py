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


def metering_line(settings: Settings, credits_nano: int, key_id: str) -> str:
    """What metering means for the key just made. The top-up names the key by id: after a few
    `make run`s, several keys are named quickstart."""
    from faregate.accounts.money import usd_text

    if settings.accounts.enabled:
        if credits_nano <= 0:
            return (
                "Metering is on, and this key has no credits yet (accounts.new_key_credits_usd): it is\n"
                f"refused with 402 until you add some, e.g. `faregate credits add {key_id} 5`."
            )
        credits = usd_text(credits_nano)
        more = f"faregate credits add {key_id} 5"
        return f"Metering is on: this key starts with ${credits} of credits (more: `{more}`)."
    return (
        "Metering is off: keys spend without limit. For credits, budgets and rate limits, put\n"
        "`accounts: {enabled: true}` in faregate.yaml and restart (docs/accounts.md)."
    )


async def announce_new_keys(gateway: Gateway, base_url: str, raw_master: str | None = None) -> str:
    """Make the quickstart keys and say how to use them (printed once: the raw keys are kept nowhere).
    `raw_master`: a master key made already (by the supervisor of several workers, before they
    loaded the master keys)."""
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
        raw_master = raw_master or gateway.master_key.create(settings)
        master = f"Master key (shown once; admin API, dashboard, /metrics): {raw_master}"
    return (
        f"\nFaregate is running at {base_url}  [{mode}]\n"
        f"API key (shown once, id {key.id}): {raw}\n"
        f"Dashboard: {root}/dashboard  (sign in with the master key)\n"
        f"{master}\n"
        f"{metering_line(settings, new_key_credits_nano(settings), key.id)}\n\n"
        f"{SNIPPET.format(base_url=base_url, key=raw)}"
    )


NO_KEYS = (
    "No API key exists in this gateway's store yet, so every request is refused (401): make one with\n"
    "`faregate keys create --name NAME` (with the same config), or start with --new-key."
)


async def no_keys_notice(gateway: Gateway) -> str | None:
    """For a start without --new-key: NO_KEYS when the store has no live API key. Every request
    would be a 401 with nothing at start saying why (a newcomer moving from `make run` to
    `faregate serve` in another directory, whose store is new)."""
    return None if await gateway.backends.store.list_keys() else NO_KEYS


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
        workers: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Gateway processes sharing the port (default: server.workers, else one per core, "
                "no more than the CPU limit of a container or service, or 1 when the simulator "
                "stands in for the providers).",
            ),
        ] = None,
    ) -> None:
        """Start the gateway (and the provider simulator when no provider key is set)."""
        from faregate.accounts.master import MasterKey, check_env_key
        from faregate.server.runner import run
        from faregate.server.workers import default_workers, run_workers

        settings = load_or_exit(config)
        check_env_key(settings)  # before any worker starts: one line, not one per worker
        if host:
            settings.server.host = host
        if port:
            settings.server.port = port
        count = workers or settings.server.workers or default_workers(settings)
        settings.server.workers = count
        # With several workers, the master key the supervisor made (before forking, so that every
        # worker loads it; once the port is ours, so that a start that fails there keeps the key
        # of the gateway serving on it).
        made: list[str] = []

        def make_master_key() -> None:
            if new_key and not settings.master_key():
                made.append(MasterKey().create(settings))

        async def announce(gateway: Gateway, base_url: str) -> None:
            if new_key:
                typer.echo(await announce_new_keys(gateway, base_url, made[0] if made else None))
            elif (notice := await no_keys_notice(gateway)) is not None:
                typer.echo(notice)

        path = config_path(config)
        if count == 1:
            run(settings, announce, str(path) if path else None)
            return
        code = run_workers(settings, count, announce, str(path) if path else None, make_master_key)
        raise typer.Exit(code)
