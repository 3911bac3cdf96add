"""Holds on a verification cap (quality/spend.py): admitted at the worst case in the store's cap
ledger, held until the real cost is charged; one that fits alone waits for the others to settle;
one that cannot fit pauses the day; instances sharing a store never overrun the cap together; a
lapsed instance's holds are dropped; an admission does not rewrite the calibration state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from faregate.learning.online.settings import (
    QualitySettings,
    SemanticAcceptanceSettings,
    VerificationSettings,
)
from faregate.quality import spend
from faregate.quality.cache_live import CacheCalibration
from faregate.quality.live import LiveState, RouteCalibration, today
from faregate.quality.service import QualityService, StateContention
from faregate.quality.spend import Holds
from faregate.routing.worst_case import JUDGE_PROMPT_TOKENS, judge_call
from faregate.store.protocols import StoreUnavailable
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.store import SQLiteStore
from faregate.store.sqlite.verifications import SQLiteVerifications
from faregate.store.verifications import HoldAsk, Verdict, VerificationStore
from faregate.types import Price
from test_quality_live import FakeStore


class Leases:
    """Instance leases as the test says: `alive` is who has a current lease."""

    def __init__(self, instance_id: str, alive: set[str], lease_s: float = 0.0) -> None:
        self.instance_id = instance_id
        self.live = alive
        self.lease_s = lease_s

    async def alive(self) -> set[str]:
        return set(self.live)


def route(cap: str) -> RouteCalibration:
    settings = QualitySettings(verification=VerificationSettings(daily_usd_cap=Decimal(cap)))
    return RouteCalibration("r", "router", settings)


@pytest.fixture
async def sqlite_tables(tmp_path: Path) -> AsyncIterator[list[VerificationStore]]:
    """Two connections to one SQLite file, as two processes sharing it have."""
    store = await SQLiteStore.open(tmp_path)
    one, two = await SQLiteAnalytics.open(store.path), await SQLiteAnalytics.open(store.path)
    yield [SQLiteVerifications(one.connection), SQLiteVerifications(two.connection)]
    await one.close()
    await two.close()
    await store.close()


def service(
    table: VerificationStore, capped: RouteCalibration, leases: Leases
) -> tuple[QualityService, Holds]:
    quality = QualityService([capped], table, leases=leases)
    return quality, Holds(quality)


async def stored(table: VerificationStore, scope: str = "route:r") -> tuple[Decimal, dict[str, list[str]]]:
    """The day's spend and the holds as the store's cap ledger has them (instance, amount)."""
    spent, holds = await table.cap_ledger(scope, today())
    return spent, {k: [who, str(amount)] for k, (who, amount) in holds.items()}


async def test_a_hold_counts_until_settled_and_a_second_waits_for_it(
    sqlite_tables: list[VerificationStore],
) -> None:
    capped, day = route("1.0"), today()
    quality, holds = service(sqlite_tables[0], capped, Leases("a", {"a"}))
    first = await holds.admit(capped, day, Decimal("0.6"))
    assert first is not None and capped.held == Decimal("0.6")
    assert (await stored(sqlite_tables[0]))[1] == {first: ["a", "0.6"]}
    # 0.6 held + 0.6 > 1.0, but 0.6 alone fits: the second waits, it is not refused.
    second = asyncio.create_task(holds.admit(capped, day, Decimal("0.6")))
    await asyncio.sleep(0.05)
    assert not second.done()
    capped.charge(capped.decide("a", 0.5, 1.0), Decimal("0.1"), day)
    await quality.save("route:r")
    await holds.settle(capped, first, day, Decimal("0.1"))
    held = await second  # 0.1 spent + 0.6 <= 1.0
    assert held is not None and capped.held == Decimal("0.6")
    spent, in_store = await stored(sqlite_tables[0])
    assert spent == Decimal("0.1") and in_store == {held: ["a", "0.6"]}
    assert capped.left_today(day) == Decimal("0.9") and not capped.exhausted(day)
    assert capped.figures()["held_usd"] == "0.6"


async def test_what_cannot_fit_even_alone_is_refused_and_pauses_the_day(
    sqlite_tables: list[VerificationStore],
) -> None:
    capped, day = route("1.0"), today()
    _, holds = service(sqlite_tables[0], capped, Leases("a", {"a"}))
    first = await holds.admit(capped, day, Decimal("0.5"))
    assert first is not None
    waiting = asyncio.create_task(holds.admit(capped, day, Decimal("0.9")))
    await asyncio.sleep(0.05)
    capped.charge(capped.decide("a", 0.5, 1.0), Decimal("0.3"), day)
    await holds.settle(capped, first, day, Decimal("0.3"))
    # 0.3 spent + 0.9 > 1.0: refused once the other settled, and the route is paused for the day.
    assert await waiting is None
    assert capped.exhausted(day) and capped.state.totals.skipped_for_cap == 1
    assert capped.held == 0
    spent, in_store = await stored(sqlite_tables[0])
    assert spent == Decimal("0.3") and in_store == {}  # the pause is kept apart from the spend
    # The pause is the calibration's too, shared through its state: another instance sees it.
    other = route("1.0")
    await QualityService([other], sqlite_tables[1]).load()
    assert other.exhausted(day)


async def test_a_cap_raised_after_a_pause_leaves_the_raised_cap_less_the_real_spend(
    sqlite_tables: list[VerificationStore],
) -> None:
    await raised_cap_after_a_pause(sqlite_tables[0])


async def raised_cap_after_a_pause(table: VerificationStore) -> None:
    """A refusal pauses the day in the ledger apart from the day's spend: every instance of that
    cap is refused at once, and a cap raised since leaves the raised cap less what was really spent
    (the ledger marked the spend as the whole cap: raising $1 to $2 left $1, not $1.70)."""
    capped, day = route("1.0"), today()
    quality, holds = service(table, capped, Leases("a", {"a"}))
    first = await holds.admit(capped, day, Decimal("0.5"))
    assert first is not None
    capped.charge(capped.decide("a", 0.5, 1.0), Decimal("0.3"), day)
    await quality.save("route:r")
    await holds.settle(capped, first, day, Decimal("0.3"))
    assert await holds.admit(capped, day, Decimal("0.8")) is None  # 0.3 + 0.8 > 1.0: paused
    assert await stored(table) == (Decimal("0.3"), {})
    # Another instance under the same cap, before it reads the paused state: refused by the ledger.
    other = route("1.0")
    assert await service(table, other, Leases("b", {"a", "b"}))[1].admit(other, day, Decimal("0.1")) is None
    # The cap raised to 2.0 (the config changed, the state read back): 1.7 left.
    raised = route("2.0")
    raised_quality, raised_holds = service(table, raised, Leases("c", {"a", "b", "c"}))
    await raised_quality.load()
    assert not raised.exhausted(day) and raised.left_today(day) == Decimal("1.7")
    assert await raised_holds.admit(raised, day, Decimal("1.5")) is not None


async def test_a_hold_let_go_without_a_charge_leaves_the_store() -> None:
    table = FakeStore()
    capped, day = route("1.0"), today()
    _, holds = service(table, capped, Leases("a", {"a"}))
    hold = await holds.admit(capped, day, Decimal("0.4"))
    assert hold is not None and (await stored(table))[1] != {}
    await holds.settle(capped, hold, day, Decimal(0))  # e.g. the verification failed before any call
    assert await stored(table) == (Decimal(0), {})


async def admit_concurrently(tables: list[VerificationStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two instances, each with its own connection to one store, run 8 verifications each at once
    on one route: worst case 0.3, real cost 0.1, cap 1.0. Whatever the interleaving, what is in
    flight plus what was spent never passes the cap, and the store ends with the exact spend."""
    monkeypatch.setattr(spend, "WAIT_S", 0.02)
    day, cap, worst, cost = today(), Decimal("1.0"), Decimal("0.3"), Decimal("0.1")
    alive = {"a", "b"}
    instances = [
        service(table, route(str(cap)), Leases(name, alive)) for table, name in zip(tables, "ab", strict=True)
    ]
    tally = {"in_flight": Decimal(0), "spent": Decimal(0), "most": Decimal(0), "made": 0, "refused": 0}

    async def verification(quality: QualityService, holds: Holds, i: int) -> None:
        capped = quality.routes["r"]
        hold = await holds.admit(capped, day, worst)
        if hold is None:
            tally["refused"] += 1
            return
        tally["in_flight"] += worst
        tally["most"] = max(tally["most"], tally["in_flight"] + tally["spent"])
        await asyncio.sleep(0.01 * (i % 3))  # the shadow call
        capped.charge(capped.decide(f"q{i}", 0.5, 1.0), cost, day)
        tally["in_flight"] -= worst
        tally["spent"] += cost
        tally["made"] += 1
        await quality.save("route:r")
        await holds.settle(capped, hold, day, cost)

    await asyncio.gather(*(verification(q, h, i) for i in range(8) for q, h in instances))
    assert tally["most"] <= cap
    # Everything admitted was made, and admission went on until the cap could not take a worst case.
    assert tally["made"] + tally["refused"] == 16 and tally["refused"] > 0
    assert cap - tally["spent"] < worst
    for table in tables:
        spent, holds = await stored(table)
        assert holds == {}
        # The refusal pauses the day apart from its spend: the ledger's spend is the real one.
        assert spent == tally["spent"]
    for quality, _ in instances:
        await quality.refresh()
        capped = quality.routes["r"]
        assert capped.state.budget.verified == tally["made"]
        assert Decimal(capped.state.totals.cost_nano) / Decimal(10**9) == tally["spent"]


async def test_two_instances_sharing_a_sqlite_file_never_overrun_the_cap_together(
    sqlite_tables: list[VerificationStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    await admit_concurrently(sqlite_tables, monkeypatch)


async def test_a_lapsed_instances_hold_is_dropped_a_live_ones_is_not(
    sqlite_tables: list[VerificationStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    await drop_lapsed(sqlite_tables, monkeypatch)


async def drop_lapsed(sqlite_tables: list[VerificationStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """Instance a holds 0.8 of 1.0 and b asks 0.5: b waits while a's lease is current or its hold
    younger than a lease, and is admitted once a's hold is a dead process's (dropped)."""
    monkeypatch.setattr(spend, "WAIT_S", 0.02)
    day = today()
    a, b = route("1.0"), route("1.0")
    _, holds_a = service(sqlite_tables[0], a, Leases("a", {"a", "b"}))
    leases_b = Leases("b", {"a", "b"}, lease_s=3600.0)
    _, holds_b = service(sqlite_tables[1], b, leases_b)
    dead = await holds_a.admit(a, day, Decimal("0.8"))
    assert dead is not None
    # a is alive: its 0.8 counts, b's 0.5 waits.
    waiting = asyncio.create_task(holds_b.admit(b, day, Decimal("0.5")))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    # a's lease is not in the list, but its hold is younger than a lease: it may be an instance
    # started since the list was read. Still counted.
    leases_b.live = {"b"}
    await asyncio.sleep(0.1)
    assert not waiting.done()
    # a was killed mid-verification a lease ago: its hold no longer counts and is dropped.
    leases_b.lease_s = 0.0
    admitted = await waiting
    assert admitted is not None
    _, in_store = await stored(sqlite_tables[0])
    assert in_store == {admitted: ["b", "0.5"]}


async def test_the_caches_holds_are_in_the_ledger_not_in_its_state() -> None:
    settings = SemanticAcceptanceSettings(max_wrong_hit_rate=0.01, daily_usd_cap=Decimal("1"))
    cache, other = CacheCalibration(settings, "exact"), CacheCalibration(settings, "exact")
    table = FakeStore()
    quality = QualityService([], table, cache, leases=Leases("a", {"a"}))
    day = today()
    hold = await Holds(quality).admit(cache, day, Decimal("0.7"))
    assert hold is not None and cache.held == Decimal("0.7")
    assert await stored(table, "cache") == (Decimal(0), {hold: ["a", "0.7"]})
    # Another instance of the cache counts it: 0.7 held + 0.4 > 1.0, it waits.
    waiting = asyncio.create_task(
        Holds(QualityService([], table, other, leases=Leases("b", {"a", "b"}))).admit(
            other, day, Decimal("0.4")
        )
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    cache.charge(Decimal("0.25"), day)
    await quality.save("cache")
    await Holds(quality).settle(cache, hold, day, Decimal("0.25"))
    assert await waiting is not None
    assert (await stored(table, "cache"))[0] == Decimal("0.25")
    await QualityService([], table, other).load()
    assert other.budget.spent == Decimal("0.25") and "holds" not in table.states["cache"][1]


async def test_an_admission_does_not_rewrite_the_calibration_state(
    sqlite_tables: list[VerificationStore],
) -> None:
    await admissions_leave_the_state(sqlite_tables)


async def admissions_leave_the_state(sqlite_tables: list[VerificationStore]) -> None:
    """The calibration row (megabytes with domain learning) is written by the calibration's own
    saves only: neither an admission that waits, nor one admitted, nor a settlement touches it."""
    capped, day = route("1.0"), today()
    quality, holds = service(sqlite_tables[0], capped, Leases("a", {"a"}))
    capped.charge(capped.decide("a", 0.5, 1.0), Decimal("0.1"), day)
    await quality.save("route:r")
    before = await sqlite_tables[0].load_state("route:r")
    assert before is not None
    first = await holds.admit(capped, day, Decimal("0.5"))
    assert first is not None
    waiting = asyncio.create_task(holds.admit(capped, day, Decimal("0.5")))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await holds.settle(capped, first, day, Decimal(0))
    second = await waiting
    assert second is not None
    await holds.settle(capped, second, day, Decimal("0.2"))
    assert await sqlite_tables[0].load_state("route:r") == before
    assert await stored(sqlite_tables[0]) == (Decimal("0.2"), {})


def test_a_judges_worst_case_is_priced_as_a_cascades() -> None:
    price = Price(Decimal(100), Decimal(100))
    usd, tokens = judge_call(price, 100, 200)
    assert tokens == 100 + JUDGE_PROMPT_TOKENS + 200
    assert usd == Decimal(100 + JUDGE_PROMPT_TOKENS + 200) * 100 / Decimal(1_000_000)


async def test_the_gateways_leases_are_the_accounts_instance_leases(tmp_path: Path) -> None:
    from faregate.accounts.embedded import EmbeddedAccounts
    from faregate.quality.leases import AccountLeases

    store = await SQLiteStore.open(tmp_path)
    one, two = EmbeddedAccounts(store, lease_s=30.0), EmbeddedAccounts(store, lease_s=30.0)
    try:
        await one.start()
        await two.start()
        leases = AccountLeases(one)
        assert leases.instance_id == one.instance_id and leases.lease_s == 30.0
        assert await leases.alive() >= {one.instance_id, two.instance_id}
        await two.close()  # a clean stop ends its lease at once
        alive = await leases.alive()
        assert one.instance_id in alive and two.instance_id not in alive
    finally:
        await one.close()
        await two.close()
        await store.close()


class RefusingSettlements(FakeStore):
    """The verification ledger's table, whose settlements fail as in a store outage while `down`."""

    down = False

    async def settle_hold(self, scope: str, hold_id: str, day: str, cost: Decimal) -> Decimal:
        if self.down:
            raise StoreUnavailable("database is locked")
        return await super().settle_hold(scope, hold_id, day, cost)


async def test_a_settlement_the_store_refused_is_made_before_the_next_admission_and_counts_once() -> None:
    table = RefusingSettlements()
    table.down = True
    capped, day = route("1.0"), today()
    _, holds = service(table, capped, Leases("a", {"a"}))
    first = await holds.admit(capped, day, Decimal("0.6"))
    assert first is not None
    await holds.settle(capped, first, day, Decimal("0.2"))  # logged, kept for later
    assert await stored(table) == (Decimal(0), {first: ["a", "0.6"]})
    table.down = False
    # 0.6 + 0.6 would not fit beside the stuck hold: settled first, it fits beside the 0.2 spent.
    second = await holds.admit(capped, day, Decimal("0.6"))
    assert second is not None
    assert await stored(table) == (Decimal("0.2"), {second: ["a", "0.6"]})
    # A settlement made twice (its first commit's answer lost) counts once.
    await holds.settle(capped, second, day, Decimal("0.1"))
    await holds.settle(capped, second, day, Decimal("0.1"))
    assert await stored(table) == (Decimal("0.3"), {})


async def test_an_admission_waiting_on_a_settlement_the_store_refused_makes_it_again() -> None:
    """An admission already waiting when a settlement fails must not wait on that hold forever:
    with every verification slot so waiting, no new admission would ever come to make it."""
    table = RefusingSettlements()
    capped, day = route("1.0"), today()
    _, holds = service(table, capped, Leases("a", {"a"}))
    first = await holds.admit(capped, day, Decimal("0.6"))
    assert first is not None
    waiting = asyncio.create_task(holds.admit(capped, day, Decimal("0.6")))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    table.down = True
    await holds.settle(capped, first, day, Decimal("0.2"))  # logged, kept for later
    table.down = False  # the store is back: the waiting admission settles it and fits
    second = await asyncio.wait_for(waiting, 3 * spend.WAIT_S)
    assert second is not None
    assert await stored(table) == (Decimal("0.2"), {second: ["a", "0.6"]})


async def test_a_settlement_the_store_refused_is_made_again_at_a_clean_stop() -> None:
    """No admission comes after the last settlement at shutdown: the stop makes it, or the hold's
    real cost never reaches the ledger's spend (a lapsed hold is dropped uncharged)."""
    from typing import Any, cast

    from faregate.quality.verifier import Verifier

    table = RefusingSettlements()
    capped, day = route("1.0"), today()
    quality = QualityService([capped], table, leases=Leases("a", {"a"}))
    verifier = Verifier(quality, cast(Any, None), cast(Any, None))
    hold = await verifier.holds.admit(capped, day, Decimal("0.6"))
    assert hold is not None
    table.down = True
    await verifier.holds.settle(capped, hold, day, Decimal("0.2"))  # logged, kept for later
    table.down = False
    await verifier.close()
    assert await stored(table) == (Decimal("0.2"), {})


async def test_a_settlement_the_store_refused_is_made_again_by_the_refresh_of_an_idle_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Instance a's settlement is refused (a store blip) and a makes no more admissions (no
    labelled decision comes its way: out of the load balancer's rotation, a quiet route). Its hold
    must not block b's admissions for as long as a lives: a's periodic refresh makes it again."""
    monkeypatch.setattr(spend, "WAIT_S", 0.02)
    table = RefusingSettlements()
    day = today()
    a, b = route("1.0"), route("1.0")
    quality_a = QualityService([a], table, leases=Leases("a", {"a", "b"}))
    holds_a = Holds(quality_a)
    _, holds_b = service(table, b, Leases("b", {"a", "b"}))
    first = await holds_a.admit(a, day, Decimal("0.6"))
    assert first is not None
    table.down = True
    await holds_a.settle(a, first, day, Decimal("0.2"))  # logged, kept for later
    table.down = False
    # b's 0.6 fits alone, not beside a's stuck 0.6: it waits, and only a can settle a's hold.
    waiting = asyncio.create_task(holds_b.admit(b, day, Decimal("0.6")))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await quality_a.refresh()  # every REFRESH_S while a runs
    second = await asyncio.wait_for(waiting, 3.0)
    assert second is not None
    assert await stored(table) == (Decimal("0.2"), {second: ["b", "0.6"]})


async def test_a_hold_admitted_whose_answer_was_lost_does_not_count_for_good() -> None:
    """The store took the hold but its answer was lost (a connection dropped after the commit): the
    verification fails without a hold id to settle. The hold belongs to this live instance, whose
    lease never lapses: it held back the cap, every later admission it did not fit beside
    waiting on it, for as long as the instance ran."""

    class AdmittedAnswerLost(FakeStore):
        lose = True

        async def admit_hold(self, ask: HoldAsk) -> tuple[Verdict, Decimal]:
            answer = await super().admit_hold(ask)
            if self.lose:
                self.lose = False
                raise StoreUnavailable("connection reset")
            return answer

    table = AdmittedAnswerLost()
    capped, day = route("1.0"), today()
    _, holds = service(table, capped, Leases("a", {"a"}))
    with pytest.raises(StoreUnavailable):
        await holds.admit(capped, day, Decimal("0.6"))
    second = await asyncio.wait_for(holds.admit(capped, day, Decimal("0.6")), 3.0)
    assert second is not None
    assert await stored(table) == (Decimal(0), {second: ["a", "0.6"]})


class StateWritesFail(FakeStore):
    """The next state writes fail, as `fail` says: "before", the store did not take them (down);
    "after", it took them and the answer was lost (a connection dropped after the commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: list[str] = []

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        if self.fail and self.fail[0] == "before":
            self.fail.pop(0)
            raise StoreUnavailable("database is locked")
        written = await super().save_state(scope, expected, state, now)
        if self.fail:
            self.fail.pop(0)
            raise StoreUnavailable("connection reset")
        return written


@pytest.mark.parametrize("lost", ["before", "after"])
async def test_a_pause_whose_write_failed_is_kept_and_counted_once(lost: str) -> None:
    """The daily cap refused a verification; the pause's write failed. The pause lived only in this
    instance's memory: the next state adopted from another instance (or a restart) dropped it, the
    next labelled decision was refused again and paused the day again, one skip counted too many.
    It is now kept with the unsaved changes: written by the next refresh, and counted once also
    when the store had taken the write after all."""
    table = StateWritesFail()
    day = today()
    a, b = route("0.01"), route("0.01")
    quality_a = QualityService([a], table, leases=Leases("a", {"a", "b"}))
    quality_b = QualityService([b], table, leases=Leases("b", {"a", "b"}))
    await quality_a.save("route:r")
    await quality_b.load()
    table.fail = [lost]
    with pytest.raises(StoreUnavailable):
        await Holds(quality_a).admit(a, day, Decimal("1"))  # refused: the pause's write fails
    b.decide("b-1", 0.5, 10.0)
    await quality_b.save("route:r")  # another instance writes: a adopts it on its refresh
    await quality_a.refresh()
    assert a.exhausted(day) and a.decide("a-1", 0.5, 10.0).paused
    await quality_b.refresh()
    assert b.exhausted(day)
    for seen in (a, b):
        assert seen.state.totals.skipped_for_cap == 1 and seen.state.budget.skipped_for_cap == 1


async def test_a_pause_the_row_kept_changing_under_is_kept_for_the_next_save() -> None:
    """Other instances kept writing while the pause was written (StateContention): the pause is
    kept with the unsaved changes and written by the next refresh, once."""

    class Busy(FakeStore):
        busy = True

        async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
            if self.busy:  # another instance wrote first, every time
                version, text = self.states[scope]
                self.states[scope] = (version + 1, text)
                return False
            return await super().save_state(scope, expected, state, now)

    table, capped, day = Busy(), route("0.01"), today()
    table.busy = False
    quality = QualityService([capped], table, leases=Leases("a", {"a"}))
    await quality.save("route:r")
    table.busy = True
    with pytest.raises(StateContention):
        await Holds(quality).admit(capped, day, Decimal("1"))
    table.busy = False
    await quality.refresh()
    stored = LiveState.from_json(orjson.loads(table.states["route:r"][1])["state"])
    assert stored.totals.skipped_for_cap == 1 and stored.paused is not None and capped.exhausted(day)
