"""GET /admin/quality: the calibrated routes' figures, behind the master key.

Per route: the target and confidence, the strong share in force, the estimated quality (routed
relative to the strong path) with a display interval and the e-value behind it, the
verifications by label kind, their cost, the daily cap, the router's health, and the route's
savings (baseline minus cost, from the request records) net of verification. The semantic cache's
(`cache`), likewise: what cache hits saved (exact and semantic: the records do not tell them apart
in sums) net of what verifying semantic hits cost. The cost of verification is the verifications
table's, every one of the scope: like the savings, it spans restarts and settings changes (a
changed setting restarts the calibration and its counts, not what was spent). `recent` lists the
last verifications (`?limit=`, default 20). Money is exact decimal text in USD.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from faregate.server.admin import require_master, with_other_workers
from faregate.server.dashboard_api import int_param
from faregate.store.analytics_rows import Slice
from faregate.store.rows import usd_text

if TYPE_CHECKING:
    from faregate.server.app import Gateway

NANO = Decimal(1_000_000_000)


async def quality_figures(gateway: Gateway, limit: int = 20) -> dict[str, Any]:
    verifier = gateway.pipeline.verifier
    if verifier is None:
        return {"routes": [], "cache": None, "recent": [], "pending": 0, "rows_pending": 0, "rows_lost": 0}
    insights = gateway.observability.insights if gateway.observability is not None else None
    routes = []
    store = verifier.service.store
    for row in verifier.service.figures():
        verification = Decimal(await store.cost_nano(row["route"])) / NANO
        row["verification_cost_usd"] = usd_text(verification)
        if insights is not None:
            totals = await insights.analytics.totals(Slice(0.0, time.time() + 1, route=row["route"]))
            savings = totals.savings
            row["requests"] = totals.requests
            row["savings_usd"] = usd_text(savings)
            row["savings_net_usd"] = usd_text(savings - verification)
        routes.append(row)
    cache = verifier.service.cache_figures()
    if cache is not None:
        cache["verification_cost_usd"] = usd_text(Decimal(await store.cost_nano("cache", cache=True)) / NANO)
    if cache is not None and insights is not None:
        saved = (await insights.analytics.totals(Slice(0.0, time.time() + 1))).cache_saved
        cache["savings_usd"] = usd_text(saved)
        cache["savings_net_usd"] = usd_text(saved - Decimal(cache["verification_cost_usd"]))
    recent = await store.recent(limit=limit)
    shared, service = gateway.shared_metrics, verifier.service
    return {
        "routes": routes,
        # The semantic cache's calibrated acceptance (cache.semantic.max_wrong_hit_rate), or None.
        "cache": cache,
        # Verifications submitted and not finished yet (every worker's, with several).
        "pending": with_other_workers(gateway.shared_metrics, "verifications_pending", verifier.pending),
        # Verification rows waiting for the store (an outage: not in the costs above yet), and
        # those given up (quality/service.py); every worker's.
        "rows_pending": with_other_workers(shared, "verification_rows_pending", service.rows_pending),
        "rows_lost": with_other_workers(shared, "verification_rows_lost", service.rows_lost),
        "recent": [
            {
                "request_id": r.request_id,
                "route": r.scope,
                "kind": r.kind,
                "label_kind": r.label_kind,
                "decision": r.decision,
                "rank": r.rank,
                "probability": r.probability,
                "comparator": r.comparator,
                "outcome": r.outcome,
                "reference_model": r.reference_model,
                "cost_usd": usd_text(Decimal(r.cost_nano) / NANO),
                "created_at": r.created_at,
            }
            for r in recent
        ],
    }


def add_quality_route(app: web.Application, gateway: Gateway) -> None:
    async def quality(request: web.Request) -> web.StreamResponse:
        require_master(request, gateway.master_key)
        limit = int_param(request, "limit", 20, 1, 500)
        body = await quality_figures(gateway, limit)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    app.router.add_get("/admin/quality", quality)
