"""Everything the gateway runs to be seen: metrics, traces, rollups, alerts, and the analytics
connection behind the dashboard and feedback. Built once with the gateway, closed with it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from faregate.config import Settings
from faregate.lifecycle import Periodic
from faregate.routing.attempts import AttemptRunner
from faregate.store.analytics import Analytics, FeedbackStore, Rollup
from faregate.store.backends import AnalyticsStores
from faregate.store.outage import is_outage
from faregate.telemetry.alerts import AlertManager
from faregate.telemetry.metrics import (
    CascadeSource,
    GatewayMetrics,
    SettlementSource,
    StateCollector,
    WriterSource,
)
from faregate.telemetry.tracing import RequestTracer
from faregate.types import RequestRecord

log = logging.getLogger("faregate.observability")

# How often new records are added to the hourly rollups. Queries are exact regardless (they
# read what is not rolled up yet from the records); this only bounds how much that is.
ROLLUP_INTERVAL_S = 10.0
ROLLUP_PAUSE_S = 0.05
# A backlog larger than this many chunks is finished in later rounds.
MAX_STEPS_PER_ROUND = 1000


@dataclass(slots=True)
class Insights:
    """The store-backed half: dashboard analytics, feedback, hourly rollups and alerts, on the
    embedded SQLite store or the shared PostgreSQL one (where every instance runs the rollup
    step; store/postgres/rollup.py lets one at a time do the work). The connections belong to
    the store's backends (store/backends.py), which close them."""

    analytics: Analytics
    feedback: FeedbackStore
    alerts: AlertManager
    rollup: Rollup
    _rollup_loop: Periodic | None = field(default=None, repr=False)

    @classmethod
    def over(cls, settings: Settings, stores: AnalyticsStores) -> Insights:
        return cls(
            analytics=stores.analytics,
            feedback=stores.feedback,
            # The process that posts to the webhook remembers what it posted (across restarts).
            alerts=AlertManager(
                settings.alerts,
                stores.analytics,
                memory=stores.alert_memory if settings.alerts.webhook is not None else None,
            ),
            rollup=stores.rollup,
        )

    async def start(self) -> None:
        await self.alerts.start()
        if self._rollup_loop is None:
            self._rollup_loop = Periodic("rollup", ROLLUP_INTERVAL_S, self._roll_up, run_first=True)
            self._rollup_loop.start()

    async def _roll_up(self) -> None:
        try:
            # One chunk per transaction, with a pause between them, so that the record writer
            # gets the write lock in between while a large backlog (after an upgrade) is read.
            for _ in range(MAX_STEPS_PER_ROUND):
                if not await self.rollup.step():
                    break
                await asyncio.sleep(ROLLUP_PAUSE_S)
        except Exception as exc:
            if not is_outage(exc):
                log.exception("could not update the dashboard rollups; trying again later")
                return
            # A line, not a traceback every round through an outage (the log filter counts repeats).
            log.warning(
                "could not update the dashboard rollups, a store is unavailable (%s: %s); trying again later",
                type(exc).__name__,
                exc,
            )

    async def close(self) -> None:
        await self.alerts.close()
        if self._rollup_loop is not None:
            await self._rollup_loop.stop()


@dataclass(slots=True)
class Observability:
    metrics: GatewayMetrics
    insights: Insights | None = None
    tracer: RequestTracer | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        stores: AnalyticsStores,
        runner: AttemptRunner,
        records: WriterSource,
        cascades: CascadeSource | None = None,
        route_label: Callable[[str | None], str] | None = None,
        settlements: SettlementSource | None = None,
    ) -> Observability:
        """Metrics (and traces) always; the insights over the store's analytics side."""
        tracer = RequestTracer(settings.tracing) if settings.tracing.otlp_endpoint else None
        insights = Insights.over(settings, stores)
        collector = StateCollector(
            health=lambda: runner.health,
            counters=runner,
            writer=records,
            cascades=cascades,
            alerts=insights.alerts.firing_labels,
            settlements=settlements,
        )
        return cls(GatewayMetrics(collector, route_label), insights, tracer)

    def attach(self, listeners: list[Callable[[RequestRecord], None]]) -> None:
        listeners.append(self.metrics.observe)
        if self.tracer is not None:
            listeners.append(self.tracer.observe)

    async def start(self) -> None:
        if self.insights is not None:
            await self.insights.start()

    async def close(self) -> None:
        if self.insights is not None:
            await self.insights.close()
        if self.tracer is not None:
            await self.tracer.close()
