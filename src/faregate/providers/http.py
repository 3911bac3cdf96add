"""The one HTTP client every provider shares, tuned for a proxy's hot path."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from faregate import __version__
from faregate.catalog.models import provider_enabled, sim_active
from faregate.config import ProviderSettings, Settings

USER_AGENT = f"faregate/{__version__}"


def _dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def make_client_session(
    settings: Settings | None = None,
    *,
    limit: int | None = None,
    limit_per_host: int | None = None,
    keepalive_timeout_s: float = 30.0,
    ttl_dns_cache_s: int = 300,
    connect_timeout_s: float | None = None,
) -> aiohttp.ClientSession:
    """A ClientSession for upstream calls; call it inside the running event loop.

    - A large pool with keep-alive, so back-to-back calls to a provider skip the TCP and TLS
      handshakes. Sized from `settings` when given (see `pool_limits`); explicit arguments win.
      The keep-alive is kept below the 60-75 s idle timeout common on upstream load
      balancers: reusing a connection the server has just closed fails the POST.
    - DNS answers cached for `ttl_dns_cache_s`: one lookup per provider, not per request.
    - No cookie jar: upstream cookies must never leak between tenants, and skipping the
      jar saves work on every response.
    - orjson for any `json=` use (providers send pre-serialised bytes anyway).
    - Responses are decompressed transparently, streams included.

    Per-call deadlines are set by each provider; the session only bounds the TCP connect.
    """
    default_limit, default_per_host, default_connect = pool_limits(settings)
    connector = aiohttp.TCPConnector(
        limit=default_limit if limit is None else limit,
        limit_per_host=default_per_host if limit_per_host is None else limit_per_host,
        keepalive_timeout=keepalive_timeout_s,
        ttl_dns_cache=ttl_dns_cache_s,
        use_dns_cache=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        json_serialize=_dumps_str,
        json_serialize_bytes=orjson.dumps,
        auto_decompress=True,
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=default_connect if connect_timeout_s is None else connect_timeout_s
        ),
        # Provider calls handle each status themselves.
        raise_for_status=False,
    )


def pool_limits(settings: Settings | None) -> tuple[int, int, float]:
    """(total limit, per-host limit, connect timeout) for the providers `settings` enables.

    One connector serves every provider and each provider is its own host, so the per-host
    cap is the largest provider's `max_connections` and the total is their sum (the simulator,
    when active, counts as one more provider with default settings).
    """
    if settings is None:
        return 1000, 0, 10.0
    active = [p for p in settings.providers.values() if provider_enabled(p)]
    if sim_active(settings):
        active.append(ProviderSettings(base_url="http://127.0.0.1"))
    if not active:
        return 1000, 0, 10.0
    return (
        sum(p.max_connections for p in active),
        max(p.max_connections for p in active),
        max(p.connect_timeout_s for p in active),
    )
