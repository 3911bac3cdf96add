"""The exact cache: keying, cacheability, stores, and the answer replayed as a stream."""

from __future__ import annotations

import inspect
from typing import Any

import openai
import pytest

from faregate.cache.keying import IGNORED_FIELDS, KEY_FIELDS, exact_key, is_deterministic
from faregate.cache.service import ResponseCache
from faregate.cache.stores import MemoryStore
from faregate.config import CacheSettings
from faregate.errors import InvalidRequest
from faregate.server.parse import parse_chat_request

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def request(body: dict[str, Any], key_id: str = "key_a"):  # type: ignore[no-untyped-def]
    parsed = parse_chat_request(body, {}, "req")
    parsed.key_id = key_id
    return parsed


def test_every_sdk_field_is_classified() -> None:
    """A new OpenAI field must be put in KEY_FIELDS or IGNORED_FIELDS before it can be cached."""
    sdk_fields = set(inspect.signature(openai.resources.chat.completions.Completions.create).parameters)
    sdk_fields -= {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
    unclassified = sorted(sdk_fields - KEY_FIELDS - IGNORED_FIELDS)
    assert unclassified == [], f"decide whether these change the answer: {unclassified}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("messages", [{"role": "user", "content": "hello"}]),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("temperature", 0.0001),
        ("top_p", 0.5),
        ("seed", 7),
        ("max_tokens", 5),
        ("stop", ["\n"]),
        ("n", 2),
        ("logit_bias", {"1": 5}),
    ],
)
def test_each_answer_field_changes_the_key(field: str, value: Any) -> None:
    assert exact_key({**BASE, field: value}, "m", "key:a") != exact_key(BASE, "m", "key:a")


def test_ignored_fields_and_key_order_do_not_change_the_key() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert exact_key({**BASE, "user": "u1", "stream": True}, "m", "s") == exact_key(reordered, "m", "s")


def test_model_and_scope_are_part_of_the_key() -> None:
    assert exact_key(BASE, "m", "key:a") != exact_key(BASE, "other", "key:a")
    assert exact_key(BASE, "m", "key:a") != exact_key(BASE, "m", "key:b")


def test_only_deterministic_requests_by_default() -> None:
    assert is_deterministic({"temperature": 0})
    assert not is_deterministic({})  # OpenAI's default temperature is 1
    assert not is_deterministic({"temperature": 0.7})
    assert not is_deterministic({"temperature": 0, "n": 2})


def cache() -> ResponseCache:
    return ResponseCache(
        CacheSettings(tier_ttl_s={"economy": 3600, "premium": 900}, route_ttl_s={"r": 60}), MemoryStore()
    )


def test_decide_scopes_per_key_and_shared_on_request() -> None:
    c = cache()
    a = c.decide(request(BASE, "key_a"), {}, lambda: "m")
    b = c.decide(request(BASE, "key_b"), {}, lambda: "m")
    assert a.status == "lookup" and a.key != b.key
    shared = {**BASE, "faregate": {"cache": {"namespace": "shared"}}}
    shared_a = c.decide(request(shared, "key_a"), {}, lambda: "m")
    shared_b = c.decide(request(shared, "key_b"), {}, lambda: "m")
    assert shared_a.key == shared_b.key != a.key


def test_decide_honours_cache_control_and_hints() -> None:
    c = cache()
    assert c.decide(request(BASE), {"Cache-Control": "no-store"}, lambda: "m").status == "bypass"
    no_cache = c.decide(request(BASE), {"Cache-Control": "no-cache"}, lambda: "m")
    assert no_cache.status == "lookup" and not no_cache.read and no_cache.write
    assert c.decide(request({**BASE, "faregate": {"cache": False}}), {}, lambda: "m").status == "bypass"
    hot = {**BASE, "temperature": 0.9}
    assert c.decide(request(hot), {}, lambda: "m").status == "bypass"
    assert c.decide(request({**hot, "faregate": {"cache": True}}), {}, lambda: "m").status == "lookup"
    assert c.decide(request({**BASE, "brand_new_field": 1}), {}, lambda: "m").status == "bypass"


def test_cache_control_sent_on_several_lines_is_read_whole() -> None:
    """HTTP reads several Cache-Control lines as one comma-separated list (a proxy may split it, a
    client add a line to its defaults): only the first line was read, so a no-store on the second
    was served a hit and its answer kept."""
    from multidict import CIMultiDict, CIMultiDictProxy

    def lines(*values: str) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict(("Cache-Control", value) for value in values))

    c = cache()
    assert c.decide(request(BASE), lines("max-age=600", "no-store"), lambda: "m").status == "bypass"
    refresh = c.decide(request(BASE), lines("max-age=600", "no-cache"), lambda: "m")
    assert (refresh.read, refresh.ttl_s) == (False, 600)
    embeddings = c.decide_embeddings({"input": ["x"]}, {}, "key_a", lines("max-age=9", "no-store"), "e")
    assert embeddings.status == "bypass"


def test_ttl_by_hint_header_route_and_tier() -> None:
    c = cache()
    assert c.decide(request(BASE), {}, lambda: "m").ttl_s == 3600
    assert c.decide(request(BASE), {}, lambda: "r").ttl_s == 60
    assert c.decide(request({**BASE, "faregate": {"tier": "premium"}}), {}, lambda: "m").ttl_s == 900
    assert c.decide(request(BASE), {"Cache-Control": "max-age=30"}, lambda: "m").ttl_s == 30
    assert c.decide(request({**BASE, "faregate": {"cache": {"ttl_s": 5}}}), {}, lambda: "m").ttl_s == 5


@pytest.mark.parametrize(
    ("hint", "param"),
    [
        ("yes", "faregate.cache"),
        ({"ttl_s": -1}, "faregate.cache.ttl_s"),
        ({"namespace": "everyone"}, "faregate.cache.namespace"),
        ({"colour": 1}, "faregate.cache"),
    ],
)
def test_bad_cache_hints_are_400_naming_the_field(hint: Any, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        cache().decide(request({**BASE, "faregate": {"cache": hint}}), {}, lambda: "m")
    assert refused.value.param == param


@pytest.mark.parametrize("enabled", ["false", 0, "no", 1, "true"])
def test_an_enabled_hint_that_is_not_a_boolean_is_400(enabled: Any) -> None:
    """Only `false` turned the cache off and only `true` on: `{"enabled": "false"}` or `0`, meant
    as no, was taken as no hint at all, and the answer was served from the cache and kept."""
    with pytest.raises(InvalidRequest, match="must be true or false") as refused:
        cache().decide(request({**BASE, "faregate": {"cache": {"enabled": enabled}}}), {}, lambda: "m")
    assert refused.value.param == "faregate.cache.enabled"
    for given in (True, False, None):
        cache().decide(request({**BASE, "faregate": {"cache": {"enabled": given}}}), {}, lambda: "m")


async def test_memory_store_ttl_and_lru() -> None:
    now = [0.0]
    store = MemoryStore(max_entries=2, clock=lambda: now[0])
    await store.set("a", b"1", 10)
    await store.set("b", b"2", 10)
    assert await store.get("a") == b"1"  # a is now most recent
    await store.set("c", b"3", 10)
    assert await store.get("b") is None and await store.get("a") == b"1"
    now[0] = 11
    assert await store.get("a") is None


async def test_memory_store_keeps_values_at_their_own_size() -> None:
    """orjson's output holds a >= 4 KiB allocation whatever its length; a cached answer must not
    keep it (bench/soak.py: 10,000 entries held ~40 MiB instead of ~5 MiB)."""
    import tracemalloc

    import orjson

    answer = {"id": "chatcmpl-1", "choices": [{"message": {"content": "hello " * 40}}], "usage": [1, 2]}
    store = MemoryStore(max_entries=1000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(500):
            await store.set(f"k{i}", orjson.dumps(answer), 60)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(orjson.dumps(answer)) < 400
    assert grown / 500 < 1200, grown / 500  # bytes per entry: the value, its key, the LRU slot
    assert await store.get("k7") == orjson.dumps(answer)


def test_routing_hints_and_premium_are_in_the_exact_key() -> None:
    from decimal import Decimal

    from faregate.cache.keying import exact_key, routing_material
    from faregate.routing.routes import Hints

    body = {"messages": [{"role": "user", "content": "q"}], "temperature": 0}
    plain = exact_key(body, "smart", "key:k", routing_material(Hints(), False))
    assert plain == exact_key(body, "smart", "key:k")  # no hints: the key is what it always was
    keys = {
        plain,
        exact_key(body, "smart", "key:k", routing_material(Hints(tier="economy"), False)),
        exact_key(body, "smart", "key:k", routing_material(Hints(tier="premium"), False)),
        exact_key(body, "smart", "key:k", routing_material(Hints(task="code"), False)),
        exact_key(body, "smart", "key:k", routing_material(Hints(max_cost_usd=Decimal("0.01")), False)),
        exact_key(body, "smart", "key:k", routing_material(Hints(), True)),
    }
    assert len(keys) == 6
    # One cap written two ways is one key.
    assert exact_key(body, "smart", "k", routing_material(Hints(max_cost_usd=Decimal("0.010")), False)) == (
        exact_key(body, "smart", "k", routing_material(Hints(max_cost_usd=Decimal("0.01")), False))
    )


async def test_a_requests_max_age_bounds_the_age_of_the_answer_it_is_served() -> None:
    """Cache-Control: max-age=N in a request (HTTP's meaning): no answer older than N seconds;
    max-age=0 asks for a fresh one (a refresh, as no-cache). N is also the TTL of what is stored."""
    import time

    import orjson

    c = cache()
    plain = c.decide(request(BASE), {}, lambda: "m")
    entry = {"body": {"choices": []}, "model": "m", "provider": "p", "usage": [1, 2]}
    await c.store.set(plain.key, orjson.dumps({**entry, "stored_at": time.time() - 100}), 3600)
    assert await c.lookup(plain, request(BASE)) is not None
    fresh = c.decide(request(BASE), {"Cache-Control": "max-age=0"}, lambda: "m")
    assert fresh.key == plain.key and not fresh.read and fresh.write
    assert await c.lookup(fresh, request(BASE)) is None
    recent = c.decide(request(BASE), {"Cache-Control": "max-age=30"}, lambda: "m")
    assert recent.read and recent.ttl_s == 30
    assert await c.lookup(recent, request(BASE)) is None  # stored 100 s ago
    older = c.decide(request(BASE), {"Cache-Control": "max-age=300"}, lambda: "m")
    assert await c.lookup(older, request(BASE)) is not None


def test_a_responses_request_is_keyed_by_what_changes_its_answer_only() -> None:
    """The Responses wire carries the client's body (a key field, for a native pass-through): its
    transport and bookkeeping fields change the key no more than the chat wire's do, so a stream
    is served the whole answer kept before it (and the other way round)."""
    from faregate.server.client_wires import RESPONSES

    c = cache()
    body = {"model": "m", "input": "hi", "temperature": 0}

    def key(extra: dict[str, Any]) -> str:
        return c.decide(request(RESPONSES.to_chat({**body, **extra})), {}, lambda: "m").key

    plain = key({})
    assert key({"stream": True, "stream_options": {"include_obfuscation": False}}) == plain
    assert key({"user": "u", "metadata": {"a": "b"}, "store": False, "prompt_cache_key": "p"}) == plain
    assert key({"faregate": {"cache": {"ttl_s": 60}}}) == plain
    assert key({"include": ["message.output_text.logprobs"]}) != plain
    assert key({"truncation": "auto"}) != plain


def test_a_responses_question_reworded_is_looked_up_in_the_same_semantic_scope() -> None:
    """The semantic cache compares the conversation by meaning and everything else exactly: the
    Responses body carried for a pass-through holds the conversation too (`input`, `instructions`),
    which must not make every wording a scope of its own (no paraphrase could ever hit)."""
    from faregate.server.client_wires import RESPONSES

    c = cache()

    def scope(body: dict[str, Any]) -> Any:
        asked = request(RESPONSES.to_chat({"model": "m", "temperature": 0, **body}))
        query = c._semantic_query(c.decide(asked, {}, lambda: "m"), asked)
        assert query is not None
        return query[0]

    asked = scope({"input": "What is the capital of France?", "instructions": "Be brief."})
    assert scope({"input": "what's france's capital", "instructions": "Be brief."}) == asked
    assert scope({"input": "What is the capital of France?", "instructions": "Be long."}) != asked
    question = {"input": "What is the capital of France?", "instructions": "Be brief."}
    assert scope({**question, "top_p": 0.5}) != asked


def test_a_number_written_with_or_without_a_fraction_is_one_key() -> None:
    """JSON has one number type: `temperature: 0` and `temperature: 0.0` (a Python float as any
    SDK writes it) ask the same thing, as do 1 and 1.0."""
    assert exact_key({**BASE, "temperature": 0.0}, "m", "s") == exact_key(BASE, "m", "s")
    assert exact_key({**BASE, "top_p": 1.0, "max_tokens": 5}, "m", "s") == exact_key(
        {**BASE, "top_p": 1, "max_tokens": 5.0}, "m", "s"
    )
    assert exact_key({**BASE, "top_p": 0.5}, "m", "s") != exact_key({**BASE, "top_p": 1}, "m", "s")
    # A whole float past what orjson writes as an int stays a float (it was a TypeError: a 500).
    assert exact_key({**BASE, "seed": 1e25}, "m", "s") != exact_key({**BASE, "seed": 1e24}, "m", "s")


def test_a_field_at_the_value_every_server_defaults_it_to_is_one_key_with_it_left_out() -> None:
    """`n: 1` and `logprobs: false` ask what leaving them out asks (OpenAI's and every compatible
    server's default; unlike top_p or the penalties, whose defaults some servers set otherwise)."""
    assert exact_key({**BASE, "n": 1, "logprobs": False}, "m", "s") == exact_key(BASE, "m", "s")
    assert exact_key({**BASE, "n": 1.0}, "m", "s") == exact_key(BASE, "m", "s")
    assert exact_key({**BASE, "logprobs": True}, "m", "s") != exact_key(BASE, "m", "s")
