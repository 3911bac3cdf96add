"""GET /metrics: Prometheus text format; master key required unless `metrics.public` is true.

With several workers (`serve --workers N`) each one publishes its figures every second and the
one scraped answers for all of them (telemetry/metrics_share.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from faregate.server.admin import require_master
from faregate.server.share_publisher import publish_while_serving
from faregate.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from faregate.server.app import Gateway


def add_metrics_route(app: web.Application, gateway: Gateway) -> None:
    master_key = gateway.master_key
    public = gateway.settings.metrics.public
    if gateway.observability is None:
        return
    metrics = gateway.observability.metrics
    shared = gateway.shared_metrics

    async def scrape(request: web.Request) -> web.StreamResponse:
        if not public:
            require_master(request, master_key)
        body = metrics.render() if shared is None else shared.merged(metrics.render())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", scrape)
    if shared is None:
        return

    async def publish() -> None:
        shared.publish(metrics.render())

    publish_while_serving(app, "metrics-share", publish)
