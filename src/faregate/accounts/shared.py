"""The shared account backend: reservations and rate limits in Redis, the ledger in PostgreSQL.

Any number of gateway instances point at the same Redis and PostgreSQL and act as one:
a reservation is one Redis script whichever instance runs it, and key changes
(revocations, new limits) are published on a Redis channel so every instance drops its
cached copy at once. A revoked key is also marked in its Redis account, so even an
instance that has not heard the news yet refuses it at the reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from faregate.accounts.backend import (
    Admitted,
    AuditReport,
    Balance,
    HoldRef,
    Refused,
    ReserveAsk,
    balance_audit,
)
from faregate.accounts.hit_give_backs import HitGiveBacks
from faregate.accounts.instance_lease import InstanceLease
from faregate.accounts.money import usd_text
from faregate.accounts.policy import KEEP_HOURS, Limits
from faregate.accounts.ratelimit import Bucket, RateRefusal, RateState, meter
from faregate.lifecycle import Periodic
from faregate.store.holds import BudgetCheck, HoldRow, InstanceRow, ReserveOutcome
from faregate.store.postgres.accounts import PostgresAccountTable
from faregate.store.postgres.store import PostgresStore
from faregate.store.protocols import LedgerRow, OutcomeUnknown, StoreUnavailable
from faregate.store.redis.connect import retry_once_on_a_fresh_connection
from faregate.store.redis.ledger import RedisLedger
from faregate.store.redis.shipper import LedgerShipper

log = logging.getLogger("faregate.accounts")

KEY_EVENTS = "fg:keys"
# A key-events subscription that hears nothing for this long asks Redis for a PING, and one still
# silent as long again is lost and made anew: a partition can leave its connection open and
# silent, and key changes then went unheard (caches kept a changed key's limits) until a restart.
QUIET_S = 30.0
# How long `check_redis` waits for Redis to connect and answer.
CHECK_TIMEOUT_S = 10.0
# How long a command to Redis waits for its answer, and a connection to be made: a Redis that stops
# answering without closing its sockets (a frozen host, a partition, a long command) is an outage
# (503, a kept settlement) after this, not a request held forever. Redis answers the scripts in well
# under a millisecond; set here, not left to the driver's default (none before redis-py 8).
COMMAND_TIMEOUT_S = 5.0
# How long close() waits for the background tasks, the last ledger shipment and the connections.
CLOSE_TIMEOUT_S = 10.0
# How long a settled hold is remembered by default: accounts.settle_retry_s's default plus a
# minute (a settlement is retried for that long: accounts/settle_retry.py).
SETTLED_MEMORY_S = 660.0


def rate_state(limits: Limits, requests_level: float | None, tokens_level: float | None) -> RateState:
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return RateState(
        meter(Bucket(requests_level, 0), rpm) if rpm is not None and requests_level is not None else None,
        meter(Bucket(tokens_level, 0), tpm) if tpm is not None and tokens_level is not None else None,
    )


class KeyEvents:
    """Listens on the key-events channel and tells the listeners which key changed ("" = all)."""

    def __init__(
        self, redis: Redis, listeners: list[Callable[[str], None]], quiet_s: float = QUIET_S
    ) -> None:
        self.redis = redis
        self.listeners = listeners
        self.quiet_s = quiet_s
        # One subscription per round; a lost one is made again half a second later.
        self._loop = Periodic("key-events", 0.5, self._listen, run_first=True)
        self.ready = asyncio.Event()
        # The subscription is lost and not made again yet: said once, not at every attempt.
        self._lost = False

    def _tell(self, key_id: str) -> None:
        for listener in self.listeners:
            listener(key_id)

    async def start(self) -> None:
        if not self._loop.running:
            self._loop.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), 5)

    async def stop(self) -> None:
        await self._loop.stop()

    async def _listen(self) -> None:
        """One subscription, until it is lost."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(KEY_EVENTS)
            if self._lost:
                self._lost = False
                log.warning("key events: subscribed again; keys are read afresh from the store")
            self.ready.set()
            # Events may have been missed while (re)connecting: forget everything once.
            self._tell("")
            asked = False
            while True:
                message = await pubsub.get_message(timeout=self.quiet_s)
                if message is None:
                    if asked:
                        raise RedisConnectionError(f"no answer to a PING within {self.quiet_s:g} s")
                    await pubsub.ping()
                    asked = True
                    continue
                asked = False
                if message.get("type") == "message":
                    self._tell(str(message.get("data") or ""))
        except (RedisError, OSError) as exc:
            if not self._lost:
                self._lost = True
                log.warning(
                    "key events: lost the Redis subscription (%s: %s); reconnecting (said again when "
                    "it is back)",
                    type(exc).__name__,
                    exc,
                )
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def publish(self, key_id: str) -> None:
        await self.redis.publish(KEY_EVENTS, key_id)


async def _within(deadline: float, what: str, step: Awaitable[object]) -> None:
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await step
    except TimeoutError:
        log.warning("closing the shared accounts: gave up waiting for %s", what)


async def check_redis(url: str) -> None:
    """StoreUnavailable, said as `SharedAccounts.connect` says it, when Redis at `url` does not
    answer: the supervisor of `serve --workers N` asks before it forks (one line, not one per
    worker)."""
    # Bounded: a Redis host that drops packets would hold the start for the system's connect
    # timeout (minutes) before saying anything.
    redis = Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_S, socket_timeout=CHECK_TIMEOUT_S)
    try:
        await redis.ping()
    except RedisError as exc:
        raise StoreUnavailable(f"cannot use Redis at the configured store.redis_url: {exc}") from exc
    finally:
        await redis.aclose()


class SharedAccounts:
    def __init__(
        self,
        redis: Redis,
        pg: PostgresStore,
        *,
        listeners: list[Callable[[str], None]] | None = None,
        flush_interval_s: float = 0.1,
        sweep_interval_s: float = 5.0,
        lease_s: float = 15.0,
        remember_settled_s: float = SETTLED_MEMORY_S,
    ) -> None:
        self.redis = redis
        self.remember_settled_s = remember_settled_s
        self.pg = pg
        self.ledger = RedisLedger(redis, pg.accounts, keep_hours=KEEP_HOURS)
        self.shipper = LedgerShipper(redis, pg.accounts, interval_s=flush_interval_s)
        self.events = KeyEvents(redis, listeners or [])
        self._sweeper = Periodic("hold-sweeper", sweep_interval_s, self.sweep)
        self._started = False
        self.lease = InstanceLease(self.ledger.renew_lease, self.ledger.end_lease, lease_s)
        self.give_backs = HitGiveBacks(self.ledger.give_back_request)

    @property
    def instance_id(self) -> str:
        return self.lease.instance_id

    async def instances(self) -> list[InstanceRow]:
        return await self.ledger.instances()

    async def release_instance(self, instance_id: str, note: str) -> int:
        return await self.ledger.release_instance(instance_id, note)

    @property
    def table(self) -> PostgresAccountTable:
        return self.pg.accounts

    @classmethod
    async def connect(
        cls,
        url: str,
        pg: PostgresStore,
        *,
        listeners: list[Callable[[str], None]] | None = None,
        flush_interval_s: float = 0.1,
        sweep_interval_s: float = 5.0,
        pool_size: int = 64,
        lease_s: float = 15.0,
        remember_settled_s: float = SETTLED_MEMORY_S,
    ) -> SharedAccounts:
        # A blocking pool: under a burst, a request waits for a connection instead of failing.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=pool_size,
            timeout=10,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            decode_responses=True,
            health_check_interval=30,
            retry=retry_once_on_a_fresh_connection(),
        )
        redis = Redis(connection_pool=pool)
        try:
            await redis.ping()
            await redis.xgroup_create("fg:outbox", "ledger", id="0", mkstream=True)
        except RedisError as exc:
            if "BUSYGROUP" not in str(exc):
                await redis.aclose(close_connection_pool=True)
                raise StoreUnavailable(f"cannot use Redis at the configured store.redis_url: {exc}") from exc
        return cls(
            redis,
            pg,
            listeners=listeners,
            flush_interval_s=flush_interval_s,
            sweep_interval_s=sweep_interval_s,
            lease_s=lease_s,
            remember_settled_s=remember_settled_s,
        )

    async def start(self) -> None:
        self._started = True
        await self.lease.start()
        await self.shipper.start()
        await self.events.start()
        self._sweeper.start()

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the background tasks, ship what is waiting, close the connections: all within
        `timeout_s`. A Redis that stopped answering (frozen, or gone without closing its sockets)
        would otherwise hold shutdown on a read forever; what is not shipped stays in the Redis
        outbox, and the next shipper to start takes it over."""
        deadline = time.monotonic() + timeout_s
        await _within(deadline, "the hold sweeper", self._sweeper.stop())
        await _within(deadline, "the cache hits' give-backs", self.give_backs.close())
        if self._started:
            await _within(deadline, "the instance lease", self.lease.close())
        await _within(deadline, "the key-events listener", self.events.stop())
        await _within(deadline, "the ledger shipper", self.shipper.close())
        # The connections get a moment even when the steps above used up the deadline.
        await _within(
            max(deadline, time.monotonic() + 1.0), "Redis", self.redis.aclose(close_connection_pool=True)
        )

    async def reserve(self, ask: ReserveAsk) -> Admitted | Refused:
        limits = ask.limits
        try:
            outcome = await self._reserve(ask)
        except RedisTimeoutError as exc:
            # Sent, not answered: a frozen Redis runs it once it answers again.
            raise OutcomeUnknown(f"Redis: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return self._verdict(ask, outcome, rate_state(limits, outcome.requests_level, outcome.tokens_level))

    async def _reserve(self, ask: ReserveAsk) -> ReserveOutcome:
        limits = ask.limits
        return await self.ledger.reserve(
            ask.key_id,
            ask.hold_id,
            ask.request_id,
            ask.amount_nano,
            ask.tokens,
            ask.hour,
            [BudgetCheck(w.since_hour, w.budget.limit_nano) for w in ask.windows],
            ask.ttl_s,
            limits.requests_per_minute,
            limits.tokens_per_minute,
            ask.instance_id,
        )

    def _verdict(self, ask: ReserveAsk, outcome: ReserveOutcome, state: RateState) -> Admitted | Refused:
        limits = ask.limits
        if outcome.status == "ok":
            return Admitted(outcome.balance_nano, state)
        if outcome.status in ("requests", "tokens"):
            limit = (
                limits.requests_per_minute if outcome.status == "requests" else limits.tokens_per_minute
            ) or 0
            level = (outcome.requests_level if outcome.status == "requests" else outcome.tokens_level) or 0.0
            needed = 1 if outcome.status == "requests" else ask.tokens
            wait = Bucket(level, 0).wait_for(needed, limit)
            return Refused("rate", rate=RateRefusal(outcome.status, limit, needed, wait, state))
        window = ask.windows[outcome.window] if outcome.window is not None else None
        return Refused(
            outcome.status, outcome.balance_nano, outcome.held_nano, window, outcome.window_spent_nano
        )

    async def take_request(
        self, key_id: str, requests_per_minute: int | None, tokens_per_minute: int | None = None
    ) -> RateState | RateRefusal | Refused:
        # Named only when it takes something, so that it can be given back.
        ticket = "hit_" + secrets.token_hex(10) if requests_per_minute else ""
        try:
            status, level, tokens_level = await self.ledger.take_request(
                key_id, requests_per_minute or 0, tokens_per_minute or 0, ticket
            )
        except RedisTimeoutError as exc:
            # Sent, not answered: a frozen Redis runs it once it answers again, for a hit never served.
            if requests_per_minute:
                self.give_backs.later(key_id, ticket, requests_per_minute)
            raise StoreUnavailable(f"Redis: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        if status == "closed":  # given back before it ran: only a count given up comes here
            raise StoreUnavailable(f"the cache hit's count {ticket} was given up before it ran")
        if status in ("revoked", "no_account"):
            return Refused(status)
        state = rate_state(Limits(requests_per_minute, tokens_per_minute), level, tokens_level)
        if status == "ok" or requests_per_minute is None or level is None:
            return state
        wait = Bucket(level, 0).wait_for(1, requests_per_minute)
        return RateRefusal("requests", requests_per_minute, 1, wait, state)

    async def settle(self, key_id: str, ref: HoldRef, cost_nano: int, tokens: int) -> None:
        await self.ledger.settle(
            key_id,
            ref.hold_id,
            ref.request_id,
            ref.hour,
            cost_nano,
            tokens,
            ref.limits.tokens_per_minute or 0,
            self.remember_settled_s,
        )

    async def release(self, key_id: str, ref: HoldRef) -> None:
        await self.ledger.release(
            key_id, ref.hold_id, ref.limits.tokens_per_minute or 0, self.remember_settled_s
        )

    async def sweep(self) -> int:
        return await self.ledger.sweep()

    async def credit(self, row: LedgerRow) -> int:
        return await self.ledger.credit(row)

    async def balance(self, key_id: str) -> Balance | None:
        read = await self.ledger.read(key_id)
        return None if read is None else Balance(read[0], read[1])

    async def holds(self, key_id: str) -> list[HoldRow]:
        read = await self.ledger.read(key_id)
        return [] if read is None else read[2]

    async def spent(self, key_id: str, since_hours: list[int]) -> list[int]:
        return await self.ledger.spent(key_id, since_hours)

    async def key_changed(self, key_id: str, revoked: bool = False) -> None:
        if revoked:
            await self.ledger.revoke(key_id)
        await self.events.publish(key_id)

    def on_key_changed(self, listener: Callable[[str], None]) -> None:
        self.events.listeners.append(listener)

    async def flush(self) -> None:
        if not await self.shipper.flush():
            raise StoreUnavailable("ledger entries are still waiting to reach PostgreSQL")

    async def audit(self) -> AuditReport:
        report = balance_audit(
            await self.pg.accounts.audit_rows(), await self.pg.accounts.ledger_keys_without_account()
        )
        report.problems.extend(await self._compare_live())
        return report

    async def _compare_live(self) -> list[str]:
        """Redis's live balances against PostgreSQL's. They are comparable only when nothing moved
        in between: PostgreSQL read twice around Redis with an empty outbox, and unchanged."""
        for _ in range(5):
            before = await self.pg.accounts.balances()
            live = await self.ledger.loaded_balances()
            if await self.ledger.pending() == 0 and await self.pg.accounts.balances() == before:
                return [
                    f"{key_id}: Redis balance ${usd_text(balance)} but PostgreSQL has ${usd_text(stored)}"
                    for key_id, balance in sorted(live.items())
                    if (stored := before.get(key_id, balance)) != balance
                ]
            await self.shipper.flush(timeout_s=2.0)
        return ["balances kept moving: Redis was not compared with PostgreSQL (audit again when idle)"]
