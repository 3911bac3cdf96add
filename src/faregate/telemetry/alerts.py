"""Alerts: rules from the config, evaluated every `alerts.interval_s` in a background task.

Each rule is measured per subject (alert_values.measure). A subject past the threshold
becomes pending; once it has stayed past it for `for_minutes` the alert fires: it is
logged, listed on the dashboard (and in /metrics), and POSTed to the webhook if one is
configured. When the subject is back within bounds (or has no data any more) the alert
resolves, which is logged and posted too.

The process that posts keeps its firing alerts in the store (store/alert_memory.py) and reads
them back before its first evaluation: after a restart an alert still firing is not posted again,
and one that cleared meanwhile is posted resolved.

Evaluation reads the store, so with several gateway processes on one database each
evaluates the same rules and would post the same alert: enable the webhook on one of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from faregate.config import QUALITY_ALERTS, AlertRule, AlertSettings
from faregate.config.env_refs import expanded_headers
from faregate.errors import ConfigError
from faregate.lifecycle import Periodic
from faregate.store.alert_memory import AlertMemory, FiredAlert
from faregate.store.analytics import Analytics
from faregate.store.protocols import StoreUnavailable
from faregate.telemetry.alert_values import (
    UNITS,
    CacheFigures,
    Measurement,
    QualityFigures,
    breaches,
    judged,
    measure,
)
from faregate.telemetry.log_limit import EVERY_LINE

log = logging.getLogger("faregate.alerts")

# Events kept for the dashboard's "recent alerts".
HISTORY = 200
WEBHOOK_TRIES = 3


@dataclass(slots=True)
class AlertState:
    rule: AlertRule
    subject: str | None
    label: str | None
    value: float
    pending_since: float
    fired_at: float | None = None

    @property
    def firing(self) -> bool:
        return self.fired_at is not None

    @property
    def labels(self) -> dict[str, str]:
        if self.subject is None:
            return {}
        return {self.rule.per or "key": self.subject}

    def describe(self) -> str:
        rule = self.rule
        what = {
            "p99_latency_ms": "p99 latency",
            "error_rate": "error rate",
            "fallback_rate": "fallback rate",
            "satisfaction": "satisfaction",
            "daily_spend_usd": "spend today (UTC)",
            "quality_margin": "estimated quality minus target",
            "router_flagged": "router flagged (1: falls back to length)",
            "verification_cap_reached": "verification cap reached (1: calibration paused)",
            "cache_verification_cap_reached": "the semantic cache's verification cap reached "
            "(1: served hits unverified for the day)",
        }[rule.metric]
        filters = (
            ("route", rule.route),
            ("model", rule.model),
            ("provider", rule.provider),
            ("key", rule.key),
        )
        per = rule.per or "key"
        # A rule narrowed to the dimension it is evaluated per names its subject once (as the subject).
        scope = [
            f"{name} {value}"
            for name, value in filters
            if value is not None and (self.subject is None or name != per)
        ]
        if self.subject is not None:
            scope.append(f"{per} {self.label or self.subject}")
        whose = f" of {', '.join(scope)}" if scope else ""
        unit = UNITS[rule.metric]
        threshold = rule.above if rule.above is not None else rule.below
        direction = "above" if rule.above is not None else "below"
        # Spend counts since 00:00 UTC; a calibrated route's figures are its whole history.
        timeless = rule.metric == "daily_spend_usd" or rule.metric in QUALITY_ALERTS
        window = "" if timeless else f" over the last {rule.window_minutes:g} min"
        return (
            f"{rule.name}: {what}{whose} is {_fmt(self.value, unit)} "
            f"({direction} {_fmt(threshold or 0.0, unit)}){window}"
        )

    def to_json(self, status: str) -> dict[str, Any]:
        rule = self.rule
        return {
            "status": status,
            "rule": rule.name,
            "metric": rule.metric,
            "labels": self.labels,
            "subject_label": self.label,
            "value": round(self.value, 6),
            "unit": UNITS[rule.metric],
            "comparison": "above" if rule.above is not None else "below",
            "threshold": rule.above if rule.above is not None else rule.below,
            "window_minutes": rule.window_minutes,
            "for_minutes": rule.for_minutes,
            "pending_since": _iso(self.pending_since),
            "fired_at": _iso(self.fired_at) if self.fired_at is not None else None,
            "message": self.describe(),
        }


def _fmt(value: float, unit: str) -> str:
    if unit == "USD":
        return f"${value:,.4f}"
    if unit == "%":
        return f"{value:.1f}%"
    if unit == "points":
        # A quality margin is a fraction of a point more often than not; to the unit, -0.3 read "-0".
        return f"{value:,.1f} points"
    return f"{value:,.0f} {unit}".rstrip()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(slots=True)
class AlertEvent:
    at: float
    payload: dict[str, Any]


@dataclass(slots=True)
class AlertManager:
    settings: AlertSettings
    analytics: Analytics
    states: dict[tuple[str, str | None], AlertState] = field(default_factory=dict)
    history: deque[AlertEvent] = field(default_factory=lambda: deque(maxlen=HISTORY))
    webhook_failures: int = 0
    # The calibrated routes' figures, for the quality rules (set when some route has `quality`).
    quality: QualityFigures | None = None
    # The semantic cache's calibrated acceptance's figures (set when it is calibrated).
    quality_cache: CacheFigures | None = None
    # Where the alerts posted as firing are kept across restarts (set where the webhook is).
    memory: AlertMemory | None = None
    # Log each alert that fires or resolves. Of several workers one does (worker 0, the one that
    # posts); the others evaluate for their own dashboards, and would write the same line again.
    announce: bool = True
    _recalled: bool = False
    _loop: Periodic | None = None
    _session: aiohttp.ClientSession | None = None
    _webhook_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        webhook = self.settings.webhook
        if webhook is not None:
            try:  # `${NAME}` in a header: the variable's value, read once (config/env_refs.py)
                self._webhook_headers = expanded_headers(webhook.headers)
            except ValueError as exc:
                raise ConfigError(f"alerts.webhook: {exc}") from None

    def firing(self) -> list[AlertState]:
        return [s for s in self.states.values() if s.firing]

    def pending(self) -> list[AlertState]:
        return [s for s in self.states.values() if not s.firing]

    def firing_labels(self) -> list[tuple[str, dict[str, str]]]:
        """For the metrics collector."""
        return [(s.rule.name, s.labels) for s in self.firing()]

    async def start(self) -> None:
        if self._loop is None and self.settings.rules:
            # A store hiccup or a bug fails one round (logged), never alerting for good.
            self._loop = Periodic("alerts", self.settings.interval_s, self._evaluate_round, run_first=True)
            self._loop.start()

    async def close(self) -> None:
        if self._loop is not None:
            await self._loop.stop()
            self._loop = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _evaluate_round(self) -> None:
        await self.evaluate()

    async def evaluate(self, now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate every rule once; returns the events (fired, resolved) it produced."""
        now = time.time() if now is None else now
        if not await self._recall():
            return []
        changes: list[tuple[str, AlertState]] = []
        for rule in self.settings.rules:
            try:
                measured = await measure(rule, self.analytics, now, self.quality, self.quality_cache)
            except StoreUnavailable as exc:
                # Expected (a database restarting): one line, the rule's alerts left as they are.
                log.warning("alert rule %s could not be evaluated: %s", rule.name, exc)
                continue
            except Exception:
                log.exception("alert rule %s could not be evaluated", rule.name)
                continue
            changes += self._update(rule, measured, now)
        events = [state.to_json(status) for status, state in changes]
        await self._keep(changes)
        for event in events:
            self.history.appendleft(AlertEvent(now, event))
        # Concurrently, so one slow or failing webhook call does not hold up the others.
        await asyncio.gather(*(self._post(event) for event in events))
        return events

    def _update(
        self, rule: AlertRule, measured: list[Measurement], now: float
    ) -> list[tuple[str, AlertState]]:
        """The rule's alerts that fired or resolved, each with its new status."""
        events: list[tuple[str, AlertState]] = []
        seen: set[tuple[str, str | None]] = set()
        for m in measured:
            key = (rule.name, m.subject)
            if not judged(rule, m):
                # Too few requests to judge: a firing alert stays firing (resolved now, it would fire
                # again once traffic picks up: a flap, posted each way); none is raised or pending.
                state = self.states.get(key)
                if state is not None and state.firing:
                    seen.add(key)
                continue
            if not breaches(rule, m):
                continue
            seen.add(key)
            state = self.states.get(key)
            if state is None:
                state = self.states[key] = AlertState(rule, m.subject, m.label, m.value, now)
            state.value = m.value
            if not state.firing and now - state.pending_since >= rule.for_minutes * 60:
                state.fired_at = now
                if self.announce:
                    log.warning("alert firing: %s", state.describe(), extra=EVERY_LINE)
                events.append(("firing", state))
        for key in [k for k in self.states if k[0] == rule.name and k not in seen]:
            state = self.states.pop(key)
            if state.firing:
                if self.announce:
                    log.info("alert resolved: %s", state.describe(), extra=EVERY_LINE)
                events.append(("resolved", state))
        return events

    async def _recall(self) -> bool:
        """Before the first evaluation: the alerts posted as firing before a restart, as firing
        states. False while the store cannot say (the round waits: evaluated without them, an
        alert still firing would be posted again)."""
        if self.memory is None or self._recalled:
            return True
        rules = {rule.name: rule for rule in self.settings.rules}
        try:
            fired = await self.memory.fired()
            for gone in [alert for alert in fired if alert.rule not in rules]:
                # Its rule is no longer configured: nothing measures it any more.
                log.info("alert %s of a rule no longer configured is forgotten", gone.rule)
                await self.memory.forget(gone.rule, gone.subject)
        except StoreUnavailable as exc:
            log.warning("alerts: could not read the alerts firing before the restart: %s", exc)
            return False
        except Exception:
            # A row this version cannot read must not stop the alerts for good: evaluated afresh,
            # an alert still firing is posted again at worst.
            log.exception("alerts: the alerts firing before the restart could not be read; starting afresh")
            self._recalled = True
            return True
        for alert in fired:
            rule = rules.get(alert.rule)
            if rule is not None:
                self.states[(rule.name, alert.subject)] = AlertState(
                    rule, alert.subject, alert.label, alert.value, alert.pending_since, alert.fired_at
                )
        self._recalled = True
        return True

    async def _keep(self, changes: list[tuple[str, AlertState]]) -> None:
        """Remember what fired and forget what resolved. A store that fails here costs a repeat
        post after the next restart at worst: the events are posted anyway."""
        if self.memory is None:
            return
        for status, state in changes:
            try:
                if status == "firing" and state.fired_at is not None:
                    fired = FiredAlert(
                        state.rule.name,
                        state.subject,
                        state.label,
                        state.value,
                        state.pending_since,
                        state.fired_at,
                    )
                    await self.memory.remember(fired)
                else:
                    await self.memory.forget(state.rule.name, state.subject)
            except StoreUnavailable as exc:
                log.warning("alert %s could not be kept in the store: %s", state.rule.name, exc)

    async def _post(self, event: dict[str, Any]) -> None:
        webhook = self.settings.webhook
        if webhook is None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=webhook.timeout_s))
        for attempt in range(WEBHOOK_TRIES):
            try:
                async with self._session.post(
                    webhook.url, json=event, headers=self._webhook_headers
                ) as response:
                    if response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}".replace(webhook.url, where(webhook.url))
            if attempt + 1 < WEBHOOK_TRIES:
                await asyncio.sleep(0.5 * 2**attempt)
        self.webhook_failures += 1
        # Slack, Discord and Teams webhooks carry their secret in the URL (an error may quote it).
        shown = where(webhook.url)
        problem = problem.replace(webhook.url, shown)
        log.error("alert webhook %s failed after %d tries: %s", shown, WEBHOOK_TRIES, problem)


def where(url: str) -> str:
    """A webhook URL as the log may show it: its scheme, host and port. The rest stays out: a
    Slack or Discord webhook's path (or a query's token) is the credential that posts to it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address, bracketed as in the URL
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""  # not a port number: the post failed on it, and the host still says where
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"
