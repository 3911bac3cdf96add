"""Build the response cache the config asks for (its background work starts with `start`)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from faregate.cache.service import ResponseCache
from faregate.cache.stores import MAX_REDIS_EXPIRY_MS, CacheStore, MemoryStore, RedisStore
from faregate.config import CacheSettings

log = logging.getLogger("faregate.cache")


def build_cache(settings: CacheSettings, shared_redis_url: str | None = None) -> ResponseCache | None:
    """`shared_redis_url` is the store's Redis: instances that share it share the cache too,
    unless `cache.redis_url` names another one."""
    if not settings.enabled:
        return None
    redis_url = settings.redis_url or shared_redis_url
    if redis_url and shared_redis_url and _same_server(redis_url, shared_redis_url):
        _warn_if_never_expiring(settings)
    store: CacheStore
    if redis_url:
        store = RedisStore(redis_url, max_value_bytes=settings.max_entry_bytes)
    else:
        store = MemoryStore(settings.max_entries, max_value_bytes=settings.max_entry_bytes)
    semantic = None
    if settings.semantic.enabled:
        from faregate.cache.semantic import SemanticCache
        from faregate.embedding.embedder import AsyncEmbedder

        embedder = AsyncEmbedder()
        semantic = SemanticCache[str](
            embedder,
            threshold=settings.semantic.threshold,
            max_turns=settings.semantic.max_turns,
            max_entries=settings.semantic.max_entries,
            ttl_s=settings.ttl_s,
        )
    cache = ResponseCache(settings, store, semantic)
    if semantic is not None and settings.semantic.max_wrong_hit_rate is not None:
        from faregate.quality.cache_live import CacheCalibration
        from faregate.route_config import acceptance_settings

        acceptance = CacheCalibration(
            acceptance_settings(settings.semantic),
            settings.semantic.comparator,
            judge_model=settings.semantic.judge_model,
        )
        semantic.floor = acceptance.floor
        semantic.threshold = acceptance.threshold()
        cache.acceptance = acceptance
    if semantic is not None:
        # Its worker thread ends with the cache (after any model load in progress).
        cache.closers.append(semantic.embedder.close)
    if semantic is not None and redis_url:
        from faregate.cache.semantic_sync import SemanticSync

        # Publishing skips a failing Redis as the cache store does, on the store's own breaker.
        breaker = store.breaker if isinstance(store, RedisStore) else None
        sync = SemanticSync(redis_url, semantic, breaker=breaker)
        cache.on_semantic_store = sync.publish
        cache.starters.append(sync.start)
        cache.closers.append(sync.close)
    return cache


def _same_server(a: str, b: str) -> bool:
    """Whether two Redis URLs name one server: another database number on it shares its memory
    and its eviction policy."""

    def server(url: str) -> tuple[str | None, int | None, str]:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return None, None, parts.path
        return parts.hostname, parts.port or 6379, ""

    return server(a) == server(b)


def _warn_if_never_expiring(settings: CacheSettings) -> None:
    """The accounts' Redis runs with `maxmemory-policy noeviction` (docs/accounts.md): cache entries
    that never expire there fill it, and then every reservation and settlement is refused (each
    request a 503) until someone flushes the cache by hand."""
    forever = MAX_REDIS_EXPIRY_MS / 1000
    ttls = {"cache.ttl_s": settings.ttl_s, "cache.max_ttl_s": settings.max_ttl_s}
    ttls |= {f"cache.tier_ttl_s.{tier}": ttl for tier, ttl in settings.tier_ttl_s.items()}
    ttls |= {f"cache.route_ttl_s.{route}": ttl for route, ttl in settings.route_ttl_s.items()}
    never = sorted(name for name, ttl in ttls.items() if ttl >= forever)
    if never:
        log.warning(
            "cache entries that never expire (%s) are kept on the Redis server of store.redis_url, "
            "whose accounts need maxmemory-policy noeviction: once it is full every request that "
            "reserves is refused. Set cache.redis_url to a Redis server of its own (a database "
            "number on the same server shares its memory), or give the cache a finite TTL",
            ", ".join(never),
        )
