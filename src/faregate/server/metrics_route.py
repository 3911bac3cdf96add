"""GET /metrics: Prometheus text format; master key required unless `metrics.public` is true."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from faregate.server.admin import require_master
from faregate.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from faregate.server.app import Gateway


def add_metrics_route(app: web.Application, gateway: Gateway) -> None:
    master_key = gateway.master_key
    public = gateway.settings.metrics.public
    if gateway.observability is None:
        return
    metrics = gateway.observability.metrics

    async def scrape(request: web.Request) -> web.StreamResponse:
        if not public:
            require_master(request, master_key)
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", scrape)
