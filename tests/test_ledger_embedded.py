"""The embedded (SQLite) ledger: reservations are atomic, every change is a ledger row, holds expire."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from faregate.accounts.backend import Admitted, HoldRef, Refused, ReserveAsk
from faregate.accounts.embedded import EmbeddedAccounts
from faregate.accounts.keys import KeyStore
from faregate.accounts.metered import MeteredAdmission, PolicyCache
from faregate.accounts.policy import Budget, Limits, hour_of, window_of
from faregate.config import AccountsSettings
from faregate.errors import InsufficientCredits
from faregate.server.parse import parse_chat_request
from faregate.store.protocols import LedgerRow
from faregate.store.sqlite.store import DB_FILENAME, SQLiteStore

UNLIMITED = Limits(None, None)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = await SQLiteStore.open(tmp_path)
    yield store
    await store.close()


async def new_key(store: SQLiteStore, credits_nano: int) -> str:
    key, _ = await KeyStore(store).create("t", credits_nano=credits_nano)
    return key.id


def ask(
    key_id: str, n: int, amount: int, *, ttl: float = 60.0, windows: tuple = (), limits: Limits = UNLIMITED
) -> ReserveAsk:  # type: ignore[type-arg]
    import time

    return ReserveAsk(
        key_id, f"hold_{n}", f"req_{n}", amount, 100, hour_of(time.time()), windows, limits, ttl
    )


def ledger_sum(path: Path, key_id: str) -> int:
    with sqlite3.connect(path / DB_FILENAME) as db:
        return int(
            db.execute(
                "SELECT COALESCE(SUM(amount_nano), 0) FROM ledger WHERE key_id = ?", (key_id,)
            ).fetchone()[0]
        )


async def test_grant_is_a_ledger_row_and_audit_is_clean(store: SQLiteStore, tmp_path: Path) -> None:
    key_id = await new_key(store, 10_000_000)
    accounts = EmbeddedAccounts(store)
    balance = await accounts.balance(key_id)
    assert balance is not None and balance.balance_nano == 10_000_000 == ledger_sum(tmp_path, key_id)
    rows = await store.accounts.ledger_rows(key_id, 10)
    assert [(r.kind, r.amount_nano) for r in rows] == [("grant", 10_000_000)]
    assert (await accounts.audit()).clean


async def test_concurrent_reservations_never_overspend(store: SQLiteStore, tmp_path: Path) -> None:
    key_id = await new_key(store, 10_000_000)  # $0.01
    accounts = EmbeddedAccounts(store)
    results = await asyncio.gather(*(accounts.reserve(ask(key_id, i, 1_000_000)) for i in range(200)))
    admitted = [r for r in results if isinstance(r, Admitted)]
    assert len(admitted) == 10
    assert all(
        isinstance(r, Refused) and r.reason == "credits" for r in results if not isinstance(r, Admitted)
    )
    balance = await accounts.balance(key_id)
    assert balance is not None and (balance.balance_nano, balance.held_nano) == (0, 10_000_000)
    assert ledger_sum(tmp_path, key_id) == 0
    assert (await accounts.audit()).clean


async def test_settle_charges_the_cost_and_gives_back_the_rest(store: SQLiteStore, tmp_path: Path) -> None:
    key_id = await new_key(store, 10_000_000)
    accounts = EmbeddedAccounts(store)
    assert isinstance(await accounts.reserve(ask(key_id, 1, 4_000_000)), Admitted)
    assert isinstance(await accounts.reserve(ask(key_id, 2, 4_000_000)), Admitted)
    ref = HoldRef("hold_1", "req_1", hour_of(0), 100, UNLIMITED)
    await accounts.settle(key_id, HoldRef("hold_1", "req_1", ref.hour, 100, UNLIMITED), 1_234_567, 50)
    await accounts.release(key_id, HoldRef("hold_2", "req_2", ref.hour, 100, UNLIMITED))
    balance = await accounts.balance(key_id)
    assert balance is not None and balance.balance_nano == 10_000_000 - 1_234_567 and balance.held_nano == 0
    kinds = [
        (r.kind, r.amount_nano, r.cost_nano) for r in reversed(await store.accounts.ledger_rows(key_id, 10))
    ]
    assert kinds == [
        ("grant", 10_000_000, None),
        ("reservation", -4_000_000, None),
        ("reservation", -4_000_000, None),
        ("settlement", 4_000_000 - 1_234_567, 1_234_567),
        ("release", 4_000_000, None),
    ]
    assert ledger_sum(tmp_path, key_id) == balance.balance_nano
    assert (await accounts.audit()).clean


async def test_expired_holds_are_released_by_admission_and_by_the_sweeper(store: SQLiteStore) -> None:
    key_id = await new_key(store, 1_000_000)
    accounts = EmbeddedAccounts(store)
    # A hold whose process died: it expires at once.
    assert isinstance(await accounts.reserve(ask(key_id, 1, 1_000_000, ttl=0.0)), Admitted)
    # Admission treats it as released: the whole balance is available again.
    assert isinstance(await accounts.reserve(ask(key_id, 2, 1_000_000, ttl=0.0)), Admitted)
    assert await accounts.sweep() == 1
    rows = await store.accounts.ledger_rows(key_id, 10)
    expired = [r for r in rows if r.kind == "release"]
    assert len(expired) == 2 and all("expired" in (r.note or "") for r in expired)
    # A late settlement (the request finished after its hold expired) is still charged.
    await accounts.settle(key_id, HoldRef("hold_1", "req_1", hour_of(0), 100, UNLIMITED), 300_000, 10)
    balance = await accounts.balance(key_id)
    assert balance is not None and balance.balance_nano == 700_000 and balance.held_nano == 0
    assert (await accounts.audit()).clean


async def test_budget_windows_count_held_and_settled_spend(store: SQLiteStore) -> None:
    import time

    key_id = await new_key(store, 100_000_000)
    accounts = EmbeddedAccounts(store)
    window = window_of(Budget("day", "calendar", 2_500_000), time.time())
    results = [await accounts.reserve(ask(key_id, i, 1_000_000, windows=(window,))) for i in range(3)]
    assert [type(r).__name__ for r in results] == ["Admitted", "Admitted", "Refused"]
    refused = results[2]
    assert (
        isinstance(refused, Refused) and refused.reason == "budget" and refused.window_spent_nano == 2_000_000
    )
    await accounts.settle(key_id, HoldRef("hold_0", None, hour_of(time.time()), 100, UNLIMITED), 100_000, 10)
    # 0.1 settled + 1.0 held = 1.1 of 2.5: one more fits.
    assert isinstance(await accounts.reserve(ask(key_id, 9, 1_000_000, windows=(window,))), Admitted)
    assert await accounts.spent(key_id, [window.since_hour]) == [2_100_000]


async def test_rate_limits_refuse_before_touching_the_store(store: SQLiteStore) -> None:
    key_id = await new_key(store, 100_000_000)
    accounts = EmbeddedAccounts(store)
    limits = Limits(2, None)
    results = [await accounts.reserve(ask(key_id, i, 1, limits=limits)) for i in range(3)]
    assert isinstance(results[2], Refused) and results[2].reason == "rate"
    assert len(await accounts.holds(key_id)) == 2


async def test_revoked_key_is_refused_by_the_store_itself(store: SQLiteStore) -> None:
    keys = KeyStore(store)
    key, _ = await keys.create("t", credits_nano=1_000_000)
    assert await keys.revoke(key.id)
    refused = await EmbeddedAccounts(store).reserve(ask(key.id, 1, 1))
    assert isinstance(refused, Refused) and refused.reason == "revoked"


async def test_ledger_is_append_only(store: SQLiteStore, tmp_path: Path) -> None:
    await new_key(store, 5)
    with (
        sqlite3.connect(tmp_path / DB_FILENAME) as db,
        pytest.raises(sqlite3.IntegrityError, match="append-only"),
    ):
        db.execute("UPDATE ledger SET amount_nano = 1000000")
    with (
        sqlite3.connect(tmp_path / DB_FILENAME) as db,
        pytest.raises(sqlite3.IntegrityError, match="append-only"),
    ):
        db.execute("DELETE FROM ledger")


async def test_audit_reports_a_tampered_balance(store: SQLiteStore, tmp_path: Path) -> None:
    key_id = await new_key(store, 5_000)
    await store.accounts.credit(LedgerRow("topup_x", key_id, "topup", 1_000, 1.0))
    with sqlite3.connect(tmp_path / DB_FILENAME) as db:
        db.execute("UPDATE accounts SET balance_nano = balance_nano + 1 WHERE key_id = ?", (key_id,))
    report = await EmbeddedAccounts(store).audit()
    assert not report.clean and key_id in report.problems[0] and "0.000006001" in report.problems[0]


async def test_metered_admission_caps_a_single_request(store: SQLiteStore) -> None:
    key_id = await new_key(store, 10_000_000_000)
    await store.accounts.set_policy(key_id, {"max_request_nano": 1_000_000})
    accounts = EmbeddedAccounts(store)
    admission = MeteredAdmission(accounts, PolicyCache(store.accounts), AccountsSettings(), 60.0)
    key = next(k for k in await KeyStore(store).list() if k.id == key_id)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    with pytest.raises(InsufficientCredits) as refused:
        await admission.admit(key, request, Decimal("0.0011"), 10)
    assert refused.value.code == "request_budget_exceeded" and "$0.001" in refused.value.message
    hold = await admission.admit(key, request, Decimal("0.0009"), 10)
    assert hold.reserved_usd == Decimal("0.0009") and "x-ratelimit-limit-requests" in hold.headers
    await admission.settle(hold, Decimal("0.0001"), 5)
    balance = await accounts.balance(key_id)
    assert balance is not None and balance.balance_nano == 10_000_000_000 - 100_000


async def test_a_revoked_key_over_its_request_cap_is_told_401_not_402(store: SQLiteStore) -> None:
    # The per-request cap was checked before anything asked the store: a key revoked elsewhere,
    # still in this process's key cache, got 402 request_budget_exceeded for an over-cap request
    # where any other request of it gets 401.
    from faregate.errors import AuthenticationFailed

    key_id = await new_key(store, 10_000_000_000)
    await store.accounts.set_policy(key_id, {"max_request_nano": 1_000_000})
    admission = MeteredAdmission(
        EmbeddedAccounts(store), PolicyCache(store.accounts), AccountsSettings(), 60.0
    )
    key = next(k for k in await KeyStore(store).list() if k.id == key_id)
    assert await KeyStore(store).revoke(key_id)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    with pytest.raises(AuthenticationFailed):
        await admission.admit(key, request, Decimal("0.0011"), 10)


async def test_a_reservation_the_store_could_not_make_gives_its_rate_units_back(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate limits are taken in memory before the store is asked; when the store fails (a
    503 accounts_unavailable, nothing admitted), the request and its tokens go back."""
    key_id = await new_key(store, 10_000_000)
    accounts = EmbeddedAccounts(store)
    limits = Limits(1, 1000)
    reserve = accounts.ledger.reserve

    async def failing(*args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(accounts.ledger, "reserve", failing)
    with pytest.raises(sqlite3.OperationalError):
        await accounts.reserve(ask(key_id, 1, 1_000_000, limits=limits))
    monkeypatch.setattr(accounts.ledger, "reserve", reserve)
    admitted = await accounts.reserve(ask(key_id, 2, 1_000_000, limits=limits))
    assert isinstance(admitted, Admitted), admitted


async def test_two_policy_changes_at_once_both_stay(store: SQLiteStore) -> None:
    # Each PATCH changes only the fields it names; two at once on one key must not write
    # back the other's field as it read it before (a lost update).
    from faregate.accounts.service import AccountsService, PolicyChange

    keys = KeyStore(store)
    accounts = EmbeddedAccounts(store)
    service = AccountsService(keys, accounts, PolicyCache(store.accounts), AccountsSettings())
    key_id = await new_key(store, 0)
    budget = Budget("day", "calendar", 5_000_000_000)
    await asyncio.gather(
        service.update(key_id, PolicyChange(requests_per_minute=7)),
        service.update(key_id, PolicyChange(budgets=(budget,))),
    )
    view = await service.view(key_id)
    assert view.policy.requests_per_minute == 7 and view.policy.budgets == (budget,)


async def test_a_key_is_answered_with_its_raw_value_once_it_exists(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key's raw value is shown only in the creation's answer. Its policy used to be written
    # after the key (with its credits) was committed, then broadcast, then read back: a failure
    # in any of those answered 503 for a key that existed, with its credits, and whose raw value
    # was lost. The key, its account, its policy and its grant are now one transaction, and the
    # answer needs nothing more from the store.
    from faregate.accounts.service import AccountsService, PolicyChange
    from faregate.store.protocols import StoreUnavailable

    keys = KeyStore(store)
    accounts = EmbeddedAccounts(store)
    service = AccountsService(keys, accounts, PolicyCache(store.accounts), AccountsSettings())

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(store.accounts, "set_policy", down)
    monkeypatch.setattr(accounts, "key_changed", down)
    monkeypatch.setattr(accounts, "balance", down)
    monkeypatch.setattr(accounts, "spent", down)
    budget = Budget("day", "calendar", 2_000_000_000)
    view, raw = await service.create_key(
        "checkout", credits_nano=5_000, change=PolicyChange(requests_per_minute=60, budgets=(budget,))
    )
    assert view.balance_nano == 5_000 and view.held_nano == 0 and view.policy.requests_per_minute == 60
    assert [s.spent_nano for s in view.budgets] == [0] and view.limits.requests_per_minute == 60
    monkeypatch.undo()
    assert (await keys.verify(raw)) == view.key
    assert (await service.view(view.key.id)).policy == view.policy
    assert (await service.view(view.key.id)).balance_nano == 5_000

    # A store that fails the creation itself leaves nothing behind.
    async def insert_fails(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("disk I/O error")

    monkeypatch.setattr(store.accounts, "open_account", insert_fails)
    with pytest.raises(StoreUnavailable):
        await service.create_key("lost", credits_nano=5_000, change=PolicyChange(requests_per_minute=1))
    assert [k.name for k in await keys.list()] == ["checkout"]


async def test_a_rename_with_a_policy_change_is_one_transaction(store: SQLiteStore, tmp_path: Path) -> None:
    # The name was written (and committed) before the policy: a failure writing the policy
    # answered 503 with the key already renamed. Both are one transaction now.
    from faregate.accounts.service import AccountsService, PolicyChange

    keys = KeyStore(store)
    service = AccountsService(keys, EmbeddedAccounts(store), PolicyCache(store.accounts), AccountsSettings())
    key, _ = await keys.create("before")
    with sqlite3.connect(tmp_path / DB_FILENAME) as db:
        db.execute(
            "CREATE TRIGGER policy_fails BEFORE UPDATE OF requests_per_minute ON accounts"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    with pytest.raises(Exception, match="disk I/O error"):
        await service.update(key.id, PolicyChange(requests_per_minute=5), "after")
    view = await service.view(key.id)
    assert view.key.name == "before" and view.policy.requests_per_minute is None
    with sqlite3.connect(tmp_path / DB_FILENAME) as db:
        db.execute("DROP TRIGGER policy_fails")
    view = await service.update(key.id, PolicyChange(requests_per_minute=5), "after")
    assert view.key.name == "after" and view.policy.requests_per_minute == 5


async def test_a_revoked_key_is_told_401_before_its_rate_limit(store: SQLiteStore, tmp_path: Path) -> None:
    # Revoked by another process (the CLI) while this one still caches the key: the store refuses
    # it at the reservation, but the in-memory rate limit was asked first, so a rate-limited key
    # got 429 (come back later) where Redis, which checks revocation first, answers 401.
    key_id = await new_key(store, 1_000_000)
    accounts = EmbeddedAccounts(store)
    limits = Limits(1, None)
    assert isinstance(await accounts.reserve(ask(key_id, 1, 1, limits=limits)), Admitted)
    cli = await SQLiteStore.open(tmp_path)
    assert await KeyStore(cli).revoke(key_id)
    await cli.close()
    refused = await accounts.reserve(ask(key_id, 2, 1, limits=limits))
    assert isinstance(refused, Refused) and refused.reason == "revoked", refused


@pytest.mark.parametrize("rpm", [60, None])
async def test_a_revoked_key_gets_401_on_a_cache_hit_as_on_a_miss(
    store: SQLiteStore, tmp_path: Path, rpm: int | None
) -> None:
    # Revoked by another process (the CLI) while this one still caches the key: a miss is refused
    # by the reservation (401); a cache hit only took a request from the rate limit, so the
    # revoked key kept getting cached answers until the key cache expired.
    from faregate.config import TierLimits
    from faregate.errors import AuthenticationFailed

    key_id = await new_key(store, 1_000_000)
    settings = AccountsSettings(standard=TierLimits(requests_per_minute=rpm, tokens_per_minute=None))
    admission = MeteredAdmission(EmbeddedAccounts(store), PolicyCache(store.accounts), settings, 60.0)
    key = next(k for k in await KeyStore(store).list() if k.id == key_id)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    await admission.count_hit(key, request)
    cli = await SQLiteStore.open(tmp_path)
    assert await KeyStore(cli).revoke(key_id)
    await cli.close()
    with pytest.raises(AuthenticationFailed):
        await admission.admit(key, request, Decimal("0.0001"), 10)
    with pytest.raises(AuthenticationFailed):
        await admission.count_hit(key, request)


async def test_a_top_up_past_the_largest_exact_balance_is_refused(store: SQLiteStore) -> None:
    # parse_usd caps one amount at 2**53-1 nano-dollars, not the sum: repeated top-ups passed it,
    # where Redis scripts (doubles) can no longer compare a balance exactly. Refused with a 400,
    # counting what the key's holds will give back.
    from faregate.accounts.money import MAX_NANO
    from faregate.accounts.service import AccountsService
    from faregate.errors import InvalidRequest

    keys = KeyStore(store)
    accounts = EmbeddedAccounts(store)
    service = AccountsService(keys, accounts, PolicyCache(store.accounts), AccountsSettings())
    key_id = await new_key(store, MAX_NANO - 10)
    assert isinstance(await accounts.reserve(ask(key_id, 1, 4)), Admitted)
    with pytest.raises(InvalidRequest) as refused:
        await service.add_credits(key_id, 11)
    assert refused.value.status == 400 and refused.value.param == "amount_usd"
    assert "9007199.254740991" in refused.value.message and "0.00000001" in refused.value.message
    view = await service.view(key_id)
    assert (view.balance_nano, view.held_nano) == (MAX_NANO - 14, 4)
    assert (await service.add_credits(key_id, 10)).balance_nano == MAX_NANO - 4
    await accounts.release(key_id, HoldRef("hold_1", "req_1", 0, 100, UNLIMITED))
    assert (await service.view(key_id)).balance_nano == MAX_NANO
    with pytest.raises(InvalidRequest):
        await service.add_credits(key_id, 1)
    assert (await accounts.audit()).clean


async def test_a_stopped_instance_that_holds_nothing_is_no_longer_listed(store: SQLiteStore) -> None:
    """Every start (a restart, a worker respawned) is a new instance: once its lease is over and
    its holds are released, the sweeper forgets it, as on Redis, or /admin/instances grows for good."""
    key_id = await new_key(store, 1_000_000)
    stopped, killed, serving = EmbeddedAccounts(store), EmbeddedAccounts(store), EmbeddedAccounts(store)
    for accounts in (stopped, killed, serving):
        await accounts.lease.start()
    held = dataclasses.replace(ask(key_id, 1, 1_000_000), instance_id=killed.instance_id)
    assert isinstance(await killed.reserve(held), Admitted)
    await stopped.close()
    await killed.ledger.end_lease(killed.instance_id)  # its lease lapsed: it died holding a reservation
    assert await serving.sweep() == 1
    listed = {row.instance_id for row in await serving.instances()}
    assert listed == {serving.instance_id}, "gone instances that hold nothing are forgotten"
    await serving.close()


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_cache_hit_carries_the_token_headers_too(store: SQLiteStore, workers: int) -> None:
    # A hit carried only x-ratelimit-*-requests: the token ones, which every other answer carries,
    # were missing. The token bucket is read, not taken, and an overrun in it refuses no hit.
    from faregate.config import TierLimits

    key_id = await new_key(store, 1_000_000)
    settings = AccountsSettings(standard=TierLimits(requests_per_minute=60, tokens_per_minute=1000))
    backend = EmbeddedAccounts(store, shared=workers > 1)
    admission = MeteredAdmission(backend, PolicyCache(store.accounts), settings, 60.0)
    key = next(k for k in await KeyStore(store).list() if k.id == key_id)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}, {}, "req_1")
    hold = await admission.admit(key, request, Decimal("0.0001"), 900)
    hit = await admission.count_hit(key, request)
    assert set(hit) == set(hold.headers)
    assert int(hit["x-ratelimit-remaining-tokens"]) < 1000  # the reservation's 900 are out
    assert int(hit["x-ratelimit-remaining-requests"]) < int(hold.headers["x-ratelimit-remaining-requests"])
    await admission.settle(hold, Decimal("0.00005"), 1900)  # 1000 more than reserved: level below 0
    overrun = await admission.count_hit(key, request)
    assert overrun["x-ratelimit-remaining-tokens"] == "0" and overrun["x-ratelimit-limit-tokens"] == "1000"
    await admission.settlements.close()
