"""The dashboard's JSON endpoints, under /admin/dashboard/, behind the master key.

Every endpoint takes the same slice parameters:
  range=15m|1h|6h|24h|7d|30d|90d|all   (default 24h), or since=/until= as unix seconds or
                                        ISO 8601, UTC unless it has an offset (until defaults to now)
  model= provider= route= key=          narrow to one of them (key: id or name)
Money is a decimal string in USD (exact), rates are percentages, times are unix seconds.

With several workers (`serve --workers N`) `alerts` is worker 0's whichever worker answers: it
alone posts to the webhook, logs the alerts and keeps what fired across its restarts; it publishes
its alerts every second (telemetry/metrics_share.py) for the others to answer with.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import orjson
from aiohttp import web

from faregate.config import QUALITY_ALERTS, AlertRule
from faregate.errors import FaregateError, InvalidRequest
from faregate.server.admin import health_detail, require_master
from faregate.server.request_checks import check_text
from faregate.server.share_publisher import publish_while_serving
from faregate.store.analytics import EVERY_GROUP
from faregate.store.analytics_rows import DIMENSIONS, Dimension, Percentiles, Slice, Totals
from faregate.store.rows import usd_text

if TYPE_CHECKING:
    from faregate.server.app import Gateway
    from faregate.store.analytics import Analytics
    from faregate.telemetry.alerts import AlertManager

RANGES = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000, "90d": 7776000}
DEFAULT_RANGE = "24h"
# Series bucket sizes to choose from: the smallest that gives at most MAX_POINTS points.
BUCKETS = (60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
MAX_POINTS = 120
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The alerts of worker 0, as it publishes them for the other workers to answer with.
ALERTS_VIEW = "alerts.json"


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter, clamped to [low, high]; `default` when absent or empty, a 400
    naming it when it is not an integer (also /admin/quality's)."""
    text = request.query.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer, not {text!r}.", param=name) from None
    return max(low, min(value, high))


def _text_param(request: web.Request, name: str) -> str | None:
    """A text parameter (a filter or a search), None when absent or empty."""
    text = request.query.get(name)
    return check_text(text, name) if text else None


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 4)


# Averages are divided out: kept to a tenth of a nano-dollar, below what any stored cost resolves.
AVERAGE_STEP = Decimal("1e-10")


def _money(value: Decimal) -> str:
    return usd_text(value.normalize()) if value else "0"


def _average(total: Decimal, count: int) -> str | None:
    return _money((total / count).quantize(AVERAGE_STEP)) if count else None


# Unix seconds the dashboard accepts: from 1970 to the year 9999 (beyond, SQL and datetime fail).
LATEST_TIMESTAMP = 253_402_300_799.0


# A time ending in " HH:MM" or " HHMM": an offset whose '+' a URL's query decoded to a space.
PLUS_DECODED = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:?\d{2})$")


def _timestamp(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            iso = PLUS_DECODED.sub(r"\1+\2", text.replace("Z", "+00:00"))
            moment = datetime.fromisoformat(iso)
            # No offset given: UTC (as the day buckets), not the server's local zone, so that the
            # same URL means the same time on every server.
            value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            raise InvalidRequest(
                f"'{name}' must be unix seconds or an ISO 8601 time, not {text!r}.", param=name
            ) from None
    if not math.isfinite(value) or not 0 <= value <= LATEST_TIMESTAMP:
        raise InvalidRequest(f"'{name}' must be a time between 1970 and 9999, not {text!r}.", param=name)
    return value


def bucket_for(seconds: float) -> int:
    for size in BUCKETS:
        if seconds / size <= MAX_POINTS:
            return size
    return BUCKETS[-1]


def totals_json(t: Totals) -> dict[str, Any]:
    lookups = t.cache_lookups
    return {
        "requests": t.requests,
        "errors": t.errors,
        # Of the requests taken on: a client's own 4xx (a loop on a rate limit, a bad key) does
        # not dilute an upstream's failures, as it does not count in latency either.
        "error_rate": _rate(t.errors, t.requests - t.client_errors),
        "client_errors": t.client_errors,
        "budget_refusals": t.budget_refusals,
        "rate_limited": t.rate_limited,
        "spend_usd": _money(t.cost),
        "baseline_usd": _money(t.baseline),
        "savings_usd": _money(t.savings),
        "savings_percent": None if not t.baseline else round(float(100 * t.savings / t.baseline), 2),
        "avg_cost_usd": _average(t.cost, t.requests),
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "empty_responses": t.empty_responses,
        "empty_rate": _rate(t.empty_responses, t.requests - t.client_errors),  # as error_rate
        "cache": {
            "lookups": lookups,
            "hits": t.cache_hits,
            "semantic_hits": t.semantic_hits,
            "hit_rate": _rate(t.cache_hits, lookups),
            "semantic_hit_rate": _rate(t.semantic_hits, lookups),
            "saved_usd": _money(t.cache_saved),
        },
    }


def _percentiles(p: Percentiles) -> dict[str, Any]:
    return {"count": p.count, "p50_ms": p.p50, "p95_ms": p.p95, "p99_ms": p.p99}


def measured_over(rule: AlertRule) -> str:
    if rule.metric == "daily_spend_usd":
        return "since 00:00 UTC"
    if rule.metric in QUALITY_ALERTS:
        return "the calibration so far"
    return f"last {rule.window_minutes:g} min"


def alerts_json(manager: AlertManager) -> dict[str, Any]:
    """The alerts as this process sees them: the rules, what fires, is pending and happened lately."""
    return {
        "interval_s": manager.settings.interval_s,
        "webhook": manager.settings.webhook is not None,
        "webhook_failures": manager.webhook_failures,
        "rules": [
            {
                "name": r.name,
                "metric": r.metric,
                "above": r.above,
                "below": r.below,
                # Spend is always per key, per set or not.
                "per": "key" if r.metric == "daily_spend_usd" else r.per,
                # What narrows the rule: two rules apart only in these read the same without them.
                "route": r.route,
                "model": r.model,
                "provider": r.provider,
                "key": r.key,
                "min_count": r.min_count,
                # What the rule measures over: the window, the UTC day (spend), or everything
                # a calibration has seen (quality rules).
                "measured_over": measured_over(r),
                "window_minutes": r.window_minutes,
                "for_minutes": r.for_minutes,
            }
            for r in manager.settings.rules
        ],
        "firing": [s.to_json("firing") for s in manager.firing()],
        "pending": [s.to_json("pending") for s in manager.pending()],
        "recent": [{"at": e.at, **e.payload} for e in manager.history],
    }


class DashboardUnavailable(FaregateError):
    status = 501
    type = "not_implemented"
    code = "dashboard_unavailable"


class DashboardApi:
    def __init__(self, gateway: Gateway, analytics: Analytics, alerts: AlertManager) -> None:
        self.gateway = gateway
        self.analytics = analytics
        self.alerts_manager = alerts
        self.master_key = gateway.master_key

    async def slice(self, request: web.Request) -> Slice:
        q = request.query
        now = time.time()
        until = _timestamp(q["until"], "until") if "until" in q else now + 1
        if "since" in q:
            since = _timestamp(q["since"], "since")
        else:
            name = q.get("range", DEFAULT_RANGE)
            if name == "all":
                first = await self.analytics.first_record_at()
                since = math.floor(first) if first is not None else until - RANGES[DEFAULT_RANGE]
            elif name in RANGES:
                since = until - RANGES[name]
            else:
                raise InvalidRequest(
                    f"'range' must be one of {', '.join([*RANGES, 'all'])}, not {name!r}.", param="range"
                )
        if since >= until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        key = _text_param(request, "key")
        keys = await self.analytics.resolve_keys(key) if key else None
        return Slice(
            since,
            until,
            _text_param(request, "model"),
            _text_param(request, "provider"),
            _text_param(request, "route"),
            keys,
        )

    @staticmethod
    def dimension(
        request: web.Request, default: Dimension, allowed: tuple[str, ...] = DIMENSIONS
    ) -> Dimension:
        by = request.query.get("by", default)
        if by not in allowed:
            raise InvalidRequest(f"'by' must be one of {', '.join(allowed)}, not {by!r}.", param="by")
        return cast(Dimension, by)

    @staticmethod
    def reply(s: Slice, payload: dict[str, Any]) -> web.Response:
        payload = {"since": s.since, "until": s.until, **payload}
        return web.Response(
            body=orjson.dumps(payload), content_type="application/json", headers={"Cache-Control": "no-store"}
        )

    def guarded(self, handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            require_master(request, self.master_key)
            return await handler(request)

        return run

    # --- endpoints ------------------------------------------------------------------------------

    async def summary(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        totals = await self.analytics.totals(s)
        overall = await self.analytics.reliability(s, None)
        reliability = overall[0] if overall else None
        # Of the requests taken on, as the error rate (totals_json): a flood of a client's 4xx
        # refusals diluted them.
        taken_on = totals.requests - totals.client_errors
        body = {
            "baseline_model": self.gateway.settings.baseline_model,
            **totals_json(totals),
            "fallbacks": reliability.fallbacks if reliability else 0,
            "fallback_rate": _rate(reliability.fallbacks, taken_on) if reliability else None,
            "retried": reliability.retried if reliability else 0,
            "retry_rate": _rate(reliability.retried, taken_on) if reliability else None,
        }
        return self.reply(s, body)

    async def series(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        bucket = int_param(request, "bucket", 0, 0, 31 * 86400)
        if bucket < 60:
            bucket = bucket_for(s.until - s.since)
        points = [
            {"t": int(g.group or 0), **totals_json(g.totals)} for g in await self.analytics.series(s, bucket)
        ]
        return self.reply(s, {"bucket_s": bucket, "points": points})

    async def breakdown(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        by = self.dimension(request, "model")
        limit = int_param(request, "limit", 100, 1, 1000)
        groups, total = await self.analytics.top_groups(s, by, limit)
        rows = [{"group": g.group, "label": g.label or g.group, **totals_json(g.totals)} for g in groups]
        # `groups`: how many there are in all, the rows being the first `limit` of them.
        return self.reply(s, {"by": by, "groups": total, "rows": rows})

    async def latency(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        by = self.dimension(request, "route")
        rows, step = await self.analytics.latency(s, by)
        data = [{"group": r.group, **_percentiles(r.latency), "ttft": _percentiles(r.ttft)} for r in rows]
        return self.reply(s, {"by": by, "sample_every": step, "rows": data})

    async def reliability(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        by = self.dimension(request, "provider")
        rows = [
            {
                "group": r.group,
                "requests": r.requests,
                "errors": r.errors,
                "error_rate": _rate(r.errors, r.taken_on),
                "empty_rate": _rate(r.empty_responses, r.taken_on),
                "fallback_rate": _rate(r.fallbacks, r.taken_on),
                "retry_rate": _rate(r.retried, r.taken_on),
            }
            for r in await self.analytics.reliability(s, by)
        ]
        limit = int_param(request, "limit", 50, 1, 1000)
        failures = [
            {"provider": p, "model": m, "outcome": o, "attempts": n}
            for p, m, o, n in await self.analytics.failed_attempts_by_offer(s, limit)
        ]
        return self.reply(s, {"by": by, "rows": rows, "failed_attempts": failures})

    async def feedback(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        by = self.dimension(request, "model", ("model", "route", "provider", "key"))
        # Every group's totals, not the top spenders': a group with scores may spend little.
        spend = {g.group: g.totals for g in await self.analytics.breakdown(s, by, EVERY_GROUP)}
        rows = []
        for r in await self.analytics.feedback(s, by):
            totals = spend.get(r.group, Totals())
            rows.append(
                {
                    "group": r.group,
                    "feedback": r.count,
                    "thumbs_up": r.thumbs_up,
                    "thumbs_down": r.thumbs_down,
                    "ratings": r.ratings,
                    "avg_rating": None if r.avg_rating is None else round(r.avg_rating, 3),
                    "satisfaction": None if r.satisfaction is None else round(r.satisfaction, 2),
                    "requests": totals.requests,
                    "spend_usd": _money(totals.cost),
                    "avg_cost_usd": _average(totals.cost, totals.requests),
                }
            )
        return self.reply(s, {"by": by, "rows": rows})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=health_detail(self.gateway), content_type="application/json")

    async def alerts(self, request: web.Request) -> web.Response:
        shared = self.gateway.shared_metrics
        # Worker 0's (module docstring); its own until worker 0 has published, in its first second.
        posted = shared.view(0, ALERTS_VIEW) if shared is not None and shared.index != 0 else None
        body = posted if posted is not None else orjson.dumps(alerts_json(self.alerts_manager))
        return web.Response(body=body, content_type="application/json")

    async def requests(self, request: web.Request) -> web.Response:
        s = await self.slice(request)
        q = request.query
        limit = int_param(request, "limit", 50, 1, 500)
        before = _timestamp(q["before"], "before") if q.get("before") else None
        search = (_text_param(request, "q") or "").strip() or None
        rows = await self.analytics.recent(
            s, search=search, limit=limit, before=before, before_id=_text_param(request, "before_id")
        )
        labels = await self.analytics.key_labels(sorted({r["key_id"] for r in rows if r["key_id"]}))
        for row in rows:
            # Stored as JSON text: passed through as JSON, not decoded and encoded again.
            row["attempts"] = orjson.Fragment(row["attempts"])
            row["key"] = labels.get(row["key_id"] or "", row["key_id"])
            row["stream"] = bool(row["stream"])
            row["empty_response"] = bool(row["empty_response"])
        # The next page's cursor: the last row's time and request id (several may share a time).
        last = rows[-1] if len(rows) == limit else None
        return self.reply(
            s,
            {
                "rows": rows,
                "next_before": None if last is None else last["created_at"],
                "next_before_id": None if last is None else last["request_id"],
            },
        )


def add_dashboard_api(app: web.Application, gateway: Gateway) -> None:
    insights = gateway.observability.insights if gateway.observability is not None else None
    if insights is None:
        master_key = gateway.master_key

        async def unavailable(request: web.Request) -> web.StreamResponse:
            require_master(request, master_key)
            raise DashboardUnavailable("The dashboard needs the SQLite or the PostgreSQL store.")

        app.router.add_get("/admin/dashboard/{name}", unavailable)
        return
    api = DashboardApi(gateway, insights.analytics, insights.alerts)
    for name in (
        "summary",
        "series",
        "breakdown",
        "latency",
        "reliability",
        "feedback",
        "health",
        "alerts",
        "requests",
    ):
        app.router.add_get(f"/admin/dashboard/{name}", api.guarded(getattr(api, name)))
    shared = gateway.shared_metrics
    if shared is not None and shared.index == 0:
        alerts = insights.alerts

        async def publish() -> None:
            shared.publish_view(ALERTS_VIEW, orjson.dumps(alerts_json(alerts)))

        publish_while_serving(app, "alerts-share", publish)
