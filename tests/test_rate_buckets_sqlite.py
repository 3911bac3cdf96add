"""Rate limits shared through the SQLite file (`serve --workers N`): two connections stand in for
two worker processes; each takes from the same buckets, in the reservation's transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faregate.accounts.backend import Admitted, HoldRef, Refused, ReserveAsk
from faregate.accounts.embedded import EmbeddedAccounts
from faregate.accounts.keys import KeyStore
from faregate.accounts.policy import Limits, hour_of
from faregate.store.sqlite.store import SQLiteStore


@pytest.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedAccounts, EmbeddedAccounts]]:
    first, second = await SQLiteStore.open(tmp_path), await SQLiteStore.open(tmp_path)
    yield EmbeddedAccounts(first, shared=True), EmbeddedAccounts(second, shared=True)
    await first.close()
    await second.close()


async def new_key(accounts: EmbeddedAccounts, credits_nano: int = 10**12) -> str:
    store = accounts._store
    key, _ = await KeyStore(store).create("t", credits_nano=credits_nano)
    return key.id


def ask(key_id: str, n: int, limits: Limits, tokens: int = 100, amount: int = 1) -> ReserveAsk:
    return ReserveAsk(key_id, f"hold_{n}", f"req_{n}", amount, tokens, hour_of(time.time()), (), limits, 60.0)


async def test_requests_per_minute_hold_across_workers(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    key_id = await new_key(a)
    limits = Limits(requests_per_minute=7, tokens_per_minute=None)
    results = await asyncio.gather(*((a, b)[i % 2].reserve(ask(key_id, i, limits)) for i in range(40)))
    admitted = [r for r in results if isinstance(r, Admitted)]
    # In-process buckets would admit 7 per worker (14); refills over the run add at most one.
    assert len(admitted) in (7, 8), len(admitted)
    refused = [r for r in results if isinstance(r, Refused)]
    assert all(r.reason == "rate" and r.rate is not None and r.rate.what == "requests" for r in refused)


async def test_tokens_are_taken_and_given_back_across_workers(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    key_id = await new_key(a)
    limits = Limits(requests_per_minute=None, tokens_per_minute=1000)
    first = await a.reserve(ask(key_id, 1, limits, tokens=600))
    assert isinstance(first, Admitted) and first.rate is not None and first.rate.tokens is not None
    assert first.rate.tokens.remaining == 400
    # The other worker sees the 600 taken: 600 more do not fit.
    refused = await b.reserve(ask(key_id, 2, limits, tokens=600))
    assert isinstance(refused, Refused) and refused.reason == "rate"
    # Settled at 100 tokens used: 500 come back, in the settlement's transaction.
    await a.settle(key_id, HoldRef("hold_1", "req_1", hour_of(time.time()), 600, limits), 1, 100)
    second = await b.reserve(ask(key_id, 3, limits, tokens=600))
    assert isinstance(second, Admitted)
    # A released hold gives all its tokens back.
    await b.release(key_id, HoldRef("hold_3", "req_3", hour_of(time.time()), 600, limits))
    third = await a.reserve(ask(key_id, 4, limits, tokens=800))
    assert isinstance(third, Admitted)


async def test_a_refused_reservation_takes_nothing(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    key_id = await new_key(a, credits_nano=5)
    limits = Limits(requests_per_minute=2, tokens_per_minute=None)
    # Refused for credits (10 > 5): the request unit is not kept.
    assert isinstance(await a.reserve(ask(key_id, 1, limits, amount=10)), Refused)
    assert isinstance(await b.reserve(ask(key_id, 2, limits, amount=1)), Admitted)
    assert isinstance(await a.reserve(ask(key_id, 3, limits, amount=1)), Admitted)
    last = await b.reserve(ask(key_id, 4, limits, amount=1))
    assert isinstance(last, Refused) and last.reason == "rate"


async def test_cache_hits_count_against_the_shared_requests_bucket(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    key_id = await new_key(a)
    taken = [await (a, b)[i % 2].take_request(key_id, 3) for i in range(5)]
    assert [type(t).__name__ for t in taken] == ["RateState"] * 3 + ["RateRefusal"] * 2


async def test_a_key_changed_through_one_worker_is_heard_by_the_other_once(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    heard: list[str] = []
    b.on_key_changed(heard.append)
    await b.read_key_events()
    assert heard == []
    await a.key_changed("key_x", revoked=True)
    await a.key_changed("key_y")
    await b.read_key_events()
    await b.read_key_events()
    assert heard == ["key_x", "key_y"]


async def test_a_revoked_key_is_told_401_before_its_rate_limit(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    # As on Redis: revocation is checked before the rate limits, so a revoked key that is also
    # over its limit gets 401, not 429 (come back later).
    a, b = two_workers
    key_id = await new_key(a)
    limits = Limits(requests_per_minute=1, tokens_per_minute=None)
    assert isinstance(await a.reserve(ask(key_id, 1, limits)), Admitted)
    assert await KeyStore(a._store).revoke(key_id)
    refused = await b.reserve(ask(key_id, 2, limits))
    assert isinstance(refused, Refused) and refused.reason == "revoked", refused


async def test_a_cache_hit_of_a_revoked_key_is_refused_as_a_reservation_is(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    key_id = await new_key(a)
    assert await KeyStore(a._store).revoke(key_id)
    for rpm in (3, None):
        refused = await b.take_request(key_id, rpm)
        assert isinstance(refused, Refused) and refused.reason == "revoked", refused


async def test_an_overrun_settled_after_the_bucket_refilled_is_still_taken(
    two_workers: tuple[EmbeddedAccounts, EmbeddedAccounts],
) -> None:
    a, b = two_workers
    key_id = await new_key(a)
    limits = Limits(requests_per_minute=None, tokens_per_minute=60)  # a token a second
    assert isinstance(await a.reserve(ask(key_id, 1, limits, tokens=10)), Admitted)
    # A long request: a minute has passed when it settles, so the bucket is full again.
    await a._store.run_in_transaction(
        lambda conn: conn.execute("UPDATE rate_buckets SET tok_at = tok_at - 60 WHERE key_id = ?", (key_id,))
    )
    # It used 50 of its 10: the 40 over come off the full bucket (20 left), not off the level it had
    # when admitted (50 - 40, refilled to full again at the next take: the overrun forgiven).
    await a.settle(key_id, HoldRef("hold_1", "req_1", hour_of(time.time()), 10, limits), 1, 50)
    admitted = await b.reserve(ask(key_id, 2, limits, tokens=0))
    assert isinstance(admitted, Admitted) and admitted.rate is not None and admitted.rate.tokens is not None
    assert 20 <= admitted.rate.tokens.remaining < 50, admitted.rate.tokens  # refilled a token a second since
