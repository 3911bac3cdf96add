"""Start the quality loop when some route has `quality`: the store tables, the state, the verifier."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from faregate.cache.service import ResponseCache
from faregate.lifecycle import Lifecycle
from faregate.quality.leases import AccountLeases
from faregate.quality.metrics import QualityCollector
from faregate.quality.service import QualityService
from faregate.quality.verification_calls import AnswerEmbedder
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
    planner: Planner,
    runner: AttemptRunner,
    backends: Backends,
    lifecycle: Lifecycle,
    cache: ResponseCache | None = None,
) -> Verifier | None:
    """The verifier of the calibrated routes and of the semantic cache's calibrated acceptance
    (None: neither is configured), their state loaded from the store."""
    calibrations = planner.routes.policies.calibrations
    acceptance = cache.acceptance if cache is not None else None
    if not calibrations and acceptance is None:
        return None
    # Verification holds belong to this process's instance lease (quality/leases.py).
    service = QualityService(
        calibrations.values(), verification_store(backends), acceptance, AccountLeases(backends.accounts)
    )
    await service.load()
    service.start()
    # Closed newest first: the verifier stops, then the last state is saved, then the stores close.
    lifecycle.on_close("the calibration state", service.close)
    verifier = Verifier(service, runner, planner)
    verifier.calls.embedder = embedder_for(planner, cache)
    if cache is not None and acceptance is not None:
        verifier.cache_verification.cache = cache
        cache.on_fresh_answer = verifier.label_candidate
    lifecycle.on_close("the shadow verifications", verifier.close)
    return verifier


def embedder_for(planner: Planner, cache: ResponseCache | None) -> AnswerEmbedder | None:
    """The `embedding` comparator's model, a MiniLM already there: the route policies' (a router
    or learned judge has one), else the semantic cache's."""
    from faregate.routing.policies import RoutePolicies

    policies = planner.routes.policies
    if isinstance(policies, RoutePolicies):
        shared = policies.embedder()

        async def embed_shared(texts: list[str]) -> Any:
            return await asyncio.get_running_loop().run_in_executor(shared.executor, shared.embed, texts)

        async def shared_unready() -> str | None:
            if shared.loaded:
                return None  # no hop to the policies' worker, busy scoring prompts
            return await asyncio.get_running_loop().run_in_executor(shared.executor, shared.unready)

        return AnswerEmbedder(embed_shared, shared_unready)
    semantic = cache.semantic if cache is not None else None
    if semantic is None:
        return None
    embedder = semantic.embedder

    async def embed_cached(texts: list[str]) -> Any:
        vectors = [await embedder.embed(text) for text in texts]
        if any(v is None for v in vectors):
            raise ValueError("an answer too long to embed")
        return np.stack(vectors)

    return AnswerEmbedder(embed_cached, embedder.unready)


def attach_observability(verifier: Verifier | None, observability: Observability) -> None:
    """The calibrated routes' and cache's figures in /metrics and for the quality alert rules."""
    if verifier is None:
        return
    service = verifier.service
    observability.metrics.registry.register(
        QualityCollector(service.figures, service.cache_figures, verifier)
    )
    if observability.insights is not None:
        observability.insights.alerts.quality = service.figures
        observability.insights.alerts.quality_cache = service.cache_figures
