"""Build the response cache the config asks for (its background work starts with `start`)."""

from __future__ import annotations

from faregate.cache.service import ResponseCache
from faregate.cache.stores import CacheStore, MemoryStore, RedisStore
from faregate.config import CacheSettings


def build_cache(settings: CacheSettings, shared_redis_url: str | None = None) -> ResponseCache | None:
    """`shared_redis_url` is the store's Redis: instances that share it share the cache too,
    unless `cache.redis_url` names another one."""
    if not settings.enabled:
        return None
    redis_url = settings.redis_url or shared_redis_url
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
