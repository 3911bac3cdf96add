"""What an alert rule measures: its metric per subject (a route, model, provider, key, or all
traffic), read from the store with the dashboard's queries."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from faregate.config import CACHE_ALERTS, QUALITY_ALERTS, AlertRule
from faregate.store.analytics import EVERY_GROUP, Analytics
from faregate.store.analytics_rows import Dimension, Slice

DAY_S = 86400
# The calibrated routes' figures (quality/service.py), read when a quality rule is evaluated.
QualityFigures = Callable[[], list[dict[str, Any]]]
# The semantic cache's calibrated acceptance's figures (quality/cache_live.py; None: not calibrated).
CacheFigures = Callable[[], dict[str, Any] | None]


@dataclass(slots=True, frozen=True)
class Measurement:
    """One subject's value. `subject` is None when the rule is not evaluated per subject."""

    subject: str | None
    value: float
    count: int
    label: str | None = None
    # The exact amount, for money.
    usd: Decimal | None = None


UNITS = {
    "p99_latency_ms": "ms",
    "error_rate": "%",
    "fallback_rate": "%",
    "satisfaction": "%",
    "daily_spend_usd": "USD",
    "quality_margin": "points",
    "router_flagged": "",
    "verification_cap_reached": "",
    "cache_verification_cap_reached": "",
}


def day_start(now: float) -> float:
    """00:00 UTC of the day holding `now`."""
    return now - now % DAY_S


async def rule_slice(rule: AlertRule, analytics: Analytics, now: float) -> Slice:
    since = day_start(now) if rule.metric == "daily_spend_usd" else now - rule.window_minutes * 60
    keys = await analytics.resolve_keys(rule.key) if rule.key is not None else None
    return Slice(since, now, model=rule.model, provider=rule.provider, route=rule.route, keys=keys)


async def measure(
    rule: AlertRule,
    analytics: Analytics,
    now: float | None = None,
    quality: QualityFigures | None = None,
    cache: CacheFigures | None = None,
) -> list[Measurement]:
    """The rule's metric for each subject with data in the window."""
    if rule.metric in CACHE_ALERTS:
        return cache_measurements(rule, cache() if cache is not None else None)
    if rule.metric in QUALITY_ALERTS:
        return quality_measurements(rule, quality() if quality is not None else [])
    now = time.time() if now is None else now
    measured = await _measure_records(rule, analytics, now)
    if rule.per == "key" and rule.metric != "daily_spend_usd":
        # Keys are named as the dashboard names them (the spend rule's breakdown has them already).
        labels = await analytics.key_labels([m.subject for m in measured if m.subject is not None])
        measured = [replace(m, label=labels.get(m.subject or "")) for m in measured]
    return measured


async def _measure_records(rule: AlertRule, analytics: Analytics, now: float) -> list[Measurement]:
    s = await rule_slice(rule, analytics, now)
    per: Dimension | None = rule.per
    if rule.metric == "p99_latency_ms":
        rows, _ = await analytics.latency(s, per)
        return [
            Measurement(r.group, r.latency.p99, r.latency.count) for r in rows if r.latency.p99 is not None
        ]
    if rule.metric in ("error_rate", "fallback_rate"):
        out = []
        for r in await analytics.reliability(s, per):
            # Errors and fallbacks among the requests taken on: a flood of a client's 4xx
            # refusals (a loop on its rate limit) diluted an upstream's outage below the threshold.
            events = r.errors if rule.metric == "error_rate" else r.fallbacks
            if r.taken_on:
                out.append(Measurement(r.group, 100.0 * events / r.taken_on, r.taken_on))
        return out
    if rule.metric == "satisfaction":
        return [
            Measurement(r.group, r.satisfaction, r.count)
            for r in await analytics.feedback(s, per, by_feedback_time=True)
            if r.satisfaction is not None
        ]
    # daily_spend_usd: always per key, since 00:00 UTC; every key, not the top N spenders (a
    # `below` rule is about the least ones, and any number of keys may be past an `above` one).
    return [
        Measurement(g.group, float(g.totals.cost), g.totals.requests, g.label, g.totals.cost)
        for g in await analytics.breakdown(s, "key", limit=EVERY_GROUP)
        if g.group is not None
    ]


def quality_measurements(rule: AlertRule, figures: list[dict[str, Any]]) -> list[Measurement]:
    """Per calibrated route (quality/live.py's figures): quality_margin is the estimated quality of
    the cut in force minus the target, in points (below 0: the estimate is under the target; its
    count is the verifications behind it); router_flagged and verification_cap_reached are 1 or 0
    (a flag or a spent cap is evidence enough: their count is min_count)."""
    out = []
    for row in figures:
        if rule.route is not None and row["route"] != rule.route:
            continue
        if rule.metric == "quality_margin":
            margin = 100.0 * (float(row["estimated_quality"]) - float(row["target"]))
            out.append(Measurement(row["route"], margin, int(row["verifications"])))
        else:
            flag = row["flagged"] if rule.metric == "router_flagged" else row["cap_reached"]
            out.append(Measurement(row["route"], float(bool(flag)), rule.min_count))
    return out


def cache_measurements(rule: AlertRule, figures: dict[str, Any] | None) -> list[Measurement]:
    """The semantic cache's calibration (not per subject): cache_verification_cap_reached is 1 while
    today's cap for verifying served hits is spent, else 0 (evidence enough: its count is
    min_count). Nothing while the cache is not calibrated."""
    if figures is None:
        return []
    return [Measurement(None, float(bool(figures["cap_reached"])), rule.min_count)]


def judged(rule: AlertRule, m: Measurement) -> bool:
    """Is there enough evidence (min_count requests or scores) for the rule to judge? Spend rules
    need none."""
    return rule.metric == "daily_spend_usd" or m.count >= rule.min_count


def breaches(rule: AlertRule, m: Measurement) -> bool:
    """Is this measurement past the rule's threshold (with enough evidence)?"""
    if not judged(rule, m):
        return False
    if rule.above is not None:
        if m.usd is not None:
            # Money is compared exactly, not as binary floats.
            return m.usd > Decimal(str(rule.above))
        return m.value > rule.above
    return rule.below is not None and m.value < rule.below
