"""A worker's share for the others (`serve --workers N`): its metrics, health or alerts, written
every PUBLISH_INTERVAL_S (telemetry/metrics_share.py) while the app serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from faregate.lifecycle import Periodic
from faregate.telemetry.metrics_share import PUBLISH_INTERVAL_S


def publish_while_serving(app: web.Application, name: str, publish: Callable[[], Awaitable[None]]) -> None:
    """Run `publish` at once at start-up, then every PUBLISH_INTERVAL_S until the app stops."""
    publisher = Periodic(name, PUBLISH_INTERVAL_S, publish, run_first=True)

    async def start(app: web.Application) -> None:
        publisher.start()

    async def stop(app: web.Application) -> None:
        await publisher.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
