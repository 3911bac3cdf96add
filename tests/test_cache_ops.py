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
