"""Build the response cache the config asks for."""

from __future__ import annotations

import asyncio
import logging

from faregate.cache.service import ResponseCache
from faregate.cache.stores import CacheStore, MemoryStore, RedisStore
from faregate.config import CacheSettings

log = logging.getLogger("faregate.cache")


def build_cache(settings: CacheSettings, shared_redis_url: str | None = None) -> ResponseCache | None:
    """`shared_redis_url` is the store's Redis: instances that share it share the cache too,
    unless `cache.redis_url` names another one."""
    if not settings.enabled:
        return None
    redis_url = settings.redis_url or shared_redis_url
    store: CacheStore
    store = RedisStore(redis_url) if redis_url else MemoryStore(settings.max_entries)
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
        # Load the model in the background so start-up stays fast; lookups wait for it.
        _loading.append(asyncio.get_running_loop().create_task(embedder.start()))
        _loading[-1].add_done_callback(_report_load)
    cache = ResponseCache(settings, store, semantic)
    if semantic is not None and redis_url:
        from faregate.cache.semantic_sync import SemanticSync

        sync = SemanticSync(redis_url, semantic)
        cache.on_semantic_store = sync.publish
        cache.closers.append(sync.close)
        sync.start()
    return cache


_loading: list[asyncio.Task[None]] = []


def _report_load(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the embedding model failed to load; semantic lookups will fail: %s", task.exception())
