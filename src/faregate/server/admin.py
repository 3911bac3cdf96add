"""Admin endpoints, behind the master key (accounts/master.py: the env var named in
auth.master_key_env, or the key `faregate serve --new-key` made)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from faregate import usage_estimate
from faregate.accounts.master import MasterKey
from faregate.errors import AuthenticationFailed, PermissionDenied
from faregate.server.share_publisher import publish_while_serving

if TYPE_CHECKING:
    from faregate.server.app import Gateway
    from faregate.telemetry.metrics_share import SharedMetrics


def is_master(request: web.Request, master_key: MasterKey) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    if not master_key.enabled or scheme.lower() != "bearer":
        return False
    return master_key.matches(raw.strip())


def require_master(request: web.Request, master_key: MasterKey) -> None:
    if not master_key.enabled:
        raise PermissionDenied(
            "Admin endpoints are disabled: no master key is set "
            "(set FAREGATE_MASTER_KEY, or start with `faregate serve --new-key`)."
        )
    if not request.headers.get("Authorization"):
        raise AuthenticationFailed(
            "This endpoint needs the master key: 'Authorization: Bearer <master key>'."
        )
    if not is_master(request, master_key):
        raise PermissionDenied("The key given is not the master key.", code="not_admin")


# Each worker's own health, as it publishes it for the others (`serve --workers N`).
HEALTH_VIEW = "health.json"


def health_detail(gateway: Gateway) -> bytes:
    """This process's health; with several workers, whole: the counters summed over the live
    workers, and each one's breakers, queues and counters in `by_worker` (the top-level `offers`
    and `upstream_queues` stay the answering worker's, `worker`)."""
    own = _own_health(gateway)
    shared = gateway.shared_metrics
    if shared is None:
        return orjson.dumps(own)
    each = _every_worker(shared, own)
    whole = {**own, "worker": shared.index, "counters": _summed(each), "by_worker": each}
    if shared.failing is not None:
        # This worker's figures are its own, live; the others' as they last published them; and
        # they cannot see this worker's (telemetry/metrics_share.py).
        whole["share_error"] = shared.failing
    return orjson.dumps(whole)


def with_other_workers(shared: SharedMetrics | None, name: str, own: int) -> int:
    """This worker's counter `name` (`own`) and every other live worker's, as last published."""
    if shared is None:
        return own
    others = (_published(shared, index) for index in range(shared.count) if index != shared.index)
    return own + sum(int(worker["counters"].get(name, 0)) for worker in others if worker is not None)


def _every_worker(shared: SharedMetrics, own: dict[str, Any]) -> list[dict[str, Any]]:
    """Each live worker's health: this one's now (published first, as a scrape does: the next
    answer, from another worker, is no older), the others' as they last published it."""
    mine = _as_worker(shared, own)
    shared.publish_view(HEALTH_VIEW, orjson.dumps(mine), live=True)
    each = []
    for index in range(shared.count):
        published = mine if index == shared.index else _published(shared, index)
        if published is not None:  # none: not started yet, or exited and not back yet
            each.append(published)
    return each


def _summed(each: list[dict[str, Any]]) -> dict[str, int]:
    counters: dict[str, int] = {}
    for worker in each:
        for name, value in worker["counters"].items():
            counters[name] = counters.get(name, 0) + value
    return counters


# What each worker has of its own (in `by_worker`).
_PER_WORKER = ("pid", "uptime_s", "offers", "upstream_queues", "counters")


def _published(shared: SharedMetrics, index: int) -> dict[str, Any] | None:
    body = shared.view(index, HEALTH_VIEW, live=True)
    return None if body is None else dict(orjson.loads(body))


def _as_worker(shared: SharedMetrics, own: dict[str, Any]) -> dict[str, Any]:
    return {"worker": shared.index, **{name: own[name] for name in _PER_WORKER}}


def add_health_share(app: web.Application, gateway: Gateway) -> None:
    """With several workers: each leaves its health for the others every second, as its metrics."""
    shared = gateway.shared_metrics
    if shared is None:
        return

    async def publish() -> None:
        shared.publish_view(HEALTH_VIEW, orjson.dumps(_as_worker(shared, _own_health(gateway))), live=True)

    publish_while_serving(app, "health-share", publish)


def _own_health(gateway: Gateway) -> dict[str, Any]:
    runner = gateway.pipeline.runner
    cache = gateway.pipeline.cache
    settlements = gateway.accounts.settlements
    # Without accounts nothing is settled: every count is 0.
    pending, landed, lost, spooled, replayed = (
        (settlements.pending, settlements.landed, settlements.lost, settlements.spooled, settlements.replayed)
        if settlements is not None
        else (0, 0, 0, 0, 0)
    )
    verifier = gateway.pipeline.verifier
    return {
        "status": "ok",
        # Which worker process answered (`serve --workers N`: N of them share the port).
        "pid": os.getpid(),
        "workers": gateway.settings.server.workers or 1,
        "uptime_s": round(time.monotonic() - gateway.started, 1),
        "providers": gateway.providers.names(),
        "offers": runner.health.snapshot(),
        "upstream_queues": runner.limiter.snapshot(),
        # How usage no upstream reported is counted, and whether the o200k tokenizer is in
        # this process (~58 MiB; only with accounts.usage_estimate: tokenizer).
        "usage_estimate": usage_estimate.state(),
        "counters": {
            "retries": runner.retries,
            "fallbacks": runner.fallbacks,
            "records_pending": gateway.records.pending,
            "records_written": gateway.records.written,
            "records_dropped": gateway.records.dropped,
            # Settlements the accounts store could not take yet (an outage), retried in the
            # background; those that landed later, and those given up.
            "settlements_pending": pending,
            "settlements_recovered": landed,
            "settlements_lost": lost,
            # Of the pending, those on disk in the spool (a killed process loses none of them);
            # and those taken over from the spool of a process that stopped before they landed.
            "settlements_spooled": spooled,
            "settlements_replayed": replayed,
            "cache_writes": cache.writes if cache is not None else 0,
            "semantic_cache_writes": cache.semantic_writes if cache is not None else 0,
            # Verifications of answers (quality targets) submitted and not finished yet.
            "verifications_pending": verifier.pending if verifier is not None else 0,
            # Their `verifications` rows the store could not take yet (an outage), and those given up.
            "verification_rows_pending": verifier.service.rows_pending if verifier is not None else 0,
            "verification_rows_lost": verifier.service.rows_lost if verifier is not None else 0,
        },
    }
