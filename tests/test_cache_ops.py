"""The cache in production: a hung Redis, unreadable entries, client TTLs, what a hit saves."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from faregate.cache.service import ResponseCache
from faregate.cache.stores import MemoryStore
from faregate.config import CacheSettings
from faregate.server.parse import parse_chat_request

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def request(body: dict[str, Any], key_id: str = "key_a"):  # type: ignore[no-untyped-def]
    parsed = parse_chat_request(body, {}, "req")
    parsed.key_id = key_id
    return parsed


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        orjson.dumps(["a", "list"]),
        orjson.dumps({"answer": "another version's layout"}),
        orjson.dumps({"body": {}, "model": "m", "provider": "p", "usage": [1, 2, 3]}),
        orjson.dumps({"body": {}, "model": "m", "provider": "p", "usage": [1, 2], "stored_at": "x"}),
        orjson.dumps({"body": "text", "model": "m", "provider": "p", "usage": [1, 2]}),
        orjson.dumps({"body": {}, "model": "m", "provider": "p", "usage": [1, 2], "usage_parts": [1]}),
    ],
)
async def test_an_unreadable_entry_is_a_miss_and_the_fresh_answer_replaces_it(raw: bytes) -> None:
    """Another version sharing the Redis, or a corrupt value: a miss, never a 500."""
    c = ResponseCache(CacheSettings(), MemoryStore())
    decision = c.decide(request(BASE), {}, lambda: "m")
    await c.store.set(decision.key, raw, 60)
    assert await c.lookup(decision, request(BASE)) is None
    assert await c.lookup_exact(decision) is None
    max_age = c.decide(request(BASE), {"Cache-Control": "max-age=60"}, lambda: "m")
    assert await c.lookup(max_age, request(BASE)) is None
    # The miss's answer is stored over it, and served next time.
    from faregate.types import Usage

    await c._write(decision, {"choices": []}, "m", "p", Usage(3, 4))
    hit = await c.lookup(decision, request(BASE))
    assert hit is not None and hit.usage.prompt_tokens == 3


async def test_a_hit_is_recorded_with_the_baseline_of_the_answer_it_replays() -> None:
    """The answer's prompt-cache reads (and writes, and audio) are kept with it: a hit saves what the
    request cost on the baseline model, not every prompt token at the full input price."""
    from decimal import Decimal
    from types import SimpleNamespace
    from typing import cast

    from faregate.server.exchange import Exchange
    from faregate.types import Price, Usage

    gpt4o = Price(
        Decimal("2.50"),
        Decimal(10),
        cache_read=Decimal("1.25"),
        cache_write=Decimal("3.125"),
        input_audio=Decimal(40),
        output_audio=Decimal(80),
    )
    usage = Usage(
        1_000_000,
        100_000,
        cache_read_tokens=600_000,
        cache_write_tokens=200_000,
        cache_write_1h_tokens=50_000,
        audio_prompt_tokens=10_000,
        audio_completion_tokens=5_000,
    )
    miss = Exchange.begin(cast(Any, SimpleNamespace(headers={})), gpt4o)
    offer = SimpleNamespace(provider="p")
    served_by = cast(Any, SimpleNamespace(model=SimpleNamespace(name="m"), offer=offer))
    miss.settled(served_by, usage, gpt4o.cost(usage))
    miss.finished()

    c = ResponseCache(CacheSettings(), MemoryStore())
    decision = c.decide(request(BASE), {}, lambda: "m")
    await c._write(decision, {"choices": []}, "m", "p", usage)
    cached = await c.lookup(decision, request(BASE))
    assert cached is not None and cached.usage == usage
    hit = Exchange.begin(cast(Any, SimpleNamespace(headers={})), gpt4o)
    hit.from_cache(cached)
    hit.finished()
    assert hit.record.cost_usd == 0
    assert hit.record.baseline_cost_usd == miss.record.baseline_cost_usd == miss.record.cost_usd


async def test_an_entry_stored_without_the_split_is_still_served() -> None:
    """Entries written before the split was kept (or by an older version) are read as before."""
    c = ResponseCache(CacheSettings(), MemoryStore())
    decision = c.decide(request(BASE), {}, lambda: "m")
    entry = {"body": {"choices": []}, "model": "m", "provider": "p", "usage": [5, 6], "stored_at": 1.0}
    await c.store.set(decision.key, orjson.dumps(entry), 60)
    cached = await c.lookup(decision, request(BASE))
    assert cached is not None and (cached.usage.prompt_tokens, cached.usage.cache_read_tokens) == (5, 0)


def test_a_clients_ttl_is_capped_at_max_ttl_s() -> None:
    """A ttl_s hint or Cache-Control max-age cannot pin an entry in a shared Redis for years."""
    week = 7 * 24 * 3600
    c = ResponseCache(CacheSettings(), MemoryStore())
    assert c.settings.max_ttl_s == week
    years = {**BASE, "faregate": {"cache": {"ttl_s": 10 * 365 * 24 * 3600}}}
    assert c.decide(request(years), {}, lambda: "m").ttl_s == week
    assert c.decide(request(BASE), {"Cache-Control": "max-age=315360000"}, lambda: "m").ttl_s == week
    huge = {**BASE, "faregate": {"cache": {"ttl_s": 1e300}}}  # Redis refused it: every write failed
    assert c.decide(request(huge), {}, lambda: "m").ttl_s == week
    assert c.decide_embeddings({}, years["faregate"], "k", {}, "e").ttl_s == week
    # Below the cap, as asked; the cap is the operator's to set.
    assert c.decide(request(BASE), {"Cache-Control": "max-age=600"}, lambda: "m").ttl_s == 600
    short = ResponseCache(CacheSettings(max_ttl_s=60), MemoryStore())
    assert short.decide(request(BASE), {"Cache-Control": "max-age=600"}, lambda: "m").ttl_s == 60


class FakeRedis:
    """A Redis on 127.0.0.1 that accepts connections and, while `hung`, never answers; otherwise
    it answers GET and SET (and +OK to anything else) from a dict."""

    def __init__(self) -> None:
        self.hung = True
        self.data: dict[bytes, bytes] = {}
        self.commands = 0
        self.server: Any = None

    async def start(self) -> str:
        import asyncio

        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, reader: Any, writer: Any) -> None:
        import asyncio

        try:
            while True:
                header = await reader.readline()
                if not header.startswith(b"*"):
                    return
                args = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2])
                self.commands += 1
                if self.hung:
                    continue
                name = args[0].upper()
                if name == b"HELLO":  # redis-py speaks RESP3: a map, and "_" for nil
                    writer.write(b"%1\r\n+proto\r\n:3\r\n")
                elif name == b"GET":
                    value = self.data.get(args[1])
                    writer.write(b"_\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
                else:
                    if name == b"SET":
                        self.data[args[1]] = args[2]
                    writer.write(b"+OK\r\n")
                await writer.drain()
        except (ConnectionError, ValueError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()


async def test_a_hung_redis_is_skipped_after_a_few_failures_then_probed_again() -> None:
    """A Redis that accepts connections and never answers cost every lookup the socket timeout
    (a semantic hit twice), for the whole outage. After a few consecutive failures the store is
    skipped for a cool-down, then one request probes it: still hung, skipped again; back, used."""
    import asyncio
    import time

    from faregate.cache.stores import RedisStore

    fake = FakeRedis()
    url = await fake.start()
    store = RedisStore(url, cooldown_s=1.0)
    try:
        for _ in range(3):
            started = time.monotonic()
            assert await store.get("k") is None
            assert time.monotonic() - started >= 0.4  # the socket timeout, as before
        started, sent = time.monotonic(), fake.commands
        for _ in range(20):
            assert await store.get("k") is None
            await store.set("k", b"v", 60)
        assert time.monotonic() - started < 0.2, "skipped while the breaker is open"
        assert fake.commands == sent
        assert store.errors == 3

        await asyncio.sleep(1.05)
        # One probe once the cool-down is over (the others skip meanwhile); still hung: open again.
        started = time.monotonic()
        assert await asyncio.gather(*(store.get("k") for _ in range(5))) == [None] * 5
        assert store.errors == 4
        assert time.monotonic() - started < 0.9
        started = time.monotonic()
        assert await store.get("k") is None
        assert time.monotonic() - started < 0.1

        fake.hung = False
        await asyncio.sleep(1.05)
        assert await store.get("k") is None  # the probe: answered (no entry), the breaker closes
        await store.set("k", b"v", 60)
        assert store.errors == 4
        assert fake.data == {b"faregate:cache:k": b"v"}
        assert await store.get("k") == b"v"
    finally:
        await store.close()
        await fake.close()


async def test_the_in_process_cache_does_not_keep_a_huge_chat_answer() -> None:
    """Entries are counted, not sized: one long answer per entry made max_entries no bound on
    memory. An answer over 128 KiB (as for embeddings) is not kept in process."""
    from faregate.types import Usage

    c = ResponseCache(CacheSettings(), MemoryStore())
    decision = c.decide(request(BASE), {}, lambda: "m")
    huge = {"choices": [{"message": {"role": "assistant", "content": "x" * (200 * 1024)}}]}
    await c._write(decision, huge, "m", "p", Usage(1, 50_000))
    assert await c.lookup(decision, request(BASE)) is None
    assert len(c.store) == 0  # type: ignore[arg-type]
    long = {"choices": [{"message": {"role": "assistant", "content": "x" * (120 * 1024)}}]}
    await c._write(decision, long, "m", "p", Usage(1, 30_000))
    cached = await c.lookup(decision, request(BASE))
    assert cached is not None and cached.body == long
    # A huge answer for a key drops what the key held (it was to be replaced).
    await c._write(decision, huge, "m", "p", Usage(1, 50_000))
    assert await c.lookup(decision, request(BASE)) is None


async def test_semantic_sharing_skips_a_hung_redis_and_bounds_the_publishes_in_flight() -> None:
    """Each semantic store publishes its entry to Redis in the background, on a client of its own
    that no breaker guarded: with a hung Redis every publish waited out the socket timeout, so
    publishes (and the answers their tasks hold) piled up with traffic. Beyond a few in flight a
    publish is dropped (counted); after a few failures Redis is skipped for a cool-down."""
    import asyncio
    import time

    from faregate.cache.semantic_index import Scope
    from faregate.cache.semantic_sync import SemanticSync
    from faregate.cache.stores import RedisBreaker

    fake = FakeRedis()
    url = await fake.start()
    sync = SemanticSync(url, None, breaker=RedisBreaker(cooldown_s=60), timeout_s=0.3, max_in_flight=4)
    scope = Scope("t", "r", "", "")
    try:
        tasks = [asyncio.create_task(sync.publish(scope, "text", "k", 60, [0.1, 0.2])) for _ in range(50)]
        await asyncio.sleep(0.1)
        assert sum(not task.done() for task in tasks) <= 4, "only a few publishes wait on Redis"
        assert sync.dropped == 46
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert sync.published == 0

        # Four failures in a row: the breaker is open, publishing skips Redis at once.
        started, sent = time.monotonic(), fake.commands
        for _ in range(20):
            await sync.publish(scope, "text", "k", 60, [0.1, 0.2])
        assert time.monotonic() - started < 0.1
        assert fake.commands == sent
    finally:
        await sync.close()
        await fake.close()


async def test_only_an_entry_the_store_kept_counts_as_a_cache_write() -> None:
    """`cache_writes` (GET /health) is what operators and tests poll to know an answer is in the
    cache: it counted every write tried, so it climbed while Redis was down, or for an answer too
    big for the in-process store, though nothing was kept."""
    import socket

    from faregate.cache.stores import RedisStore
    from faregate.types import Usage

    c = ResponseCache(CacheSettings(), MemoryStore())
    decision = c.decide(request(BASE), {}, lambda: "m")
    huge = {"choices": [{"message": {"role": "assistant", "content": "x" * (200 * 1024)}}]}
    await c._write(decision, huge, "m", "p", Usage(1, 50_000))
    assert c.writes == 0
    await c._write(decision, {"choices": []}, "m", "p", Usage(1, 2))
    assert c.writes == 1

    with socket.socket() as probe:  # a port nothing listens on: Redis refuses at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = ResponseCache(CacheSettings(), RedisStore(f"redis://127.0.0.1:{port}/0"))
    try:
        for _ in range(5):  # refused, then skipped by the breaker
            await down._write(decision, {"choices": []}, "m", "p", Usage(1, 2))
        assert down.writes == 0
    finally:
        await down.close()


@pytest.mark.parametrize(
    ("cache", "warned"),
    [
        ({"ttl_s": float("inf")}, True),
        ({"route_ttl_s": {"r": float("inf")}}, True),
        ({"max_ttl_s": float("inf")}, True),  # clients may ask for forever
        ({"ttl_s": float("inf"), "redis_url": "redis://127.0.0.1:6379/3"}, True),  # one server's memory
        ({"ttl_s": float("inf"), "redis_url": "redis://127.0.0.1:6380/0"}, False),
        ({}, False),
    ],
)
async def test_a_never_expiring_cache_on_the_accounts_redis_is_warned_of(
    cache: dict[str, Any], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The accounts' Redis runs with noeviction: cache entries that never expire fill it, and then
    every reservation is refused. Start-up says so when the cache would share its server."""
    import logging

    from faregate.cache.factory import build_cache

    with caplog.at_level(logging.WARNING, "faregate.cache"):
        built = build_cache(CacheSettings(**cache), shared_redis_url="redis://127.0.0.1:6379/0")
    assert built is not None
    await built.close()
    found = [r.getMessage() for r in caplog.records if "never expire" in r.getMessage()]
    assert bool(found) == warned, found


async def test_a_new_instance_adds_the_shared_entries_in_a_few_hand_offs_to_the_worker() -> None:
    """Warming up from the shared stream, each entry was one hand-off to the embedding worker and
    back (and a search of its scope there): 50,000 entries took ~70 s (bench/semantic_warmup.py).
    An XREAD's entries go to the index SHARED_PER_HANDOFF at a time; this instance's own and
    expired ones are left out."""
    import time

    import numpy as np

    from faregate.cache.semantic import SemanticCache
    from faregate.cache.semantic_sync import SHARED_PER_HANDOFF, SemanticSync
    from faregate.embedding.embedder import DIMENSIONS, AsyncEmbedder

    embedder = AsyncEmbedder()  # no model: shared entries carry their vectors
    semantic: SemanticCache[str] = SemanticCache(embedder)
    handoffs = 0
    call = embedder.call

    async def counted(fn: Any, *args: Any) -> Any:
        nonlocal handoffs
        handoffs += 1
        return await call(fn, *args)

    embedder.call = counted  # type: ignore[method-assign]
    sync = SemanticSync("redis://127.0.0.1:1/0", semantic)
    rng = np.random.default_rng(3)

    def entry(i: int, origin: str = "other", ttl_s: float = 600) -> tuple[bytes, dict[bytes, bytes]]:
        vector = rng.standard_normal(DIMENSIONS).astype(np.float32)
        return f"1-{i}".encode(), {
            b"origin": origin.encode(),
            b"scope": orjson.dumps(["key:k", "m", None, None]),
            b"text": f"question {i}".encode(),
            b"key": f"k{i}".encode(),
            b"expires_at": str(time.time() + ttl_s).encode(),
            b"vector": (vector / np.linalg.norm(vector)).tobytes(),
        }

    entries = [entry(i) for i in range(2 * SHARED_PER_HANDOFF + 50)]
    entries += [entry(1000, origin=sync.origin), entry(1001, ttl_s=-1)]

    async def xread(*args: Any, **kwargs: Any) -> Any:  # the transport seam: one read of the stream
        return [(b"faregate:semantic", entries)]

    sync._redis.xread = xread  # type: ignore[method-assign]
    try:
        await sync._read()
    finally:
        await sync.close()
        await embedder.close()
    assert sync.received == len(semantic.index) == 2 * SHARED_PER_HANDOFF + 50
    assert handoffs == 3
    assert sync._last == "1-1001"
