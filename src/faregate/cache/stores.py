"""Where exact-cache entries live: in process (LRU with expiry) or in Redis.

Values are bytes (orjson of the stored answer); a value over the store's `max_value_bytes`
(`cache.max_entry_bytes`) is not kept, in either store. A cache store never raises into the
request path: Redis being down means a miss and a skipped write, logged once a minute.
A Redis that stops answering (hung, not down) is skipped after a few consecutive failures, so
requests do not each wait out its socket timeout for the whole outage.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple, Protocol

log = logging.getLogger("faregate.cache")


def right_sized(value: bytes) -> bytes:
    """A copy of `value` allocated at its own length (see MemoryStore)."""
    return bytes(memoryview(value))


class Read(NamedTuple):
    """A lookup's value, and whether the store answered it: None from a store that answered is an
    answer gone (expired, evicted, never kept), from one that did not (Redis down or skipped) is
    unknown."""

    value: bytes | None
    answered: bool = True


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def read(self, key: str) -> Read: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        """Keep `value` under `key` for `ttl_s`; whether it was kept (never raises)."""
        ...

    async def close(self) -> None: ...


# The largest value a store keeps by default (`cache.max_entry_bytes`): an answer of up to 128 KiB
# with the model, provider and usage stored beside it.
MAX_VALUE_BYTES = 128 * 1024 + 1024


class MemoryStore:
    """LRU bounded by entry count; entries expire at their own TTL.

    Entries are counted, not sized, so a value over `max_value_bytes` is not kept: one long chat
    answer per entry (a 100k-token completion is ~400 KiB) made `max_entries` no bound on memory.

    A value is kept as a right-sized copy: orjson (>= 3.12) returns bytes whose allocation is at
    least 4 KiB whatever their length, and never shrinks it, so 10,000 cached answers of ~500
    bytes would hold ~40 MiB instead of ~5 MiB (measured by bench/soak.py)."""

    def __init__(
        self, max_entries: int = 10_000, clock: Any = time.monotonic, max_value_bytes: int = MAX_VALUE_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_value_bytes = max_value_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def read(self, key: str) -> Read:
        return Read(await self.get(key))

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        if len(value) > self.max_value_bytes:
            # Not kept; nor is what the key held, which this value was to replace.
            self._entries.pop(key, None)
            return False
        self._entries[key] = (self._clock() + ttl_s, right_sized(value))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._entries.clear()


# Consecutive failures (timeouts, refused connections) that open the breaker, and how long it
# then skips Redis before one call probes it again.
BREAKER_FAILURES = 3
BREAKER_COOLDOWN_S = 5.0


class RedisBreaker:
    """Skips a Redis that keeps failing: after `failures` failures in a row (timeouts, refused
    connections) it is skipped for `cooldown_s`; then one call probes it while the others keep
    skipping: an answer closes the breaker, a failure opens it for another cool-down. The cache
    store's is shared with the publishing of semantic entries (cache/semantic_sync.py)."""

    def __init__(self, failures: int = BREAKER_FAILURES, cooldown_s: float = BREAKER_COOLDOWN_S) -> None:
        self._failures_to_open = failures
        self._cooldown_s = cooldown_s
        self._failures = 0
        # Monotonic time before which Redis is skipped (0: closed).
        self._open_until = 0.0

    def skipped(self) -> bool:
        """Whether to skip Redis now; the first call after a cool-down is let through as the probe
        (the cool-down restarts at once, so the calls made meanwhile keep skipping)."""
        if not self._open_until:
            return False
        now = time.monotonic()
        if now < self._open_until:
            return True
        self._open_until = now + self._cooldown_s
        return False

    def answered(self) -> None:
        self._failures = 0
        self._open_until = 0.0

    def failed(self, exc: Exception) -> None:
        from redis.exceptions import ResponseError

        if isinstance(exc, ResponseError):
            self.answered()  # Redis answered (refused this command): it is not unavailable
            return
        self._failures += 1
        if self._failures >= self._failures_to_open:
            self._open_until = time.monotonic() + self._cooldown_s


# The longest expiry sent to Redis, 100 years: forever, to a cache. Redis refuses one past its
# range (about 292 million years from now) and int() one of inf (`ttl_s: .inf`, the in-process
# store's "never expires"): each such write failed, and counted towards the breaker.
MAX_REDIS_EXPIRY_MS = 100 * 365 * 24 * 3600 * 1000


def redis_expiry_ms(ttl_s: float) -> int:
    """`ttl_s` as the milliseconds of a Redis SET's PX: at least 1, at most MAX_REDIS_EXPIRY_MS."""
    ms = ttl_s * 1000
    return MAX_REDIS_EXPIRY_MS if ms >= MAX_REDIS_EXPIRY_MS else max(int(ms), 1)


class RedisStore:
    """Entries shared by every gateway instance; TTL enforced by Redis itself.

    A small breaker: a hung Redis (accepting connections, never answering) cost every lookup the
    0.5 s socket timeout, a semantic hit twice, for the whole outage. While `RedisBreaker` skips
    Redis a lookup is a miss and a write is not made."""

    def __init__(
        self,
        url: str,
        prefix: str = "faregate:cache:",
        failures: int = BREAKER_FAILURES,
        cooldown_s: float = BREAKER_COOLDOWN_S,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        import redis.asyncio as redis

        from faregate.store.redis.connect import retry_once_on_a_fresh_connection

        self._redis = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=retry_once_on_a_fresh_connection()
        )
        self._prefix = prefix
        self.max_value_bytes = max_value_bytes
        self._last_warning = 0.0
        self.errors = 0
        self.breaker = RedisBreaker(failures, cooldown_s)

    def _warn(self, exc: Exception) -> None:
        self.errors += 1
        self.breaker.failed(exc)
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("cache store (Redis) unavailable, serving without cache: %s", exc)

    async def get(self, key: str) -> bytes | None:
        return (await self.read(key)).value

    async def read(self, key: str) -> Read:
        if self.breaker.skipped():
            return Read(None, answered=False)
        try:
            value = await self._redis.get(self._prefix + key)
        except Exception as exc:  # any Redis failure degrades to a miss
            self._warn(exc)
            return Read(None, answered=False)
        self.breaker.answered()
        return Read(value if isinstance(value, bytes) else None)

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        if self.breaker.skipped():
            return False
        kept = len(value) <= self.max_value_bytes
        try:
            if kept:
                await self._redis.set(self._prefix + key, value, px=redis_expiry_ms(ttl_s))
            else:
                # Not kept, as in process: a few huge answers (a 10 MB one, a long stream's) would
                # fill a Redis that may hold the accounts too. Nor is what the key held, which this
                # value was to replace (a refresh must not leave the old answer served).
                await self._redis.delete(self._prefix + key)
        except Exception as exc:
            self._warn(exc)
            return False
        self.breaker.answered()
        return kept

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception as exc:
            self._warn(exc)
