"""The cache shared through a real Redis: two gateway processes, and Redis dying mid-traffic."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from harness import GatewayProcess, SimProcess, create_key, run_gateway
from servers import RedisServer, redis_server, run_redis  # noqa: F401

pytestmark = pytest.mark.e2e


def ask(gateway: GatewayProcess, key: str, text: str, headers: dict[str, str] | None = None) -> str:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b",
        messages=[{"role": "user", "content": text}],
        temperature=0,
        extra_body={"faregate": {"cache": {"namespace": "shared"}}},
        extra_headers=headers,
    )
    status = str(raw.headers["x-faregate-cache"])
    if status != "semantic-hit":
        assert raw.parse().choices[0].message.content == text  # the simulator echoes
    return status


def eventually(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_two_instances_share_exact_and_semantic_entries(
    sim: SimProcess,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = f"cache: {{redis_url: {redis_server.new_database()!r}, semantic: {{enabled: true}}}}\n"
    with run_gateway(tmp_path / "a", sim, config) as a, run_gateway(tmp_path / "b", sim, config) as b:
        key_a, key_b = create_key(a.store_path, "a"), create_key(b.store_path, "b")
        assert ask(a, key_a, "What is the boiling point of water at sea level?") == "miss"
        assert eventually(lambda: ask(b, key_b, "What is the boiling point of water at sea level?") == "hit")
        assert ask(a, key_a, "How do I reverse a list in Python?") == "miss"
        # b learns the meaning from the Redis stream it tails, then serves the paraphrase.
        assert eventually(lambda: ask(b, key_b, "How can I reverse a Python list?") == "semantic-hit")
        # A refresh looks nothing up (nothing embedded its question): its entry is shared too.
        assert ask(
            a, key_a, "How do I sort a dictionary by value in Python?", {"Cache-Control": "no-cache"}
        ) == ("miss")
        assert eventually(
            lambda: ask(b, key_b, "How can I sort a Python dictionary by value?") == "semantic-hit"
        )


def test_redis_dying_mid_traffic_degrades_to_no_cache(sim: SimProcess, tmp_path: Path) -> None:
    with run_redis() as redis:
        config = f"cache: {{redis_url: 'redis://127.0.0.1:{redis.port}/0'}}\n"
        with run_gateway(tmp_path / "gw", sim, config) as gateway:
            key = create_key(gateway.store_path, "k")
            assert ask(gateway, key, "cache me while you can") == "miss"
            assert eventually(lambda: ask(gateway, key, "cache me while you can") == "hit")
            redis.process.kill()
            redis.process.wait()
            for i in range(20):
                assert ask(gateway, key, f"still answered {i}") in ("miss", "bypass")
            assert ask(gateway, key, "cache me while you can") == "miss"


async def test_closing_stops_the_semantic_sharing_before_the_embedding_worker(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tail of the shared stream adds entries to the index on the embedding worker. Closed
    after that worker, a tail still catching up (a new instance reads the whole stream) failed on
    every entry left, each logged with its traceback, until it was stopped."""
    import asyncio

    import numpy as np

    from faregate.cache.factory import build_cache
    from faregate.cache.semantic_index import Scope
    from faregate.cache.semantic_sync import SemanticSync
    from faregate.config import CacheSettings
    from faregate.config.sections import SemanticCacheSettings
    from faregate.embedding.embedder import DIMENSIONS

    url = redis_server.new_database()
    other = SemanticSync(url, None)  # another instance, which cached these before
    vectors = np.random.default_rng(7).standard_normal((3000, DIMENSIONS)).astype(np.float32)
    for i, vector in enumerate(vectors):
        await other.publish(
            Scope("key:k", "m"), f"question {i}", f"key {i}", 600, vector / np.linalg.norm(vector)
        )
    await other.close()
    cache = build_cache(CacheSettings(redis_url=url, semantic=SemanticCacheSettings(enabled=True)))
    assert cache is not None and cache.semantic is not None
    for start in cache.starters:
        start()
    for _ in range(3000):  # up to 30 s: until the tail has begun adding the entries
        if len(cache.semantic.index):
            break
        await asyncio.sleep(0.01)
    assert len(cache.semantic.index) > 0, "the tail never caught up"
    await cache.close()
    failures = [r for r in caplog.records if "could not apply a shared semantic" in r.getMessage()]
    assert failures == []


@pytest.mark.parametrize("ttl_s", [float("inf"), 1e300, 1e17])
async def test_a_ttl_past_what_redis_holds_keeps_the_entry_for_as_long_as_it_can(
    redis_server: RedisServer,  # noqa: F811
    ttl_s: float,
) -> None:
    """`ttl_s: .inf` (or a client's TTL under `max_ttl_s: .inf`) is the in-process store's "never
    expires"; Redis was sent an expiry it cannot hold (int(inf) raised, a larger one than Redis's
    range was refused), so no entry was ever kept, each write counted as Redis failing, and after
    three the breaker skipped a healthy Redis for the reads too."""
    from faregate.cache.stores import RedisStore

    store = RedisStore(redis_server.new_database())
    try:
        for i in range(5):
            await store.set(f"k{i}", b"answer", ttl_s)
        assert store.errors == 0
        assert [await store.get(f"k{i}") for i in range(5)] == [b"answer"] * 5
    finally:
        await store.close()


async def test_redis_keeps_no_entry_over_the_configured_size_as_the_in_process_store(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """The in-process store kept no answer over 128 KiB; Redis kept every one whole (a 10 MB answer,
    a long stream's), filling a Redis that may hold the accounts too. Both now keep none over
    `cache.max_entry_bytes`: served, not kept (not counted as a write), and what the key held is
    dropped as the answer that was to replace it is."""
    from faregate.cache.factory import build_cache
    from faregate.cache.stores import RedisStore
    from faregate.config import CacheSettings
    from faregate.server.parse import parse_chat_request
    from faregate.types import Usage

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    request = parse_chat_request(body, {}, "req")
    request.key_id = "key_a"
    cache = build_cache(CacheSettings(redis_url=redis_server.new_database(), max_entry_bytes=4096))
    assert cache is not None and isinstance(cache.store, RedisStore)
    decision = cache.decide(request, {}, lambda: "m")

    def answer(size: int) -> dict[str, object]:
        return {"choices": [{"message": {"role": "assistant", "content": "x" * size}}]}

    try:
        assert await cache._write(decision, answer(3000), "m", "p", Usage(1, 750))
        assert cache.writes == 1
        assert (await cache.lookup(decision, request)) is not None
        assert not await cache._write(decision, answer(5000), "m", "p", Usage(1, 1250))
        assert cache.writes == 1 and cache.store.errors == 0
        assert await cache.lookup(decision, request) is None
    finally:
        await cache.close()
