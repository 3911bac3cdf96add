"""Admin endpoints, behind the master key (accounts/master.py: the env var named in
auth.master_key_env, or the key `faregate serve --new-key` made)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from faregate import usage_estimate
from faregate.accounts.master import MasterKey
from faregate.errors import AuthenticationFailed, PermissionDenied

if TYPE_CHECKING:
    from faregate.server.app import Gateway


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


def health_detail(gateway: Gateway) -> bytes:
    runner = gateway.pipeline.runner
    cache = gateway.pipeline.cache
    settlements = gateway.accounts.settlements
    return orjson.dumps(
        {
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
                "settlements_pending": settlements.pending if settlements is not None else 0,
                "settlements_recovered": settlements.landed if settlements is not None else 0,
                "settlements_lost": settlements.lost if settlements is not None else 0,
                # Of the pending, those on disk in the spool (a killed process loses none of them);
                # and those taken over from the spool of a process that stopped before they landed.
                "settlements_spooled": settlements.spooled if settlements is not None else 0,
                "settlements_replayed": settlements.replayed if settlements is not None else 0,
                "cache_writes": cache.writes if cache is not None else 0,
                "semantic_cache_writes": cache.semantic_writes if cache is not None else 0,
            },
        }
    )
