"""Prometheus families of the calibrated routes and cache, read at scrape time (nothing per request).

faregate_quality_target{route}                   the share of the strong path's quality to keep
faregate_quality_evidence{route}                 the e-value of the cut in force (>= 1/alpha:
                                                 certified; 1 when every request is strong)
faregate_quality_estimate{route}                 weighted estimate of routed / strong quality
faregate_strong_share{route}                     the strong-call share in force
faregate_verifications_total{route,kind}         verifications by label kind (free/cheap/paid)
faregate_verification_cost_usd_total{route}      what the shadow calls cost
faregate_verification_cap_reached{route}         1 while today's verification cap is spent
faregate_router_flagged{route}                   1 once the router is flagged (length fallback)
faregate_router_ranking{route,ranking}           1 for the ranking in force (prior / learned /
                                                 length), 0 for the others (router routes)
faregate_router_challenger_evidence{route}       the learned challenger's e-value against it
                                                 (routes with learn_domains; switches at 1/alpha)
faregate_cache_threshold                         the semantic cache's certified threshold
faregate_cache_wrong_hit_bound                   the bound on wrong hits / lookups at it
faregate_cache_verifications_total{kind}         its labels (free: unserved; paid: verified hits)
faregate_cache_verification_cost_usd_total       what verifying its hits cost
faregate_cache_verification_cap_reached          1 while today's cap for verifying its hits is spent
faregate_verifications_started_total             verifications that had a slot and began (this process)
faregate_verifications_dropped_total             dropped at shutdown before they began (this process)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class VerifierCounts(Protocol):
    """quality/verifier.py's counters."""

    started: int
    dropped: int


class QualityCollector(Collector):
    def __init__(
        self,
        figures: Callable[[], list[dict[str, Any]]],
        cache: Callable[[], dict[str, Any] | None] = lambda: None,
        verifier: VerifierCounts | None = None,
    ) -> None:
        self._figures = figures
        self._cache = cache
        self._verifier = verifier

    def collect(self) -> Iterable[Metric]:
        rows = self._figures()
        gauges = {
            "target": GaugeMetricFamily(
                "faregate_quality_target",
                "Quality target: share of the strong path's quality to keep.",
                labels=["route"],
            ),
            "evidence": GaugeMetricFamily(
                "faregate_quality_evidence",
                "E-value of the cut in force (certified at 1/(1-confidence)).",
                labels=["route"],
            ),
            "estimated_quality": GaugeMetricFamily(
                "faregate_quality_estimate",
                "Weighted estimate of routed quality relative to the strong path.",
                labels=["route"],
            ),
            "strong_share": GaugeMetricFamily(
                "faregate_strong_share", "Strong-call share in force.", labels=["route"]
            ),
        }
        flagged = GaugeMetricFamily(
            "faregate_router_flagged",
            "1: the router's live ranking was flagged (length fallback).",
            labels=["route"],
        )
        ranking = GaugeMetricFamily(
            "faregate_router_ranking",
            "1 for the router route's ranking in force (prior, learned or length).",
            labels=["route", "ranking"],
        )
        challenger = GaugeMetricFamily(
            "faregate_router_challenger_evidence",
            "E-value that the learned challenger ranks better than the ranking in force.",
            labels=["route"],
        )
        capped = GaugeMetricFamily(
            "faregate_verification_cap_reached", "1: today's verification cap is spent.", labels=["route"]
        )
        verifications = CounterMetricFamily(
            "faregate_verifications", "Shadow verifications, by label kind.", labels=["route", "kind"]
        )
        cost = CounterMetricFamily(
            "faregate_verification_cost_usd", "What shadow verification cost (USD).", labels=["route"]
        )
        for row in rows:
            route = str(row["route"])
            for name, family in gauges.items():
                family.add_metric([route], float(row[name]))
            flagged.add_metric([route], float(bool(row["flagged"])))
            capped.add_metric([route], float(bool(row["cap_reached"])))
            if row["kind"] == "router":
                for name in ("prior", "learned", "length"):
                    ranking.add_metric([route, name], float(row["ranking"] == name))
            if row.get("challenger_evidence") is not None:
                challenger.add_metric([route], float(row["challenger_evidence"]))
            for kind, count in sorted(row["by_label"].items()):
                verifications.add_metric([route, kind], float(count))
            cost.add_metric([route], float(Decimal(row["verification_cost_usd"])))
        yield from gauges.values()
        yield from (flagged, ranking, challenger, capped, verifications, cost)
        yield from self._cache_families()
        yield from self._verifier_families()

    def _verifier_families(self) -> Iterable[Metric]:
        """This process's own counts (summed across workers and instances, unlike the totals above,
        which every instance reads from the shared state)."""
        if self._verifier is None:
            return
        yield CounterMetricFamily(
            "faregate_verifications_started",
            "Verifications that had a slot and began (this process).",
            value=float(self._verifier.started),
        )
        yield CounterMetricFamily(
            "faregate_verifications_dropped",
            "Verifications dropped at shutdown before they began: their decisions stay unobserved.",
            value=float(self._verifier.dropped),
        )

    def _cache_families(self) -> Iterable[Metric]:
        cache = self._cache()
        if cache is None:
            return
        threshold = GaugeMetricFamily(
            "faregate_cache_threshold",
            "Semantic-cache acceptance threshold in force (absent while none is certified).",
        )
        if cache["threshold"] is not None:
            threshold.add_metric([], float(cache["threshold"]))
        yield threshold
        yield GaugeMetricFamily(
            "faregate_cache_wrong_hit_bound",
            "Upper confidence bound on wrong semantic hits / lookups at the threshold in force.",
            value=float(cache["wrong_hit_bound"]),
        )
        yield GaugeMetricFamily(
            "faregate_cache_max_wrong_hit_rate",
            "The configured bound.",
            value=float(cache["max_wrong_hit_rate"]),
        )
        checked = CounterMetricFamily(
            "faregate_cache_verifications", "Semantic-cache labels, by kind (free / paid).", labels=["kind"]
        )
        for kind, count in sorted(cache["by_label"].items()):
            checked.add_metric([kind], float(count))
        yield checked
        yield CounterMetricFamily(
            "faregate_cache_verification_cost_usd",
            "What verifying semantic hits cost (USD).",
            value=float(Decimal(cache["verification_cost_usd"])),
        )
        yield GaugeMetricFamily(
            "faregate_cache_verification_cap_reached",
            "1: today's cap for verifying semantic hits is spent (hits unverified for the day).",
            value=float(bool(cache["cap_reached"])),
        )
