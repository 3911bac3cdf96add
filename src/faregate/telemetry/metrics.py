"""Prometheus metrics, served at GET /metrics in the text exposition format.

Counters and histograms are updated from every finished request record (a pipeline
listener); live state (breakers, retry and fallback counters, the record writer, firing
alerts) is read at scrape time by a collector, so it costs nothing per request.

The listener runs on the request path, so it stays cheap: the labelled children of one
(route, model, provider, status, cache) combination are looked up once and kept in a dict,
and a request then costs one dict lookup and a dozen additions to plain floats
(metric_cells: no lock, unlike prometheus_client's own Counter and Histogram). Label values come from
small known sets (configured routes and canonical model names, providers, HTTP statuses;
a request's own `models` list is the route "list"), never a client's own text; a cap on the
number of combinations folds anything beyond it into "other" so a misbehaving client
cannot blow up the series count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from faregate.telemetry.metric_cells import Buckets, Cell, Families
from faregate.types import RequestRecord

log = logging.getLogger("faregate.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds; request latency spans cache hits (ms) to long reasoning answers (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30)
# Distinct label combinations kept per family before folding into "other".
MAX_SERIES = 5000
NONE = "none"
OTHER = "other"
BREAKER_STATES = ("closed", "half_open", "open")


class HealthSource(Protocol):
    """What the state collector reads (routing.health.HealthBoard has it)."""

    def snapshot(self) -> dict[str, dict[str, object]]: ...


class CounterSource(Protocol):
    retries: int
    fallbacks: int
    verification_retries: int
    verification_fallbacks: int


class CascadeSource(Protocol):
    judged: int
    escalated: int


class WriterSource(Protocol):
    written: int
    dropped: int

    @property
    def pending(self) -> int: ...


class SettlementSource(Protocol):
    """accounts.settle_retry.SettlementRetry: settlements a store outage held up."""

    landed: int
    lost: int
    replayed: int

    @property
    def pending(self) -> int: ...

    @property
    def spooled(self) -> int: ...


@dataclass(slots=True)
class _RequestSeries:
    """The children of one (route, model, provider, status, cache) combination."""

    requests: Cell
    latency: Buckets
    ttft: Buckets
    tokens_in: Cell
    tokens_out: Cell
    cost: Cell
    baseline: Cell
    savings: Cell
    overspend: Cell
    empty: Cell


class StateCollector(Collector):
    """Gauges and counters read from live objects at scrape time."""

    def __init__(
        self,
        health: Callable[[], HealthSource] | None = None,
        counters: CounterSource | None = None,
        writer: WriterSource | None = None,
        alerts: Callable[[], Iterable[tuple[str, dict[str, str]]]] | None = None,
        cascades: CascadeSource | None = None,
        settlements: SettlementSource | None = None,
    ) -> None:
        self._health = health
        self._counters = counters
        self._writer = writer
        self._cascades = cascades
        self._alerts = alerts
        self._settlements = settlements

    def collect(self) -> Iterable[Metric]:
        if self._counters is not None:
            yield CounterMetricFamily(
                "faregate_retries",
                "Upstream calls of requests retried on the same offer (verifications' apart).",
                self._counters.retries,
            )
            yield CounterMetricFamily(
                "faregate_fallbacks",
                "Times a request called another offer (model or provider) after a failed call.",
                self._counters.fallbacks,
            )
            yield CounterMetricFamily(
                "faregate_verification_retries",
                "Quality verifications' shadow and judge calls retried on the same offer.",
                self._counters.verification_retries,
            )
            yield CounterMetricFamily(
                "faregate_verification_fallbacks",
                "Times a quality verification's call called another offer after a failed call.",
                self._counters.verification_fallbacks,
            )
        if self._cascades is not None:
            yield CounterMetricFamily(
                "faregate_cascade_judged", "Cascade answers judged.", self._cascades.judged
            )
            yield CounterMetricFamily(
                "faregate_cascade_escalated",
                "Cascade answers a judge refused, so the next step was asked.",
                self._cascades.escalated,
            )
        if self._health is not None:
            yield from self._breakers(self._health().snapshot())
        if self._writer is not None:
            yield GaugeMetricFamily(
                "faregate_records_pending", "Request records waiting to be written.", self._writer.pending
            )
            yield CounterMetricFamily(
                "faregate_records_written", "Request records written to the store.", self._writer.written
            )
            yield CounterMetricFamily(
                "faregate_records_dropped",
                "Request records dropped because the store could not keep up.",
                self._writer.dropped,
            )
        if self._settlements is not None:
            yield from self._settlement_metrics(self._settlements)
        if self._alerts is not None:
            firing = GaugeMetricFamily(
                "faregate_alert_firing", "1 for each alert firing now.", labels=["alert", "subject"]
            )
            for name, labels in self._alerts():
                firing.add_metric([name, ",".join(f"{k}={v}" for k, v in sorted(labels.items()))], 1)
            yield firing

    @staticmethod
    def _settlement_metrics(settlements: SettlementSource) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "faregate_settlements_pending",
            "Settlements the accounts store could not take yet (an outage), retried in the background.",
            settlements.pending,
        )
        yield CounterMetricFamily(
            "faregate_settlements_recovered",
            "Settlements held up by an accounts store outage that landed later.",
            settlements.landed,
        )
        yield CounterMetricFamily(
            "faregate_settlements_lost",
            "Settlements held up by an accounts store outage and given up: their holds expire uncharged.",
            settlements.lost,
        )
        yield GaugeMetricFamily(
            "faregate_settlements_spooled",
            "Of the pending settlements, those on disk in the spool (a killed process loses none of them).",
            settlements.spooled,
        )
        yield CounterMetricFamily(
            "faregate_settlements_replayed",
            "Kept settlements taken over from the spool of a process that stopped before they landed.",
            settlements.replayed,
        )

    @staticmethod
    def _breakers(snapshot: dict[str, dict[str, object]]) -> Iterable[Metric]:
        state = GaugeMetricFamily(
            "faregate_breaker_state",
            "Circuit breaker state per offer (provider/model): 1 for the current state.",
            labels=["offer", "state"],
        )
        opened = CounterMetricFamily(
            "faregate_breaker_opened", "Times the breaker of an offer opened.", labels=["offer"]
        )
        error_rate = GaugeMetricFamily(
            "faregate_offer_error_rate", "Share of recent calls to an offer that failed.", labels=["offer"]
        )
        cooling = GaugeMetricFamily(
            "faregate_offer_cooling_seconds",
            "Seconds until every key may call an offer first again, as its upstream's Retry-After said.",
            labels=["offer"],
        )
        keys_cooling = GaugeMetricFamily(
            "faregate_offer_keys_cooling",
            "API keys an offer's upstream told to wait (a long Retry-After) whose wait still runs.",
            labels=["offer"],
        )
        p99 = GaugeMetricFamily(
            "faregate_offer_latency_p99_seconds",
            "Moving p99 latency of successful calls to an offer.",
            labels=["offer"],
        )
        for offer, info in snapshot.items():
            current = str(info.get("breaker"))
            for name in BREAKER_STATES:
                state.add_metric([offer, name], 1.0 if name == current else 0.0)
            opened.add_metric([offer], _number(info.get("times_opened")))
            error_rate.add_metric([offer], _number(info.get("error_rate")))
            cooling.add_metric([offer], _number(info.get("cooling_s")))
            keys_cooling.add_metric([offer], _number(info.get("keys_cooling")))
            latency = info.get("latency_ms")
            if isinstance(latency, dict) and latency.get("p99") is not None:
                p99.add_metric([offer], _number(latency["p99"]) / 1000)
        yield from (state, opened, error_rate, cooling, keys_cooling, p99)


MAX_LABEL_CHARS = 100


def _bounded_route(route: str | None) -> str:
    if not route:
        return NONE
    if route.startswith("list:"):
        return "list"
    return route if len(route) <= MAX_LABEL_CHARS else OTHER


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class GatewayMetrics:
    """The gateway's metric families, in a registry of its own (not the process-global one).

    The per-request families are metric_cells' lock-free counters and histograms (the listener
    runs on every request); the state collector is read at scrape time."""

    def __init__(
        self, collector: StateCollector | None = None, route_label: Callable[[str | None], str] | None = None
    ) -> None:
        # No `_created` series beside every counter: they double the output and Prometheus
        # does not need them (a process-wide switch of the client library).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        # The route label comes from a closed set (routing.plan.Planner.route_label); without one,
        # a route is kept only if it is short and not a request's own list.
        self._route_label = route_label or _bounded_route
        f = self._families = Families()
        route_model = ["route", "model", "provider"]
        self._requests = f.counter(
            "faregate_requests",
            "Requests finished, by route, model used, provider, HTTP status and cache outcome.",
            [*route_model, "status", "cache"],
        )
        self._latency = f.histogram(
            "faregate_request_duration_seconds",
            "Time from receiving a request to its last byte.",
            ["route", "model"],
            LATENCY_BUCKETS,
        )
        self._ttft = f.histogram(
            "faregate_time_to_first_token_seconds",
            "Time from receiving a streaming request to its first content.",
            ["route", "model"],
            TTFT_BUCKETS,
        )
        self._tokens = f.counter("faregate_tokens", "Tokens billed.", [*route_model, "direction"])
        self._cost = f.counter("faregate_cost_usd", "What requests cost (USD).", route_model)
        self._baseline = f.counter(
            "faregate_baseline_cost_usd",
            "What the same usage would have cost on the baseline model (USD).",
            route_model,
        )
        # Savings can be negative (a model dearer than the baseline), and a counter may only grow:
        # the two signs are kept apart. Net savings = savings - overspend = baseline - cost.
        self._savings = f.counter(
            "faregate_savings_usd", "Baseline cost minus cost, where positive (USD).", route_model
        )
        self._overspend = f.counter(
            "faregate_overspend_usd", "Cost minus baseline cost, where positive (USD).", route_model
        )
        self._cache_savings = f.counter(
            "faregate_cache_savings_usd",
            "Baseline cost of requests answered from the cache (USD).",
            ["cache"],
        )
        self._empty = f.counter(
            "faregate_empty_responses", "Answers with no completion tokens.", ["model", "provider"]
        )
        self._attempts = f.counter(
            "faregate_upstream_attempts",
            "Upstream calls, by provider, model and outcome (ok or the failure kind).",
            ["provider", "model", "outcome"],
        )
        self._budget_refusals = f.counter(
            "faregate_budget_refusals", "Requests refused for lack of credit or budget (402)."
        ).labels()
        self._rate_limited = f.counter(
            "faregate_rate_limited", "Requests refused by a key's rate limit (429)."
        ).labels()
        self.registry.register(f)
        if collector is not None:
            self.registry.register(collector)
        self._series: dict[tuple[str, str, str, int, str], _RequestSeries] = {}
        self._attempt_series: dict[tuple[str, str, str], Cell] = {}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, record: RequestRecord) -> None:
        """The pipeline listener. Never raises: metrics must not break a request."""
        try:
            self._observe(record)
        except Exception:
            log.exception("could not update metrics for request %s", record.request_id)

    def _observe(self, record: RequestRecord) -> None:
        series = self._series_for(record)
        series.requests.value += 1
        series.latency.observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            series.ttft.observe(record.ttft_ms / 1000)
        if record.prompt_tokens:
            series.tokens_in.value += record.prompt_tokens
        if record.completion_tokens:
            series.tokens_out.value += record.completion_tokens
        cost, baseline = float(record.cost_usd), float(record.baseline_cost_usd)
        if cost:
            series.cost.value += cost
        if baseline:
            series.baseline.value += baseline
        if baseline > cost:
            series.savings.value += baseline - cost
        elif cost > baseline:
            series.overspend.value += cost - baseline
        if record.cache_status in ("hit", "semantic-hit") and baseline > cost:
            self._cache_savings.labels(record.cache_status).value += baseline - cost
        if record.empty_response and record.status < 400:
            series.empty.value += 1
        if record.status == 402:
            self._budget_refusals.value += 1
        elif record.status == 429:
            self._rate_limited.value += 1
        for attempt in record.attempts:
            key = (attempt.provider, attempt.model, attempt.outcome)
            child = self._attempt_series.get(key)
            if child is None:
                if len(self._attempt_series) >= MAX_SERIES:
                    key = (OTHER, OTHER, attempt.outcome)
                child = self._attempt_series[key] = self._attempts.labels(*key)
            child.value += 1

    def _series_for(self, record: RequestRecord) -> _RequestSeries:
        key = (
            self._route_label(record.route),
            record.model_used or NONE,
            record.provider or NONE,
            record.status,
            record.cache_status,
        )
        found = self._series.get(key)
        if found is not None:
            return found
        if len(self._series) >= MAX_SERIES:
            key = (OTHER, OTHER, OTHER, record.status, record.cache_status)
            found = self._series.get(key)
            if found is not None:
                return found
        route, model, provider, status, cache = key
        found = self._series[key] = _RequestSeries(
            requests=self._requests.labels(route, model, provider, str(status), cache),
            latency=self._latency.labels(route, model),
            ttft=self._ttft.labels(route, model),
            tokens_in=self._tokens.labels(route, model, provider, "in"),
            tokens_out=self._tokens.labels(route, model, provider, "out"),
            cost=self._cost.labels(route, model, provider),
            baseline=self._baseline.labels(route, model, provider),
            savings=self._savings.labels(route, model, provider),
            overspend=self._overspend.labels(route, model, provider),
            empty=self._empty.labels(model, provider),
        )
        return found
