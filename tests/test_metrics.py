"""Prometheus metrics: what one request record adds, the scrape-time state, and GET /metrics access."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faregate.config import BreakerSettings
from faregate.routing.health import HealthBoard
from faregate.telemetry import metrics as metrics_module
from faregate.telemetry.metrics import GatewayMetrics, StateCollector
from faregate.types import Attempt, RequestRecord
from harness import MASTER_KEY, GatewayProcess, SimProcess, run_gateway


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def record(**fields: object) -> RequestRecord:
    values: dict[str, object] = {
        "request_id": "r1",
        "created_at": 1_700_000_000.0,
        "key_id": "k1",
        "model_requested": "m",
        "model_used": "m",
        "provider": "p",
        "status": 200,
        "stream": True,
        "route": "chat",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "cost_usd": Decimal("0.001"),
        "baseline_cost_usd": Decimal("0.0075"),
        "latency_ms": 250.0,
        "ttft_ms": 40.0,
        "cache_status": "miss",
        "attempts": [Attempt("m", "p", "rate_limited", 5.0, status=429), Attempt("m", "p", "ok", 200.0)],
    }
    values.update(fields)
    return RequestRecord(**values)  # type: ignore[arg-type]


def test_a_record_counts_everywhere() -> None:
    metrics = GatewayMetrics()
    metrics.observe(record())
    metrics.observe(record(request_id="r2", cost_usd=Decimal("0.01")))  # dearer than the baseline
    hit = {"cache_status": "hit", "cost_usd": Decimal(0), "attempts": [], "ttft_ms": None, "latency_ms": 2.0}
    metrics.observe(record(request_id="r3", **hit))
    refused = {
        "model_used": None,
        "provider": None,
        "attempts": [],
        "cost_usd": Decimal(0),
        "baseline_cost_usd": Decimal(0),
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    metrics.observe(record(request_id="r4", status=402, **refused))
    metrics.observe(record(request_id="r5", status=429, **refused))
    text = metrics.render().decode()
    base = {"route": "chat", "model": "m", "provider": "p"}
    assert value(text, "faregate_requests_total", **base, status="200", cache="miss") == 2
    assert value(text, "faregate_requests_total", **base, status="200", cache="hit") == 1
    none = {"model": "none", "provider": "none"}
    assert value(text, "faregate_requests_total", route="chat", **none, status="402", cache="miss") == 1
    assert value(text, "faregate_tokens_total", **base, direction="in") == 3000
    assert value(text, "faregate_tokens_total", **base, direction="out") == 1500
    assert value(text, "faregate_cost_usd_total", **base) == pytest.approx(0.011)
    assert value(text, "faregate_baseline_cost_usd_total", **base) == pytest.approx(0.0225)
    assert value(text, "faregate_savings_usd_total", **base) == pytest.approx(0.0065 + 0.0075)
    assert value(text, "faregate_overspend_usd_total", **base) == pytest.approx(0.0025)
    assert value(text, "faregate_cache_savings_usd_total", cache="hit") == pytest.approx(0.0075)
    assert value(text, "faregate_request_duration_seconds_count", route="chat", model="m") == 3
    assert value(text, "faregate_request_duration_seconds_bucket", route="chat", model="m", le="0.005") == 1
    assert value(text, "faregate_time_to_first_token_seconds_count", route="chat", model="m") == 2
    offer = {"provider": "p", "model": "m"}
    assert value(text, "faregate_upstream_attempts_total", **offer, outcome="rate_limited") == 2
    assert value(text, "faregate_upstream_attempts_total", **offer, outcome="ok") == 2
    assert value(text, "faregate_budget_refusals_total") == 1
    assert value(text, "faregate_rate_limited_total") == 1
    assert "_created" not in text


def test_label_combinations_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cap's logic at a cap of 50: at the real one (5000) the observations took 8 s.
    monkeypatch.setattr(metrics_module, "MAX_SERIES", 50)
    metrics = GatewayMetrics()
    for i in range(metrics_module.MAX_SERIES + 10):
        metrics.observe(record(request_id=f"r{i}", model_used=f"m{i}", attempts=[]))
    text = metrics.render().decode()
    other = {"route": "other", "model": "other", "provider": "other"}
    assert value(text, "faregate_requests_total", **other, status="200", cache="miss") == 10


def test_a_broken_record_never_raises() -> None:
    metrics = GatewayMetrics()
    metrics.observe(record(latency_ms="not a number"))  # logged, not raised


class Counters:
    retries = 3
    fallbacks = 2
    verification_retries = 1
    verification_fallbacks = 0


class Writer:
    written = 10
    dropped = 1
    pending = 4


class Settlements:
    pending = 2
    landed = 5
    lost = 1
    spooled = 2
    replayed = 3


def test_state_is_read_at_scrape_time() -> None:
    board = HealthBoard(BreakerSettings(consecutive_failures=2))
    board.success("sim/good", 120.0)
    board.failure("sim/bad")
    board.failure("sim/bad")
    firing = [("slow-chat", {"route": "chat"})]
    metrics = GatewayMetrics(
        StateCollector(lambda: board, Counters(), Writer(), lambda: firing, settlements=Settlements())
    )
    text = metrics.render().decode()
    assert value(text, "faregate_retries_total") == 3 and value(text, "faregate_fallbacks_total") == 2
    assert value(text, "faregate_verification_retries_total") == 1
    assert value(text, "faregate_breaker_state", offer="sim/bad", state="open") == 1
    assert value(text, "faregate_breaker_state", offer="sim/bad", state="closed") == 0
    assert value(text, "faregate_breaker_state", offer="sim/good", state="closed") == 1
    assert value(text, "faregate_breaker_opened_total", offer="sim/bad") == 1
    assert value(text, "faregate_offer_latency_p99_seconds", offer="sim/good") == pytest.approx(0.12)
    assert value(text, "faregate_records_pending") == 4 and value(text, "faregate_records_dropped_total") == 1
    assert value(text, "faregate_alert_firing", alert="slow-chat", subject="route=chat") == 1
    assert value(text, "faregate_settlements_pending") == 2
    assert value(text, "faregate_settlements_recovered_total") == 5
    assert value(text, "faregate_settlements_lost_total") == 1
    assert value(text, "faregate_settlements_spooled") == 2
    assert value(text, "faregate_settlements_replayed_total") == 3


async def test_a_metered_gateway_exports_its_kept_settlements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settlement counters /health shows (a store outage's kept settlements) are on /metrics
    too, read from the gateway's own retry queue."""
    from aiohttp.test_utils import TestClient, TestServer

    from faregate.config import load_settings
    from faregate.server.app import build_gateway, create_app

    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "catalog": {"broad": False},
            "accounts": {"enabled": True},
        }
    )
    gateway = await build_gateway(settings)
    settlements = gateway.accounts.settlements
    assert settlements is not None
    settlements.landed, settlements.lost = 3, 1
    async with TestClient(TestServer(create_app(gateway))) as client:
        response = await client.get("/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"})
        text = await response.text()
    assert value(text, "faregate_settlements_pending") == 0
    assert value(text, "faregate_settlements_recovered_total") == 3
    assert value(text, "faregate_settlements_lost_total") == 1


# -- GET /metrics on a real gateway -------------------------------------------------------------


@pytest.mark.e2e
def test_metrics_endpoint_needs_the_master_key(gateway: GatewayProcess, api_key: str) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)
    client.chat.completions.create(model="qwen3-8b", messages=[{"role": "user", "content": "count me"}])
    url = f"http://127.0.0.1:{gateway.port}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {api_key}"}).status_code == 403
    response = httpx.get(url, headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    served = [
        v
        for (name, labels), v in found.items()
        if name == "faregate_requests_total"
        and {("model", "Qwen/Qwen3-8B"), ("status", "200")} <= set(labels)
    ]
    assert served and sum(served) >= 1
    assert any(name == "faregate_breaker_state" for name, _ in found)


@pytest.mark.e2e
def test_metrics_can_be_public(sim: SimProcess, tmp_path: Path) -> None:
    with run_gateway(tmp_path, sim, "metrics: {public: true}\n") as gw:
        response = httpx.get(f"http://127.0.0.1:{gw.port}/metrics")
        assert response.status_code == 200 and "faregate_retries_total" in response.text


def test_route_labels_never_carry_a_request_list_or_long_text() -> None:
    metrics = GatewayMetrics()
    metrics.observe(record(route="list:" + ",".join(["a-model"] * 500)))
    metrics.observe(record(request_id="r2", route="x" * 5000))
    text = metrics.render().decode()
    routes = {
        labels["route"] for (_, items) in samples(text) for labels in [dict(items)] if "route" in labels
    }
    assert routes == {"list", "other"}


def test_the_exposition_is_prometheus_clients_own() -> None:
    """metric_cells keeps plain floats instead of prometheus_client's locked Counter and
    Histogram; the text scraped must be byte for byte what those would give for the same records
    (names, label order, `le` strings, series order, zero series, NaN in no bucket)."""
    import math

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from faregate.telemetry.metrics import LATENCY_BUCKETS, TTFT_BUCKETS

    records = [
        record(),
        record(request_id="r2", cost_usd=Decimal("0.01"), ttft_ms=None, latency_ms=0.004),
        record(request_id="r3", cache_status="hit", cost_usd=Decimal(0), attempts=[], latency_ms=12.5),
        record(request_id="r4", status=402, model_used=None, provider=None, prompt_tokens=0, attempts=[]),
        record(request_id="r5", status=429, route=None, completion_tokens=0, empty_response=True),
        record(request_id="r6", model_used="m2", latency_ms=math.nan, ttft_ms=300_000.0),
        record(request_id="r7", empty_response=True, completion_tokens=0, latency_ms=1e9),
        record(request_id="r8", latency_ms=5.0, ttft_ms=10.0),  # exactly on a bucket's bound
    ]
    ours = GatewayMetrics()
    for r in records:
        ours.observe(r)

    registry = CollectorRegistry()
    docs = {family.name: family.documentation for family in ours._families.families}
    rm = ["route", "model", "provider"]

    def counter(name: str, labels: list[str] | None = None) -> Counter:
        return Counter(name, docs[name], labels or [], registry=registry)

    def histogram(name: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, docs[name], ["route", "model"], buckets=buckets, registry=registry)

    requests = counter("faregate_requests", [*rm, "status", "cache"])
    latency = histogram("faregate_request_duration_seconds", LATENCY_BUCKETS)
    ttft = histogram("faregate_time_to_first_token_seconds", TTFT_BUCKETS)
    tokens = counter("faregate_tokens", [*rm, "direction"])
    cost, baseline = counter("faregate_cost_usd", rm), counter("faregate_baseline_cost_usd", rm)
    savings, overspend = counter("faregate_savings_usd", rm), counter("faregate_overspend_usd", rm)
    cache_savings = counter("faregate_cache_savings_usd", ["cache"])
    empty = counter("faregate_empty_responses", ["model", "provider"])
    attempts = counter("faregate_upstream_attempts", ["provider", "model", "outcome"])
    refusals, limited = counter("faregate_budget_refusals"), counter("faregate_rate_limited")
    for r in records:
        route, model, provider = r.route or "none", r.model_used or "none", r.provider or "none"
        requests.labels(route, model, provider, str(r.status), r.cache_status).inc()
        lat, tt = latency.labels(route, model), ttft.labels(route, model)
        t_in = tokens.labels(route, model, provider, "in")
        t_out = tokens.labels(route, model, provider, "out")
        c, b = cost.labels(route, model, provider), baseline.labels(route, model, provider)
        sv, ov = savings.labels(route, model, provider), overspend.labels(route, model, provider)
        em = empty.labels(model, provider)
        lat.observe(r.latency_ms / 1000)
        if r.ttft_ms is not None:
            tt.observe(r.ttft_ms / 1000)
        if r.prompt_tokens:
            t_in.inc(r.prompt_tokens)
        if r.completion_tokens:
            t_out.inc(r.completion_tokens)
        fc, fb = float(r.cost_usd), float(r.baseline_cost_usd)
        if fc:
            c.inc(fc)
        if fb:
            b.inc(fb)
        if fb > fc:
            sv.inc(fb - fc)
        elif fc > fb:
            ov.inc(fc - fb)
        if r.cache_status in ("hit", "semantic-hit") and fb > fc:
            cache_savings.labels(r.cache_status).inc(fb - fc)
        if r.empty_response and r.status < 400:
            em.inc()
        if r.status == 402:
            refusals.inc()
        elif r.status == 429:
            limited.inc()
        for a in r.attempts:
            attempts.labels(a.provider, a.model, a.outcome).inc()
    assert ours.render().decode() == generate_latest(registry).decode()
