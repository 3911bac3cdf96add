"""Semantic cache entries shared across gateway instances through a Redis stream.

Redis 7 from Debian has no vector search, so each instance keeps its own in-process
index and Redis carries the entries: an instance that stores an entry appends it
(scope, text, answer key, TTL, vector) to a capped stream; every instance tails the
stream and adds the others' entries to its index. The answers themselves already live
in Redis (the exact store), so a semantic hit on any instance finds them.

Redis being down never fails a request: publishing is skipped, tailing retries. A hung Redis
(accepting connections, never answering) holds each publish for the socket timeout, so
publishing skips Redis while the cache store's breaker is open (stores.RedisBreaker), and at most
MAX_PUBLISHING publishes wait on it at once: beyond that an entry is not shared (counted in
`dropped`), rather than tasks and the answers they hold piling up with traffic.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import numpy as np
import orjson

from faregate.cache.semantic import SharedEntry
from faregate.cache.semantic_index import Scope
from faregate.cache.stores import RedisBreaker
from faregate.lifecycle import Periodic

log = logging.getLogger("faregate.cache")

STREAM = "faregate:semantic"
# Enough for the in-process index's default size; older entries fall off the stream.
MAX_STREAM_LEN = 50_000
# Publishes waiting on Redis at once; each holds its entry (and, in the cache's background store
# task that awaits it, the answer). Redis answers one in well under a millisecond.
MAX_PUBLISHING = 32
# Shared entries added to the index in one hand-off to the embedding worker (~5 ms of its time
# at 50,000 entries): fewer hand-offs, while a lookup queued behind them waits little.
SHARED_PER_HANDOFF = 100


class SemanticSync:
    def __init__(
        self,
        url: str,
        semantic: Any,
        stream: str = STREAM,
        *,
        breaker: RedisBreaker | None = None,
        timeout_s: float = 5.0,
        max_in_flight: int = MAX_PUBLISHING,
    ) -> None:
        import redis.asyncio as redis

        from faregate.store.redis.connect import retry_once_on_a_fresh_connection

        # The timeout outlasts the tail's blocking read (a second). Retried once on a fresh
        # connection only, as every client is (redis-py's default also retries timeouts, thrice).
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=1,
            retry=retry_once_on_a_fresh_connection(),
        )
        self._breaker = breaker if breaker is not None else RedisBreaker()
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self.dropped = 0
        self._last_drop_warning = 0.0
        self._semantic = semantic
        self._stream = stream
        self.origin = secrets.token_hex(6)
        # Start from the beginning: a new instance warms up from what others cached.
        self._last = "0-0"
        self._pause = 0.0
        self._tailer = Periodic("semantic-sync", lambda: self._pause, self._read, run_first=True)
        self._last_warning = 0.0
        self.received = 0
        self.published = 0

    def _warn(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("semantic cache sharing: %s failed (Redis unavailable?): %s", what, exc)

    async def publish(self, scope: Scope, text: str, key: str, ttl_s: float, vector: Any) -> None:
        if vector is None or self._breaker.skipped():
            return
        if self._in_flight >= self._max_in_flight:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_warning > 60:
                self._last_drop_warning = now
                log.warning(
                    "semantic cache sharing: %d publishes already wait on Redis; not sharing more "
                    "(%d dropped so far)",
                    self._in_flight,
                    self.dropped,
                )
            return
        fields = {
            "origin": self.origin,
            "scope": orjson.dumps([scope.tenant, scope.route, scope.system_hash, scope.tools_hash]),
            "text": text,
            "key": key,
            "expires_at": str(time.time() + ttl_s),
            "vector": np.asarray(vector, dtype=np.float32).tobytes(),
        }
        self._in_flight += 1
        try:
            await self._redis.xadd(self._stream, fields, maxlen=MAX_STREAM_LEN, approximate=True)  # type: ignore[arg-type]
        except Exception as exc:
            self._breaker.failed(exc)
            self._warn("publishing an entry", exc)
            return
        finally:
            self._in_flight -= 1
        self._breaker.answered()
        self.published += 1

    def start(self) -> None:
        self._tailer.start()

    async def _read(self) -> None:
        """One read of the stream (blocking up to a second for new entries); the next one follows
        at once, or after a second when Redis failed."""
        try:
            replies: Any = await self._redis.xread({self._stream: self._last}, count=500, block=1000)
        except Exception as exc:
            self._warn("reading shared entries", exc)
            self._pause = 1.0
            return
        self._pause = 0.0
        shared: list[SharedEntry[str]] = []
        for _, entries in replies or []:
            for entry_id, fields in entries:
                self._last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                entry = self._decode(fields)
                if entry is not None:
                    shared.append(entry)
        for start in range(0, len(shared), SHARED_PER_HANDOFF):
            chunk = shared[start : start + SHARED_PER_HANDOFF]
            try:
                self.received += await self._semantic.store_shared(chunk)
            except Exception:
                log.exception("could not apply %d shared semantic cache entries", len(chunk))

    def _decode(self, fields: dict[bytes, bytes]) -> SharedEntry[str] | None:
        """The entry another instance published; None for this instance's own, an expired one or
        one that cannot be read (logged)."""
        try:
            if fields[b"origin"].decode() == self.origin:
                return None
            ttl = float(fields[b"expires_at"]) - time.time()
            if ttl <= 0:
                return None
            tenant, route, system_hash, tools_hash = orjson.loads(fields[b"scope"])
            return SharedEntry(
                Scope(tenant, route, system_hash, tools_hash),
                fields[b"text"].decode(),
                fields[b"key"].decode(),
                ttl,
                np.frombuffer(fields[b"vector"], dtype=np.float32),
            )
        except Exception:
            log.exception("could not apply a shared semantic cache entry")
            return None

    async def close(self) -> None:
        await self._tailer.stop()
        try:
            await self._redis.aclose()
        except Exception as exc:
            self._warn("closing", exc)
