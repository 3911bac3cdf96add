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
    miss = Exchange.begin(cast(Any, None))
    offer = SimpleNamespace(provider="p")
    served_by = cast(Any, SimpleNamespace(model=SimpleNamespace(name="m"), offer=offer))
    miss.settled(served_by, usage, gpt4o.cost(usage))
    miss.finished(gpt4o)

    c = ResponseCache(CacheSettings(), MemoryStore())
    decision = c.decide(request(BASE), {}, lambda: "m")
    await c._write(decision, {"choices": []}, "m", "p", usage)
    cached = await c.lookup(decision, request(BASE))
    assert cached is not None and cached.usage == usage
    hit = Exchange.begin(cast(Any, None))
    hit.from_cache(cached)
    hit.finished(gpt4o)
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
