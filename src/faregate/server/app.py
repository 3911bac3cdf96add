"""The ASGI-style aiohttp application: routes, the error edge, start-up and shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from faregate import usage_estimate
from faregate.accounts.keys import KeyStore
from faregate.accounts.master import MasterKey
from faregate.accounts.setup import Accounts, build_accounts, new_key_credits_nano, settle_spool_directory
from faregate.cache.factory import build_cache
from faregate.catalog import Catalog, Model, build_catalog
from faregate.config import Settings, check_alert_subjects, check_route_ttls, did_you_mean
from faregate.dashboard.assets import add_dashboard_page
from faregate.errors import ConfigError, FaregateError, InternalError, InvalidRequest, NotFound, StartupError
from faregate.lifecycle import Lifecycle
from faregate.providers.http import ConnectionPool
from faregate.providers.registry import ProviderRegistry, make_upstream_pool
from faregate.route_config import check_cache_judge
from faregate.routing.attempts import AttemptRunner
from faregate.routing.health import HealthBoard
from faregate.routing.plan import Planner
from faregate.routing.queue import UpstreamLimiter
from faregate.server.admin import add_health_share, health_detail, is_master
from faregate.server.admin_api import add_account_routes
from faregate.server.client_wires import wire_of_path
from faregate.server.dashboard_api import add_dashboard_api
from faregate.server.embeddings import EmbeddingsPipeline
from faregate.server.feedback import add_feedback_route
from faregate.server.metrics_route import add_metrics_route
from faregate.server.openapi import openapi_body
from faregate.server.path_hint import unknown_path_message
from faregate.server.pipeline import ChatPipeline
from faregate.server.quality_api import add_quality_route
from faregate.server.responses import error_response
from faregate.server.wire_routes import LeanRoutes, add_wire_routes
from faregate.store.backends import Backends, open_backends
from faregate.store.outage import outage_error
from faregate.store.protocols import Store
from faregate.telemetry.metrics_share import SharedMetrics
from faregate.telemetry.observability import Observability
from faregate.telemetry.records import RecordWriter
from faregate.types import Price

log = logging.getLogger("faregate.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FastRoutes = dict[tuple[str, str], Handler]
FAST_ROUTES = web.AppKey("fast_routes", FastRoutes)
# The same operations for the lean HTTP server (server/lean_http.py, `server.lean_http`).
LEAN_ROUTES = web.AppKey("lean_routes", LeanRoutes)
# The last flush of the request records, and the stores' closes (the ledger's last shipment
# included): each gives up after this long, so a stop always ends.
RECORDS_CLOSE_TIMEOUT_S = 20.0
BACKENDS_CLOSE_TIMEOUT_S = 40.0


@dataclass(slots=True)
class Gateway:
    """Everything a running gateway holds; built once, closed once (`lifecycle`, newest first)."""

    settings: Settings
    catalog: Catalog
    pool: ConnectionPool
    providers: ProviderRegistry
    backends: Backends
    keys: KeyStore
    records: RecordWriter
    pipeline: ChatPipeline
    accounts: Accounts
    models_body: bytes
    lifecycle: Lifecycle
    started: float = field(default_factory=time.monotonic)
    # Metrics, traces, rollups, alerts, and the analytics behind the dashboard and feedback.
    observability: Observability | None = None
    # Who may use the admin API, the dashboard and /metrics.
    master_key: MasterKey = field(default_factory=MasterKey)
    # One of the workers of `serve --workers N`: where they leave their metrics for each other.
    shared_metrics: SharedMetrics | None = None

    @property
    def store(self) -> Store:
        return self.backends.store

    async def close(self) -> None:
        await self.lifecycle.aclose()


GATEWAY = web.AppKey("gateway", Gateway)


def model_entry(model: Model) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        # Anthropic's fields for the same, which its SDK's models.list and retrieve read.
        "type": "model",
        "display_name": model.name,
        "created_at": "1970-01-01T00:00:00Z",
        "owned_by": model.offers[0].provider if model.offers else "unknown",
        "aliases": list(model.aliases),
        "available": model.available,
        "context_window": model.context_window,
        "max_output_tokens": model.max_output_tokens,
        "modalities": sorted(model.modalities),
        "tags": list(model.tags),
        # "chat", or "embedding" (served by POST /v1/embeddings only).
        "kind": model.kind,
        # The settings it is sent without and the efforts it takes (the nearest is sent for
        # another; None: sent as given), by the chat wire's names (wire/model_params.py).
        "refused_params": model.refused_params,
        "efforts": None if model.efforts is None else list(model.efforts),
        "pricing": {
            "currency": "USD",
            "unit": "1M tokens",
            "input": str(model.list_price.input),
            "output": str(model.list_price.output),
        },
        "offers": [
            {
                "provider": o.provider,
                "upstream_model": o.upstream_model,
                "input": str(o.price.input),
                "output": str(o.price.output),
                # Its dearer price at some hours of the day (UTC), billed to a request that comes
                # then; None: one price at all hours.
                "peak": None
                if o.peak is None
                else {
                    "hours": list(o.peak.hours),
                    "input": str(o.peak.price.input),
                    "output": str(o.peak.price.output),
                },
                "available": o.available,
            }
            for o in model.offers
        ],
    }


def models_listing(catalog: Catalog) -> bytes:
    """Models that some declared provider sells (curated first). Built once: the catalog is static."""
    listed = [m for m in catalog.all() if m.offers]
    listed.sort(key=lambda m: (not m.curated, m.name.lower()))
    data = [model_entry(m) for m in listed]
    # Anthropic's page fields (one page: everything), which its SDK pages by.
    ends = (
        {"first_id": data[0]["id"], "last_id": data[-1]["id"]}
        if data
        else {"first_id": None, "last_id": None}
    )
    return orjson.dumps({"object": "list", "data": data, "has_more": False, **ends})


def baseline_price(catalog: Catalog, name: str) -> Price:
    model = catalog.get(name)
    if model is None:
        raise ConfigError(f"baseline_model: unknown model {name!r}{did_you_mean(catalog.suggest, name, ())}")
    return model.list_price


async def build_gateway(settings: Settings) -> Gateway:
    """The gateway `settings` describe (with the simulator already among the providers when it
    stands in for them: providers.registry.with_simulator). Everything is opened, started and
    wired; what was opened is closed again if a later step fails."""
    lifecycle = Lifecycle()
    try:
        return await _build(settings, lifecycle)
    except BaseException:
        await lifecycle.aclose()
        raise


async def _build(settings: Settings, lifecycle: Lifecycle) -> Gateway:
    # Each close is registered as soon as its thing exists: aclose() runs them newest first, so
    # the record writer's last flush and the ledger's last shipment come before their stores close.
    # Process-wide, like the tokenizer it may load: every count of this process follows it.
    usage_estimate.configure(settings.accounts.usage_estimate)
    catalog = build_catalog(settings)
    check_cache_judge(
        settings.cache.semantic,
        lambda name: name in settings.routes or name in catalog,
        lambda name: did_you_mean(catalog.suggest, name, settings.routes),
    )
    check_alert_subjects(settings.alerts, settings.routes, catalog.canonical_name, catalog.suggest)
    check_route_ttls(settings.cache, settings.routes, catalog.canonical_name, catalog.suggest)
    pool = make_upstream_pool(settings)
    lifecycle.on_close("the upstream connection pool", pool.close)
    providers = ProviderRegistry.build(settings, pool)
    lifecycle.on_close("the providers", providers.close)
    backends = await open_backends(settings)
    lifecycle.on_close("the stores", backends.close, timeout_s=BACKENDS_CLOSE_TIMEOUT_S)
    keys = KeyStore(
        backends.store,
        cache_ttl_s=settings.auth.key_cache_ttl_s,
        new_key_credits_nano=new_key_credits_nano(settings),
    )
    accounts = build_accounts(settings, backends.accounts, keys)
    # Started here, stopped by backends.close (which owns the account backend).
    await accounts.backend.start()
    settlements = accounts.settlements
    if settlements is not None:
        # Closed before the stores (newest first): settlements kept through an outage get one more
        # try once the requests have drained.
        lifecycle.on_close("the kept settlements", settlements.close)
        spool = settle_spool_directory(settings)
        try:
            # Also retries what processes killed during an outage left in the spool.
            await settlements.open_spool(spool)
        except OSError as exc:
            raise StartupError(
                f"cannot write kept settlements to {spool} (accounts.settle_spool_path): {exc}"
            ) from None
    records = RecordWriter(backends.store, settings.records)
    await records.start()
    # The last flush of every pending record: a clean stop loses none.
    lifecycle.on_close("the request records", records.close, timeout_s=RECORDS_CLOSE_TIMEOUT_S)
    health = HealthBoard(settings.routing.breaker, settings.routing.latency_window)
    planner = Planner(catalog, settings.routes, settings.routing, health)

    async def close_policies() -> None:
        planner.routes.policies.close()

    lifecycle.on_close("the route policies", close_policies)
    runner = AttemptRunner(
        providers,
        settings.server.request_timeout_s,
        settings.routing,
        health,
        UpstreamLimiter(settings.upstream_limits),
    )
    cache = build_cache(settings.cache, backends.redis_url)
    if cache is not None:
        lifecycle.on_close("the response cache", cache.close)
        cache.start(lifecycle)
    pipeline = ChatPipeline(
        keys=keys,
        planner=planner,
        runner=runner,
        records=records,
        max_body_bytes=settings.server.max_body_bytes,
        baseline=baseline_price(catalog, settings.baseline_model),
        admission=accounts.admission,
        cache=cache,
        limits=settings.limits,
    )
    calibrated = bool(planner.routes.policies.calibrations) or (
        cache is not None and cache.acceptance is not None
    )
    if calibrated:
        # Imported only then: the quality loop needs NumPy, which the core install does not have.
        from faregate.quality.setup import open_quality

        pipeline.verifier = await open_quality(planner, runner, backends, lifecycle, cache)
    observability = await Observability.open(
        settings,
        backends.analytics,
        runner,
        records,
        pipeline.cascades,
        route_label=planner.route_label,
        settlements=settlements,
    )
    if pipeline.verifier is not None:
        from faregate.quality.setup import attach_observability

        attach_observability(pipeline.verifier, observability)
    # Started with the app (on_startup), stopped here.
    lifecycle.on_close("metrics, traces, rollups and alerts", observability.close)
    observability.attach(pipeline.listeners)
    return Gateway(
        settings,
        catalog,
        pool,
        providers,
        backends,
        keys,
        records,
        pipeline,
        accounts,
        models_listing(catalog),
        lifecycle,
        observability=observability,
        master_key=MasterKey.load(settings),
    )


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in OpenAI's JSON shape (Anthropic's under /v1/messages); never a stack
    trace."""
    wire = wire_of_path(request.path)
    try:
        return await handler(request)
    except FaregateError as error:
        return error_response(error, wire=wire)
    except web.HTTPRequestEntityTooLarge as exc:
        too_large = InvalidRequest(f"Request body too large: {exc.text}", code="request_too_large")
        return error_response(too_large, wire=wire)
    except web.HTTPException as exc:
        if exc.status == 404:
            unknown = NotFound(await unknown_path_message(request), code="unknown_url")
            return error_response(unknown, wire=wire)
        if exc.status == 405:
            err = InvalidRequest(
                f"Method {request.method} is not allowed on {request.path}.", code="method_not_allowed"
            )
            err.status = 405
            # RFC 9110: a 405 says which methods the resource allows (aiohttp's own one does).
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(err, allow, wire=wire)
        raise
    except Exception as exc:
        unavailable = outage_error(exc)
        if unavailable is not None:
            log.warning("%s %s failed, a store is unavailable: %s: %s", request.method, request.path,
                        type(exc).__name__, exc)  # fmt: skip
            return error_response(unavailable, wire=wire)
        log.exception("unhandled error on %s %s", request.method, request.path)
        internal = InternalError("The gateway hit an internal error; it has been logged.")
        return error_response(internal, wire=wire)


def create_app(gateway: Gateway) -> web.Application:
    # aiohttp's own body limit sits above ours so that our check answers in OpenAI format.
    app = web.Application(
        middlewares=[openai_errors], client_max_size=gateway.settings.server.max_body_bytes + 1
    )
    app[GATEWAY] = gateway

    async def models(request: web.Request) -> web.StreamResponse:
        await gateway.pipeline.authenticate(request)
        return web.Response(body=gateway.models_body, content_type="application/json")

    async def model(request: web.Request) -> web.StreamResponse:
        await gateway.pipeline.authenticate(request)
        name = request.match_info["name"]
        # A model GET /v1/models lists, as chat accepts it (not one no provider here sells).
        found = gateway.pipeline.planner.listed_model(name)
        return web.Response(body=orjson.dumps(model_entry(found)), content_type="application/json")

    master_key = gateway.master_key

    async def health(request: web.Request) -> web.StreamResponse:
        # Liveness for anyone; breaker states and latency only for the admin.
        if is_master(request, master_key):
            return web.Response(body=health_detail(gateway), content_type="application/json")
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def on_startup(app: web.Application) -> None:
        if gateway.observability is not None:
            await gateway.observability.start()

    async def on_cleanup(app: web.Application) -> None:
        await gateway.close()

    chat = gateway.pipeline.handle
    embedder = EmbeddingsPipeline(gateway.pipeline, gateway.providers)
    embeddings = embedder.handle
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    # Served without the router by server.runner.GatewayRunner (same handler, same behaviour).
    fast_routes: FastRoutes = {("POST", "/v1/chat/completions"): chat, ("POST", "/v1/embeddings"): embeddings}
    app[FAST_ROUTES] = fast_routes
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/embeddings", embeddings)
    # Anthropic Messages and the Responses API: the same pipeline, another client wire (their
    # POSTs on the fast path too: the router and middlewares were ~8% of a Messages request's CPU).
    wire_fast, wire_lean = add_wire_routes(app, gateway.pipeline)
    fast_routes.update(wire_fast)
    serve_chat = gateway.pipeline.serve
    lean_routes: LeanRoutes = {
        ("POST", "/v1/chat/completions"): serve_chat,
        ("POST", "/chat/completions"): serve_chat,
        ("POST", "/v1/embeddings"): embedder.serve,
        ("POST", "/embeddings"): embedder.serve,
        **wire_lean,
    }
    app[LEAN_ROUTES] = lean_routes
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{name:.+}", model)
    app.router.add_get("/health", health)
    add_health_share(app, gateway)
    described = openapi_body(gateway.settings.limits)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(body=described, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    add_account_routes(app, gateway.accounts.service, gateway.pipeline, master_key)
    add_metrics_route(app, gateway)
    add_feedback_route(app, gateway)
    add_dashboard_api(app, gateway)
    add_quality_route(app, gateway)
    add_dashboard_page(app)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
