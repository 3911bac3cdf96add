"""Start the quality loop when some route has `quality`: the store tables, the state, the verifier."""

from __future__ import annotations

from faregate.lifecycle import Lifecycle
from faregate.quality.metrics import QualityCollector
from faregate.quality.service import QualityService
from faregate.quality.verifier import Verifier
from faregate.routing.attempts import AttemptRunner
from faregate.routing.plan import Planner
from faregate.store.backends import Backends
from faregate.store.verifications import VerificationStore
from faregate.telemetry.observability import Observability


def verification_store(backends: Backends) -> VerificationStore:
    """The verifications and calibration state live beside the records: on the analytics
    connection (SQLite) or pool (PostgreSQL)."""
    analytics = backends.analytics.analytics
    if backends.shared:
        from faregate.store.postgres.analytics import PostgresAnalytics
        from faregate.store.postgres.verifications import PostgresVerifications

        assert isinstance(analytics, PostgresAnalytics)
        return PostgresVerifications(analytics.pool)
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.verifications import SQLiteVerifications

    assert isinstance(analytics, SQLiteAnalytics)
    return SQLiteVerifications(analytics.connection)


async def open_quality(
    planner: Planner, runner: AttemptRunner, backends: Backends, lifecycle: Lifecycle
) -> Verifier | None:
    """The verifier of the calibrated routes (None: no route has `quality`), state loaded."""
    calibrations = planner.routes.policies.calibrations
    if not calibrations:
        return None
    service = QualityService(calibrations.values(), verification_store(backends))
    await service.load()
    service.start()
    # Closed newest first: the verifier stops, then the last state is saved, then the stores close.
    lifecycle.on_close("the calibration state", service.close)
    verifier = Verifier(service, runner, planner)
    lifecycle.on_close("the shadow verifications", verifier.close)
    return verifier


def attach_observability(verifier: Verifier | None, observability: Observability) -> None:
    """The calibrated routes' figures in /metrics and for the quality alert rules."""
    if verifier is None:
        return
    observability.metrics.registry.register(QualityCollector(verifier.service.figures))
    if observability.insights is not None:
        observability.insights.alerts.quality = verifier.service.figures
