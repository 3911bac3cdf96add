"""Everything the gateway runs to be seen: metrics, traces, rollups, alerts, and the analytics
connection behind the dashboard and feedback. Built once with the gateway, closed with it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from faregate.config import Settings
from faregate.routing.attempts import AttemptRunner
from faregate.store.analytics import SQLiteAnalytics
from faregate.store.feedback import FeedbackTable
from faregate.store.rollup import RollupWriter
from faregate.store.sqlite import BUSY_TIMEOUT_MS, SQLiteStore
from faregate.telemetry.alerts import AlertManager
from faregate.telemetry.metrics import CascadeSource, GatewayMetrics, StateCollector, WriterSource
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
    """The store-backed half: dashboard analytics, feedback, hourly rollups and alerts. Needs the
    embedded SQLite store (the PostgreSQL port of store/analytics.py is not written yet)."""

    analytics: SQLiteAnalytics
    feedback: FeedbackTable
    alerts: AlertManager
    rollup: RollupWriter
    rollup_conn: aiosqlite.Connection
    _rollup_task: asyncio.Task[None] | None = field(default=None, repr=False)

    @classmethod
    async def open(cls, settings: Settings, db_path: Path) -> Insights:
        analytics = await SQLiteAnalytics.open(db_path)
        try:
            # The rollup writes in transactions of its own: its own connection keeps them apart
            # from the feedback writes and dashboard reads on the analytics connection.
            rollup_conn = await aiosqlite.connect(db_path, isolation_level=None)
            await rollup_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except BaseException:
            await analytics.close()
            raise
        return cls(
            analytics=analytics,
            feedback=FeedbackTable(analytics.connection),
            alerts=AlertManager(settings.alerts, analytics),
            rollup=RollupWriter(rollup_conn),
            rollup_conn=rollup_conn,
        )

    async def start(self) -> None:
        await self.alerts.start()
        if self._rollup_task is None:
            self._rollup_task = asyncio.create_task(self._roll_up(), name="faregate-rollup")

    async def _roll_up(self) -> None:
        while True:
            try:
                # One chunk per transaction, with a pause between them, so that the record writer
                # gets the write lock in between while a large backlog (after an upgrade) is read.
                for _ in range(MAX_STEPS_PER_ROUND):
                    if not await self.rollup.step():
                        break
                    await asyncio.sleep(ROLLUP_PAUSE_S)
            except Exception:
                log.exception("could not update the dashboard rollups; trying again later")
            await asyncio.sleep(ROLLUP_INTERVAL_S)

    async def close(self) -> None:
        await self.alerts.close()
        if self._rollup_task is not None:
            self._rollup_task.cancel()
            try:
                await self._rollup_task
            except asyncio.CancelledError:
                pass
            self._rollup_task = None
        await self.rollup_conn.close()
        await self.analytics.close()


@dataclass(slots=True)
class Observability:
    metrics: GatewayMetrics
    insights: Insights | None = None
    tracer: RequestTracer | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        store: object,
        runner: AttemptRunner,
        records: WriterSource,
        cascades: CascadeSource | None = None,
    ) -> Observability:
        """Metrics (and traces) always; the insights when the store is the embedded SQLite one."""
        tracer = RequestTracer(settings.tracing) if settings.tracing.otlp_endpoint else None
        insights = None
        if isinstance(store, SQLiteStore):
            insights = await Insights.open(settings, store.path)
        else:
            log.warning(
                "dashboard, feedback and alerts need the SQLite store; with this store only metrics run"
            )
        collector = StateCollector(
            health=lambda: runner.health,
            counters=runner,
            writer=records,
            cascades=cascades,
            alerts=insights.alerts.firing_labels if insights is not None else None,
        )
        return cls(GatewayMetrics(collector), insights, tracer)

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
