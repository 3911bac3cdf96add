"""Reservations and rate limits in Redis, shared by every gateway instance.

Each operation is one Lua script (store/redis/scripts.py), atomic inside Redis: the check and
the write of a reservation cannot be split by another instance, so N instances spend a
key's balance, budgets and rate limits as one. Every balance change a script makes is also
appended, in the same script, to the `fg:outbox` stream, from which the ledger shipper
writes it to PostgreSQL; Redis holds the live balance, PostgreSQL the durable ledger.

An account is loaded into Redis from PostgreSQL on first use (a script answers "noload").
The data set carries an epoch: if Redis loses its data, the next load starts a new epoch
and PostgreSQL releases the holds of the old one (store/postgres/accounts.py, load_account).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from faregate.accounts.money import MAX_NANO
from faregate.store.holds import BudgetCheck, HoldRow, InstanceRow, ReserveOutcome
from faregate.store.postgres.accounts import PostgresAccountTable
from faregate.store.protocols import BalanceCapExceeded, LedgerRow, StoreUnavailable
from faregate.store.redis.scripts import (
    CREDIT,
    ENSURE_EPOCH,
    GIVE_BACK_REQUEST,
    LOAD,
    PRELUDE,
    READ,
    RELEASE,
    RELEASE_INSTANCE,
    RESERVE,
    REVOKE,
    SETTLE,
    SPENT,
    SWEEP,
    TAKE_REQUEST,
)

OUTBOX = "fg:outbox"
EXPIRY = "fg:hexp"
EPOCH = "fg:epoch"
INSTANCES = "fg:instances"
LEASE = "fg:lease:"
OWNED = "fg:ih:"
_LOAD_TRIES = 3
# Holds a releasing script closes at most (each a few commands): Redis serves every other client
# between two such scripts, however many holds a dead instance left.
SWEEP_BATCH = 500
# How long a cache hit's count is remembered (fg:tk:T): long enough for the gateway to give it back
# once Redis answers again (tried every second); one marker per request a key's rate limit lets
# through, so a key has about as many at a time as its requests per minute.
TICKET_MEMORY_S = 60.0


def account_key(key_id: str) -> str:
    return "fg:a:{" + key_id + "}"


def _level(text: str) -> float | None:
    """A bucket level from the reservation script; "" when the key has no such limit (a level
    itself may be negative: a request used more tokens than it reserved)."""
    return None if text == "" else float(text)


class RedisLedger:
    def __init__(self, redis: Redis, pg: PostgresAccountTable, *, keep_hours: int) -> None:
        self.redis = redis
        self.pg = pg
        self._keep_hours = keep_hours
        # Every script starts with the shared helpers; register_script reloads one Redis forgot.
        self._scripts = {
            name: redis.register_script(PRELUDE + body)
            for name, body in (
                ("reserve", RESERVE),
                ("settle", SETTLE),
                ("release", RELEASE),
                ("sweep", SWEEP),
                ("credit", CREDIT),
                ("epoch", ENSURE_EPOCH),
                ("load", LOAD),
                ("revoke", REVOKE),
                ("read", READ),
                ("spent", SPENT),
                ("take_request", TAKE_REQUEST),
                ("give_back_request", GIVE_BACK_REQUEST),
                ("release_instance", RELEASE_INSTANCE),
            )
        }

    async def _run(self, name: str, args: Sequence[Any]) -> Any:
        return await self._scripts[name](args=list(args))

    async def _call(self, name: str, key_id: str, args: Sequence[Any]) -> list[Any]:
        """Run a script for one key, loading the key's account first if Redis lacks it."""
        for _ in range(_LOAD_TRIES):
            result: list[Any] = await self._run(name, args)
            if result[0] != "noload":
                return result
            if not await self.load(key_id):
                return ["no_account"]
        raise StoreUnavailable(f"could not load account {key_id} into Redis")

    async def epoch(self) -> str:
        return str(await self._run("epoch", ["ep_" + secrets.token_hex(8)]))

    async def load(self, key_id: str) -> bool:
        """Bring an account from PostgreSQL into Redis (no-op if an instance already did).
        False if the key has no account."""
        for _ in range(_LOAD_TRIES):
            epoch = await self.epoch()
            since = int(time.time() // 3600) - self._keep_hours
            snapshot = await self.pg.load_account(key_id, epoch, since)
            if snapshot is None:
                return False
            args: list[Any] = [key_id, epoch, snapshot.balance_nano, int(snapshot.revoked)]
            for hour, spent in snapshot.spend:
                args += [hour, spent]
            if await self._run("load", args) in ("loaded", "exists"):
                return True
        raise StoreUnavailable("the Redis epoch kept changing while an account was loaded")

    async def reserve(
        self,
        key_id: str,
        hold_id: str,
        request_id: str | None,
        amount_nano: int,
        tokens: int,
        hour: int,
        budgets: Sequence[BudgetCheck],
        ttl_s: float,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        instance_id: str | None = None,
    ) -> ReserveOutcome:
        args: list[Any] = [
            key_id,
            hold_id,
            request_id or "",
            amount_nano,
            tokens,
            hour,
            int(ttl_s * 1000),
            requests_per_minute or 0,
            tokens_per_minute or 0,
            hour - self._keep_hours,
            len(budgets),
        ]
        for budget in budgets:
            args += [budget.since_hour, budget.limit_nano]
        args.append(instance_id or "")
        result = await self._call("reserve", key_id, args)
        status = result[0]
        if status == "closed":  # released before it ran: only a reservation given up comes here
            raise StoreUnavailable(f"the reservation {hold_id} was given up before it ran")
        if status == "no_account":
            return ReserveOutcome("no_account")
        if status == "revoked":
            return ReserveOutcome("revoked", int(result[1]), int(result[2]))
        balance, held = int(result[1]), int(result[2])
        requests_level, tokens_level = _level(result[3]), _level(result[4])
        if status == "budget":
            return ReserveOutcome(
                "budget", balance, held, int(result[5]) - 1, int(result[6]), requests_level, tokens_level
            )
        return ReserveOutcome(status, balance, held, None, 0, requests_level, tokens_level)

    async def take_request(
        self, key_id: str, requests_per_minute: int, tokens_per_minute: int = 0, ticket: str = ""
    ) -> tuple[str, float | None, float | None]:
        """A cache hit: "revoked" or "no_account" (the key is refused as a reservation refuses it),
        else one request from the key's requests-per-minute bucket (0: no such limit): "ok" or
        "requests", with the level after, and the token bucket's level now, read only (each None
        without its limit). `ticket` names the count, to give it back (`give_back_request`);
        "closed" when it was given back before it ran."""
        args = [key_id, requests_per_minute, tokens_per_minute, ticket, int(TICKET_MEMORY_S * 1000)]
        result = await self._call("take_request", key_id, args)
        levels = [_level(str(v)) for v in result[1:3]]
        levels += [None] * (2 - len(levels))
        return str(result[0]), levels[0], levels[1]

    async def give_back_request(self, key_id: str, ticket: str, requests_per_minute: int) -> bool:
        """Give back the request the count `ticket` took, if it ran; if it runs only later, it
        takes nothing. True when a request was given back."""
        args = [key_id, ticket, requests_per_minute, int(TICKET_MEMORY_S * 1000)]
        return bool(await self._run("give_back_request", args))

    async def settle(
        self,
        key_id: str,
        hold_id: str,
        request_id: str | None,
        hour: int,
        cost_nano: int,
        used: int,
        tpm: int,
        remember_s: float = 60.0,
    ) -> bool:
        """`remember_s`: how long the hold is remembered as settled, so that a retry of this call
        within it (one whose first run landed unseen) charges nothing more. A hold gone (expired,
        or lost with an earlier Redis data set) is charged on its own, as a late settlement, unless
        PostgreSQL's ledger has its settlement already: a retry whose first run landed before Redis
        lost its data (and its memory of the settled hold) charges nothing more either."""
        args = [key_id, hold_id, request_id or "", hour, cost_nano, used, tpm, int(remember_s * 1000)]
        result = await self._call("settle", key_id, [*args, 0])
        if result[0] == "gone":
            if await self.pg.hold_settled(hold_id):
                return False
            result = await self._call("settle", key_id, [*args, 1])
        return bool(result[0] == "ok")

    async def release(self, key_id: str, hold_id: str, tpm: int, remember_s: float = 60.0) -> bool:
        """`remember_s`: how long the hold is remembered as closed, so that its reservation, if it
        runs only now (Redis was frozen with it unanswered), is not made."""
        result = await self._run("release", [key_id, hold_id, tpm, int(remember_s * 1000)])
        return bool(result[0] == "ok")

    async def sweep(self, limit: int = SWEEP_BATCH) -> int:
        """Release expired holds and dead instances' holds, in scripts of at most `limit` of each
        (one script blocks Redis while it runs), until none is left."""
        return await self._in_batches("sweep", [limit], limit)

    # -- instance leases ------------------------------------------------------------------------

    async def renew_lease(
        self, instance_id: str, lease_s: float, started_at: float, host: str, pid: int
    ) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(LEASE + instance_id, f"{started_at:.3f} {host} {pid}", px=int(lease_s * 1000))
            pipe.sadd(INSTANCES, instance_id)
            await pipe.execute()

    async def end_lease(self, instance_id: str) -> None:
        await self.redis.delete(LEASE + instance_id)

    async def instances(self) -> list[InstanceRow]:
        names = sorted(str(n) for n in await self.redis.smembers(INSTANCES))
        now = time.time()
        rows: list[InstanceRow] = []
        for name in names:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(LEASE + name)
                pipe.pttl(LEASE + name)
                pipe.scard(OWNED + name)
                value, ttl_ms, holds = await pipe.execute()
            started, host, pid = [*str(value or "").split(" "), "", "", "0"][:3]
            pid = pid or "0"
            rows.append(
                InstanceRow(
                    name,
                    now + int(ttl_ms) / 1000 if value and int(ttl_ms) > 0 else None,
                    int(holds),
                    float(started) if started else None,
                    host,
                    int(pid) if pid.isdigit() else 0,
                )
            )
        return rows

    async def release_instance(self, instance_id: str, note: str, limit: int = SWEEP_BATCH) -> int:
        """Release every hold of an instance, `limit` per script."""
        return await self._in_batches("release_instance", [instance_id, note, limit], limit)

    async def _in_batches(self, name: str, args: Sequence[Any], limit: int) -> int:
        """Run a releasing script until a run releases fewer than `limit`; how many in all."""
        total = 0
        while True:
            released = int(await self._run(name, args))
            total += released
            if released < limit:
                return total

    async def credit(self, row: LedgerRow, cap_nano: int = MAX_NANO) -> int:
        """Apply a grant or top-up; the balance after it. Raises BalanceCapExceeded, applying
        nothing, if the balance plus the key's open holds would pass `cap_nano` (by default the
        largest the scripts compare exactly)."""
        result = await self._call(
            "credit",
            row.key_id,
            [row.key_id, row.entry_id, row.kind, row.amount_nano, row.note or "", cap_nano],
        )
        if result[0] == "no_account":
            raise StoreUnavailable(f"key {row.key_id} has no account")
        if result[0] == "cap":
            raise BalanceCapExceeded(int(result[1]), int(result[2]))
        return int(result[1])

    async def revoke(self, key_id: str) -> None:
        await self._run("revoke", [key_id])

    async def read(self, key_id: str) -> tuple[int, int, list[HoldRow]] | None:
        result = await self._call("read", key_id, [key_id])
        if result[0] == "no_account":
            return None
        pairs: list[str] = result[3]
        holds: list[HoldRow] = []
        members = [f"{key_id} {pairs[i]}" for i in range(0, len(pairs), 2)]
        expiries = await self.redis.zmscore(EXPIRY, members) if members else []
        for i in range(0, len(pairs), 2):
            amount, tokens, hour, created, *rest = pairs[i + 1].split(" ")
            expires = expiries[i // 2]
            holds.append(
                HoldRow(
                    pairs[i],
                    key_id,
                    rest[0] if rest and rest[0] else None,
                    int(amount),
                    int(tokens),
                    int(hour),
                    int(created) / 1000,
                    (expires or 0) / 1000,
                    rest[1] if len(rest) > 1 and rest[1] else None,
                )
            )
        holds.sort(key=lambda h: h.created_at)
        return int(result[1]), int(result[2]), holds

    async def spent(self, key_id: str, since_hours: Sequence[int]) -> list[int]:
        if not since_hours:
            return []
        result = await self._call("spent", key_id, [key_id, *since_hours])
        if result[0] == "no_account":
            return [0 for _ in since_hours]
        return [int(v) for v in result[1:]]

    async def loaded_balances(self) -> dict[str, int]:
        """Every account Redis holds, with its live balance (for the audit)."""
        balances: dict[str, int] = {}
        async for name in self.redis.scan_iter(match="fg:a:{*}", count=1000):
            value = await self.redis.hget(name, "bal")
            if value is not None:
                balances[str(name)[len("fg:a:{") : -1]] = int(value)
        return balances

    async def pending(self) -> int:
        return int(await self.redis.xlen(OUTBOX))
