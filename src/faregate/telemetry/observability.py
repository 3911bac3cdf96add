"""Everything the gateway runs to be seen: metrics, traces, rollups, alerts, and the analytics
connection behind the dashboard and feedback. Built once with the gateway, closed with it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosqlite

from faregate.config import Settings
from faregate.routing.attempts import AttemptRunner
from faregate.store.analytics import Analytics, FeedbackStore
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.feedback import SQLiteFeedbackTable
from faregate.store.sqlite.rollup import RollupWriter
from faregate.store.sqlite.store import BUSY_TIMEOUT_MS, SQLiteStore
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


class Rollup(Protocol):
    async def step(self) -> int: ...


@dataclass(slots=True)
class Insights:
    """The store-backed half: dashboard analytics, feedback, hourly rollups and alerts, on the
    embedded SQLite store or the shared PostgreSQL one (where every instance runs the rollup
    step; store/postgres/rollup.py lets one at a time do the work)."""

    analytics: Analytics
    feedback: FeedbackStore
    alerts: AlertManager
    rollup: Rollup
    rollup_conn: aiosqlite.Connection | None = None
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
            feedback=SQLiteFeedbackTable(analytics.connection),
            alerts=AlertManager(settings.alerts, analytics),
            rollup=RollupWriter(rollup_conn),
            rollup_conn=rollup_conn,
        )

    @classmethod
    async def open_postgres(cls, settings: Settings, url: str) -> Insights:
        """On the shared store (already migrated by PostgresStore.open), through a pool of its own."""
        # Imported here: the embedded store never loads asyncpg.
        from faregate.store.postgres.analytics import PostgresAnalytics
        from faregate.store.postgres.feedback import PostgresFeedbackTable
        from faregate.store.postgres.rollup import PostgresRollupWriter

        analytics = await PostgresAnalytics.open(url)
        return cls(
            analytics=analytics,
            feedback=PostgresFeedbackTable(analytics.pool),
            alerts=AlertManager(settings.alerts, analytics),
            rollup=PostgresRollupWriter(analytics.pool),
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
        if self.rollup_conn is not None:
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
        route_label: Callable[[str | None], str] | None = None,
    ) -> Observability:
        """Metrics (and traces) always; the insights on the embedded SQLite store and on the shared
        PostgreSQL one."""
        tracer = RequestTracer(settings.tracing) if settings.tracing.otlp_endpoint else None
        insights = None
        if isinstance(store, SQLiteStore):
            insights = await Insights.open(settings, store.path)
        elif settings.store.postgres_url is not None:
            insights = await Insights.open_postgres(settings, settings.store.postgres_url)
        else:
            log.warning(
                "dashboard, feedback and alerts need the SQLite or the PostgreSQL store; only metrics run"
            )
        collector = StateCollector(
            health=lambda: runner.health,
            counters=runner,
            writer=records,
            cascades=cascades,
            alerts=insights.alerts.firing_labels if insights is not None else None,
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
