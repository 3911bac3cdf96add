"""Issue #12, items 5 and 7: a store outage is a clean, quiet 503, and a Redis restart costs nothing.

Each test runs its own PostgreSQL or Redis server (real Debian binaries on loopback) so that it
can stop and restart it under a gateway process driven with httpx and the openai SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from harness import MASTER_KEY, GatewayProcess, SimProcess
from servers import (  # noqa: F401
    PostgresServer,
    RedisServer,
    _wait_port,
    as_postgres,
    die_with_parent,
    launch_gateway,
    pg_bin,
    postgres_server,
    redis_server,
    run_postgres,
)

if TYPE_CHECKING:
    from faregate.accounts.shared import SharedAccounts
    from faregate.store.postgres.store import PostgresStore

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
CONFIG = "accounts: {enabled: true}\n"
HELLO = [{"role": "user", "content": "hello"}]


def new_key(gateway: GatewayProcess) -> str:
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30) as client:
        response = client.post("/admin/keys", json={"name": "outage", "credits_usd": "10"})
    assert response.status_code == 201, response.text
    return str(response.json()["api_key"])


async def statuses(base_url: str, key: str, count: int, concurrency: int = 20) -> list[int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with gate:
            try:
                await client.chat.completions.create(
                    model="deepseek-v4-flash",
                    messages=[{"role": "user", "content": f"hello {i}"}],
                    max_tokens=20,
                )
            except openai.APIStatusError as error:
                return error.status_code
            return 200

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        await client.close()


async def strangers(base_url: str, count: int, also_me: str | None = None) -> list[httpx.Response]:
    """`count` requests at once, each with a key the gateway has not seen (looked up in PostgreSQL),
    and with them `also_me`'s GET /v1/me and a feedback from it (its request looked up), and an
    admin's key list, if given."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        me = []
        if also_me:
            headers = {"Authorization": f"Bearer {also_me}"}
            feedback = {"request_id": "req_" + "0" * 32, "score": "up"}
            me = [
                client.get("/me", headers=headers),
                client.post("/feedback", headers=headers, json=feedback),
                client.get(f"{base_url.removesuffix('/v1')}/admin/keys", headers=ADMIN),
            ]
        return list(
            await asyncio.gather(
                *(
                    client.post(
                        "/chat/completions",
                        headers={"Authorization": f"Bearer fg-stranger{i:04d}{'x' * 30}"},
                        json={"model": "deepseek-v4-flash", "messages": HELLO},
                    )
                    for i in range(count)
                ),
                *me,
            )
        )


def test_a_postgresql_outage_is_a_quiet_503(
    sim: SimProcess,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    from harness import health_counter, wait_until

    async def frozen_traffic(base_url: str, key: str) -> tuple[list[httpx.Response], list[int]]:
        return await asyncio.gather(strangers(base_url, 3, also_me=key), statuses(base_url, key, 12, 4))

    with run_postgres() as pg:
        database = pg.new_database()
        store = f"postgres_url: {database!r}\nredis_url: {redis_server.new_database()!r}\n"
        # Verified keys stay cached through the freeze: /v1/me then reads PostgreSQL for the key's
        # row itself, not for its verification. A backlog of 4 records makes requests wait for the
        # record writer (backpressure).
        extra = CONFIG + "auth: {key_cache_ttl_s: 600}\nrecords: {backpressure_pending: 4}\n"
        with launch_gateway(tmp_path / "gw", sim, store=store, extra=extra) as gateway:
            key = new_key(gateway)
            assert asyncio.run(statuses(gateway.base_url, key, 5)) == [200] * 5
            log_before = gateway.log.stat().st_size
            # Frozen first (it answers nothing, its connections stay open): a key the gateway must
            # look up, a key's /v1/me, its feedback and an admin's key list get their 503 within
            # the client's timeout, not after the pool's statement timeout twice over (asyncpg
            # waits for the cancel too). A cached key is served (Redis answers): its records,
            # whose write hangs, are kept, and its requests stop waiting for them.
            with pg.frozen():
                answers, served = asyncio.run(frozen_traffic(gateway.base_url, key))
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "store_unavailable"
            assert served == [200] * 12
            assert "has not answered a write" in gateway.read_log()[log_before:]
            wait_until(
                lambda: health_counter(gateway, "records_pending") == 0, "the records kept are written"
            )
            assert health_counter(gateway, "records_dropped") == 0
            served_rows = pg.psql(
                "SELECT count(*) FROM request_records WHERE status = 200", database.rsplit("/", 1)[1]
            )
            assert int(served_rows.strip()) == 5 + 12
            assert (
                asyncio.run(statuses(gateway.base_url, new_key_when_up(gateway, time.monotonic() + 30), 3))
                == [200] * 3
            )
            subprocess.run(
                as_postgres([pg_bin("pg_ctl"), "-D", str(pg.datadir), "-m", "immediate", "-w", "stop"]),
                check=True,
                capture_output=True,
            )
            # Keys the gateway has not seen must be looked up in PostgreSQL: every one is refused
            # with a clean 503 in OpenAI's shape, never a 500.
            for i in range(60):
                stranger = f"fg-unknown{i:04d}" + "x" * 30
                answer = httpx.post(
                    f"{gateway.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {stranger}"},
                    json={"model": "deepseek-v4-flash", "messages": HELLO},
                    timeout=30,
                )
                assert answer.status_code == 503, answer.text
                error = answer.json()["error"]
                assert error["code"] == "store_unavailable" and error["type"] == "service_unavailable"
                assert answer.headers["Retry-After"] == "1"
            me = httpx.get(f"{gateway.base_url}/me", headers={"Authorization": f"Bearer {key}"}, timeout=30)
            assert me.status_code == 503 and me.json()["error"]["code"] == "store_unavailable"
            # The log says it, once per kind of failure and interval, without a traceback each time.
            written = gateway.read_log()[log_before:]
            assert written.count("Traceback") <= 2, written[-3000:]
            assert len(written) < 20_000, f"{len(written)} bytes of log for 66 failed requests"
            assert "store is unavailable" in written
            # PostgreSQL back: the same gateway serves again, without a restart.
            start = [pg_bin("pg_ctl"), "-D", str(pg.datadir), "-w", "-l", str(pg.datadir / "log"), "start"]
            options = f"-p {pg.port} -k {pg.datadir.parent} -c listen_addresses=127.0.0.1"
            subprocess.run(as_postgres([*start, "-o", options]), check=True, capture_output=True)
            deadline = time.monotonic() + 30
            while True:
                result = asyncio.run(statuses(gateway.base_url, new_key_when_up(gateway, deadline), 3))
                if result == [200] * 3 or time.monotonic() > deadline:
                    break
            assert result == [200] * 3


def test_a_frozen_postgresql_is_a_prompt_503_on_an_accounts_first_load(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    """An account is loaded from PostgreSQL into Redis on its first use (here after Redis lost its
    data set, with a reservation of the old one still open in PostgreSQL). PostgreSQL frozen then:
    the reservation gets its 503 promptly, not after the pool's statement timeout twice over; the
    load given up leaves nothing behind, and once PostgreSQL answers again the account loads, the
    old hold is released once, and the money adds up."""

    async def scenario(pg: PostgresServer) -> dict[str, Any]:
        from faregate.accounts.backend import Admitted, HoldRef, ReserveAsk
        from faregate.accounts.keys import KeyStore
        from faregate.accounts.policy import Limits, hour_of
        from faregate.accounts.shared import SharedAccounts
        from faregate.store.postgres.store import PostgresStore
        from faregate.store.protocols import StoreUnavailable

        store = await PostgresStore.open(pg.new_database())
        shared = await SharedAccounts.connect(redis_server.new_database(), store)
        try:
            key, _ = await KeyStore(store).create("first load", credits_nano=1_000_000)
            limits, hour = Limits(None, None), hour_of(time.time())

            def ask(name: str) -> ReserveAsk:
                return ReserveAsk(key.id, f"hold_{name}", f"req_{name}", 400_000, 10, hour, (), limits, 600.0)

            assert isinstance(await shared.reserve(ask("lost")), Admitted)
            await shared.flush()  # its reservation is open in PostgreSQL
            await shared.redis.flushdb()  # Redis lost its data set (a restart without persistence)
            with pg.frozen():
                # Waited for without cancelling it: a cancelled load waits for PostgreSQL too.
                frozen = asyncio.ensure_future(shared.reserve(ask("frozen")))
                await asyncio.wait({frozen}, timeout=30)
            assert frozen.done(), "the reservation still waits for a frozen PostgreSQL after 30 s"
            refused = frozen.exception()
            assert isinstance(refused, StoreUnavailable) and "PostgreSQL" in str(refused), repr(refused)
            assert isinstance(await shared.reserve(ask("after")), Admitted)
            await shared.settle(key.id, HoldRef("hold_after", "req_after", hour, 10, limits), 123_000, 5)
            await shared.flush()
            balance = await shared.balance(key.id)
            return {
                "balance": (balance.balance_nano, balance.held_nano) if balance else None,
                "open_holds": await store.accounts.open_holds_count(),
                "clean": (await shared.audit()).clean,
            }
        finally:
            await shared.close()
            await store.close()

    with run_postgres() as pg:
        result = asyncio.run(scenario(pg))
    assert result == {"balance": (1_000_000 - 123_000, 0), "open_holds": 0, "clean": True}


def new_key_when_up(gateway: GatewayProcess, deadline: float) -> str:
    while True:
        try:
            return new_key(gateway)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class RestartableRedis:
    """A redis-server on a fixed loopback port that can be killed and started again (empty: no
    persistence, like the deployments docs/accounts.md describes)."""

    def __init__(self, port: int, root: Path) -> None:
        self.port, self.root = port, root
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        _wait_port(self.port, self.process, "redis-server")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Redis stops answering without closing a connection (SIGSTOP: a frozen host, a network
        partition, a command that runs for minutes), and answers again after the block."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)


@contextlib.contextmanager
def restartable_redis() -> Iterator[RestartableRedis]:
    from harness import free_port

    root = Path(tempfile.mkdtemp(prefix="faregate-redis-restart-"))
    redis = RestartableRedis(free_port(), root)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_a_redis_restart_costs_no_request(
    sim: SimProcess,
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    with restartable_redis() as redis:
        store = f"postgres_url: {postgres_server.new_database()!r}\nredis_url: 'redis://127.0.0.1:{redis.port}/0'\n"
        with launch_gateway(tmp_path / "gw", sim, store=store, extra=CONFIG) as gateway:
            key = new_key(gateway)
            # Fill the pool with connections opened before the restart.
            assert asyncio.run(statuses(gateway.base_url, key, 200, concurrency=64)).count(200) == 200
            time.sleep(0.5)  # the ledger outbox ships every 0.1 s
            redis.kill()
            redis.start()
            after = asyncio.run(statuses(gateway.base_url, key, 300))
            assert after.count(200) == 300, {s: after.count(s) for s in set(after)}
            audit = httpx.get(f"http://127.0.0.1:{gateway.port}/admin/audit", headers=ADMIN, timeout=60)
            assert audit.status_code == 200 and audit.json()["clean"] is True, gateway.read_log()[-5000:]


def test_a_frozen_redis_is_a_prompt_503_and_leaves_no_hold(
    sim: SimProcess,
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Redis stops answering while its connections stay open: a request that needs a reservation
    gets a 503 within the client's timeout instead of hanging on a read forever. Each reservation
    stays in the frozen Redis's socket and runs once it answers again: the gateway gives it back,
    so no hold is left, and the key then serves as before with a clean audit, every request recorded
    once."""
    from harness import health_counter, wait_until

    database = postgres_server.new_database()
    sent = 6  # 3 before the freeze, 3 during it, and those until it serves again

    def serving(base_url: str, key: str) -> bool:
        nonlocal sent
        sent += 1
        return asyncio.run(statuses(base_url, key, 1)) == [200]

    def recorded() -> tuple[int, int]:
        counted = postgres_server.psql(
            "SELECT count(*), count(DISTINCT request_id) FROM request_records", database.rsplit("/", 1)[1]
        )
        rows, distinct = counted.strip().split("|")
        return int(rows), int(distinct)

    with restartable_redis() as redis:
        store = f"postgres_url: {database!r}\nredis_url: 'redis://127.0.0.1:{redis.port}/0'\n"
        with launch_gateway(tmp_path / "gw", sim, store=store, extra=CONFIG) as gateway:
            key = new_key(gateway)
            assert asyncio.run(statuses(gateway.base_url, key, 3)) == [200] * 3
            with redis.frozen():
                # The client's timeout (30 s) is the bound: a hang is an APITimeoutError here.
                during = asyncio.run(statuses(gateway.base_url, key, 3))
            assert during == [503] * 3, during
            wait_until(lambda: serving(gateway.base_url, key), "serving again", 60)
            wait_until(lambda: health_counter(gateway, "settlements_pending") == 0, "the releases land", 60)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30
            ) as admin:
                me = admin.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
                audit = admin.get("/admin/audit").json()
            assert me["reserved_usd"] == "0", me
            assert audit["clean"] is True, audit
            wait_until(lambda: recorded() == (sent, sent), f"{sent} requests recorded once each", 30)


@contextlib.asynccontextmanager
async def shared_accounts(
    redis_url: str, postgres_url: str, key_name: str, **options: float
) -> AsyncIterator[tuple[SharedAccounts, PostgresStore, str]]:
    """The accounts on Redis and PostgreSQL, as a gateway with `accounts.backend: redis` has them,
    and a key holding $0.001 (1,000,000 nano): the accounts, the store and the key's id."""
    from faregate.accounts.keys import KeyStore
    from faregate.accounts.shared import SharedAccounts
    from faregate.store.postgres.store import PostgresStore

    pg = await PostgresStore.open(postgres_url)
    shared = await SharedAccounts.connect(redis_url, pg, **options)
    try:
        key, _ = await KeyStore(pg).create(key_name, credits_nano=1_000_000)
        yield shared, pg, key.id
    finally:
        await shared.close()
        await pg.close()


def test_retried_scripts_do_not_act_twice(redis_server: RedisServer, postgres_server: PostgresServer) -> None:  # noqa: F811
    """The one retry on a fresh connection may repeat a script that already ran: a reservation,
    settlement or credit repeated that way changes nothing the second time."""

    async def scenario() -> dict[str, Any]:
        from faregate.store.protocols import LedgerRow

        urls = (redis_server.new_database(), postgres_server.new_database())
        async with shared_accounts(*urls, "retry") as (shared, _, key_id):
            ledger = shared.ledger
            args = (key_id, "hold_retry", "req_retry", 300_000, 10, 1, [], 60.0, None, None)
            first = await ledger.reserve(*args)
            again = await ledger.reserve(*args)
            after_reserve = await ledger.read(key_id)
            await ledger.settle(key_id, "hold_retry", "req_retry", 1, 100_000, 10, 0)
            await ledger.settle(key_id, "hold_retry", "req_retry", 1, 100_000, 10, 0)
            after_settle = await ledger.read(key_id)
            row = LedgerRow("topup_retry", key_id, "topup", 5_000, time.time())
            await ledger.credit(row)
            await ledger.credit(row)
            after_credit = await ledger.read(key_id)
            await shared.flush()
            audit = await shared.audit()
            return {
                "statuses": (first.status, again.status),
                "reserve": after_reserve[:2] if after_reserve else None,
                "settle": after_settle[:2] if after_settle else None,
                "credit": after_credit[:2] if after_credit else None,
                "clean": audit.clean,
            }

    result = asyncio.run(scenario())
    assert result["statuses"] == ("ok", "ok")
    assert result["reserve"] == (700_000, 300_000)
    assert result["settle"] == (900_000, 0)
    assert result["credit"] == (905_000, 0)
    assert result["clean"] is True


def test_a_reservation_run_after_its_release_is_not_made(
    redis_server: RedisServer,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """A reservation Redis did not answer in time is released by the gateway; the release may run
    before the reservation itself (both waited in a frozen Redis's sockets). The reservation that
    comes late is then not made: no hold is left until its expiry."""

    async def scenario() -> dict[str, Any]:
        from faregate.store.protocols import StoreUnavailable

        urls = (redis_server.new_database(), postgres_server.new_database())
        async with shared_accounts(*urls, "late") as (shared, _, key_id):
            ledger = shared.ledger
            await ledger.load(key_id)
            released = await ledger.release(key_id, "hold_late", 0, 60.0)
            late: str | None = None
            try:
                await ledger.reserve(key_id, "hold_late", "req_late", 300_000, 10, 1, [], 60.0, None, None)
            except StoreUnavailable as exc:
                late = str(exc)
            read = await ledger.read(key_id)
            await shared.flush()
            return {"released": released, "late": late, "read": read, "clean": (await shared.audit()).clean}

    result = asyncio.run(scenario())
    assert result["released"] is False
    assert result["late"] is not None and "given up" in result["late"]
    assert result["read"] == (1_000_000, 0, [])
    assert result["clean"] is True


def test_a_settlement_while_redis_is_down_is_kept_and_charged_once_it_is_back(
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """Redis gone when a request ends: the settlement is kept (no error, no traceback) and lands
    once Redis is back. This Redis comes back empty (no persistence): the hold was released with
    the lost data set, so the settlement lands as a late one, charged all the same."""

    async def scenario(redis: RestartableRedis) -> dict[str, Any]:
        from decimal import Decimal

        from faregate.accounts.admission import Hold
        from faregate.accounts.backend import Admitted, HoldRef, ReserveAsk
        from faregate.accounts.metered import MeteredAdmission, PolicyCache
        from faregate.accounts.policy import Limits, hour_of
        from faregate.config import AccountsSettings

        urls = (f"redis://127.0.0.1:{redis.port}/0", postgres_server.new_database())
        async with shared_accounts(*urls, "blip") as (shared, pg, key_id):
            admission = MeteredAdmission(shared, PolicyCache(pg.accounts), AccountsSettings(), 600.0)
            try:
                limits, hour = Limits(None, None), hour_of(time.time())
                ask = ReserveAsk(key_id, "hold_blip", "req_blip", 400_000, 10, hour, (), limits, 600.0)
                assert isinstance(await shared.reserve(ask), Admitted)
                await shared.flush()
                handle = HoldRef("hold_blip", "req_blip", hour, 10, limits)
                hold = Hold(key_id, Decimal("0.0004"), 10, handle=handle)
                redis.kill()
                await admission.settle(hold, Decimal("0.000123"), 5)
                kept = admission.settlements.pending
                redis.start()
                await asyncio.wait_for(admission.settlements.wait_empty(), 60)
                await shared.flush()
                balance = await shared.balance(key_id)
                return {
                    "kept": kept,
                    "pending": admission.settlements.pending,
                    "balance": (balance.balance_nano, balance.held_nano) if balance else None,
                    "clean": (await shared.audit()).clean,
                }
            finally:
                await admission.settlements.close()

    with restartable_redis() as redis:
        result = asyncio.run(scenario(redis))
    assert result == {"kept": 1, "pending": 0, "balance": (1_000_000 - 123_000, 0), "clean": True}


def test_a_settled_hold_is_remembered_as_long_as_a_retry_may_come(
    redis_server: RedisServer,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    """A settlement whose first call landed unseen (the connection dropped with its answer) is
    retried for up to accounts.settle_retry_s: the hold must be remembered as settled that long, or
    the retry, finding the hold gone, would charge it again as a late settlement."""

    async def scenario() -> int:
        from faregate.accounts.backend import HoldRef, ReserveAsk
        from faregate.accounts.policy import Limits, hour_of

        urls = (redis_server.new_database(), postgres_server.new_database())
        async with shared_accounts(*urls, "remember", remember_settled_s=3600.0) as (shared, _, key_id):
            limits, hour = Limits(None, None), hour_of(time.time())
            await shared.reserve(ReserveAsk(key_id, "hold_r", "req_r", 400_000, 10, hour, (), limits, 600.0))
            await shared.settle(key_id, HoldRef("hold_r", "req_r", hour, 10, limits), 123_000, 5)
            return int(await shared.redis.pttl("fg:settled:hold_r"))

    assert asyncio.run(scenario()) > 3_000_000


SLOW_SIM = "defaults: {ttft_ms: 5, tokens_per_s: 25, answer: {lorem: 60}}\n"


def test_a_stream_that_ends_while_redis_is_down_is_still_charged(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Redis dies while a stream runs: the stream ends, its settlement cannot reach Redis and is
    kept; once Redis is back (empty) it lands as a late settlement. The request is charged, the
    audit is clean, and the outage is logged in a line, not a traceback per request."""
    from harness import health_counter, run_sim

    with run_sim(tmp_path, SLOW_SIM) as sim, restartable_redis() as redis:
        store = f"postgres_url: {postgres_server.new_database()!r}\nredis_url: 'redis://127.0.0.1:{redis.port}/0'\n"
        with launch_gateway(tmp_path / "gw", sim, store=store, extra=CONFIG) as gateway:
            key = new_key(gateway)
            client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
            stream = client.chat.completions.create(model="deepseek-v4-flash", messages=HELLO, stream=True)
            chunks = iter(stream)
            next(chunks)
            time.sleep(0.5)  # the reservation's ledger row reaches PostgreSQL (every 0.1 s)
            redis.kill()
            rest = list(chunks)
            assert rest, "the stream went on"
            redis.start()
            deadline = time.monotonic() + 60
            while health_counter(gateway, "settlements_recovered") < 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert health_counter(gateway, "settlements_recovered") == 1
            assert health_counter(gateway, "settlements_pending") == 0
            with httpx.Client(
                base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30
            ) as admin:
                key_id = admin.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json()["id"]
                rows = admin.get(f"/admin/keys/{key_id}/ledger").json()["data"]
                audit = admin.get("/admin/audit").json()
                metrics = admin.get("/metrics").text
            late = [r for r in rows if r["kind"] == "settlement" and "late" in (r["note"] or "")]
            assert len(late) == 1 and int(late[0]["amount_usd"].replace(".", "").lstrip("-0") or 0) > 0, rows
            assert audit["clean"] is True, audit
            text = gateway.read_log()
            assert "settlements are kept in memory" in text, text[-5000:]
            assert "could not settle" not in text and "Traceback" not in text, text[-5000:]
            assert text.count("ledger shipping paused") == 1 and "ledger shipping resumed" in text
            assert text.count("key events: lost the Redis subscription") == 1, text[-5000:]
            assert "faregate_settlements_recovered_total 1.0" in metrics.splitlines(), metrics


def test_a_settlement_kept_by_a_killed_gateway_is_charged_once_by_the_next(
    sim: SimProcess,
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A stream ends while Redis is down, and the gateway is then killed (SIGKILL: an OOM kill, a
    host restart) before Redis is back. Its kept settlement was in its spool file: the gateway
    started next on the same data directory takes it over and charges it, once."""
    from harness import health_counter, wait_until

    with restartable_redis() as redis:
        store = f"postgres_url: {postgres_server.new_database()!r}\nredis_url: 'redis://127.0.0.1:{redis.port}/0'\n"
        with launch_gateway(tmp_path / "gw", sim, store=store, extra=CONFIG) as gateway:
            key = new_key(gateway)
            admin = httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30)
            with admin:
                key_id = admin.get("/v1/me", headers={"Authorization": f"Bearer {key}"}).json()["id"]
                client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
                # Slow (as SLOW_SIM): Redis is killed while it runs.
                slow = {"sim": {"ttft_ms": 5, "tokens_per_s": 25, "answer": {"lorem": 60}}}
                chunks = iter(
                    client.chat.completions.create(
                        model="deepseek-v4-flash", messages=HELLO, stream=True, extra_body=slow
                    )
                )
                next(chunks)

                def kinds() -> list[str]:
                    return [r["kind"] for r in admin.get(f"/admin/keys/{key_id}/ledger").json()["data"]]

                # The reservation's ledger row is in PostgreSQL (Redis comes back empty).
                wait_until(lambda: "reservation" in kinds(), "the reservation reaches PostgreSQL")
                redis.kill()
                assert list(chunks), "the stream went on"
                wait_until(
                    lambda: health_counter(gateway, "settlements_spooled") == 1, "the settlement is spooled"
                )
            gateway.process.kill()
            gateway.process.wait(10)
        redis.start()
        with launch_gateway(tmp_path / "gw", sim, store=store, extra=CONFIG) as gateway:
            assert health_counter(gateway, "settlements_replayed") == 1
            wait_until(lambda: health_counter(gateway, "settlements_recovered") == 1, "the settlement lands")
            assert health_counter(gateway, "settlements_spooled") == 0
            with httpx.Client(
                base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30
            ) as admin:
                rows = admin.get(f"/admin/keys/{key_id}/ledger").json()["data"]
                audit = admin.get("/admin/audit").json()
                metrics = admin.get("/metrics").text
            settlements = [r for r in rows if r["kind"] == "settlement"]
            assert len(settlements) == 1 and "late" in settlements[0]["note"], rows
            assert settlements[0]["amount_usd"].startswith("-") and settlements[0]["amount_usd"] != "-0", rows
            assert audit["clean"] is True, audit
            assert "faregate_settlements_replayed_total 1.0" in metrics.splitlines(), metrics
            spooled = list((gateway.store_path / "settle-spool").glob("*.jsonl"))
            # Only the running gateway's own file, with nothing left in it.
            assert len(spooled) == 1 and spooled[0].stat().st_size == 0, spooled


async def test_a_lost_key_events_subscription_is_logged_once_and_its_return_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The subscription that carries revocations is made again every half second while Redis is
    down: one line when it is lost and one when it is back, not a warning every attempt."""
    import logging

    from redis.asyncio import Redis

    from faregate.accounts.shared import KeyEvents
    from faregate.store.redis.connect import retry_once_on_a_fresh_connection

    caplog.set_level(logging.INFO, logger="faregate.accounts")
    with restartable_redis() as server:
        # Retried as the gateway's client is (SharedAccounts.connect), not with redis-py's default
        # backoff (seconds per lost connection).
        redis = Redis(host="127.0.0.1", port=server.port, retry=retry_once_on_a_fresh_connection())
        events = KeyEvents(redis, [])
        attempts, wanted = 0, 0
        retried = asyncio.Event()
        make_pubsub = redis.pubsub

        def counted_pubsub() -> Any:
            nonlocal attempts
            attempts += 1
            if wanted and attempts >= wanted:
                retried.set()
            return make_pubsub()

        redis.pubsub = counted_pubsub  # type: ignore[method-assign]
        try:
            await events.start()
            assert events.ready.is_set()
            server.kill()
            events.ready.clear()
            wanted = attempts + 3  # the lost subscription, then two reconnections that fail
            async with asyncio.timeout(60):
                await retried.wait()
            server.start()
            async with asyncio.timeout(60):
                await events.ready.wait()  # subscribed again
        finally:
            await events.stop()
            await redis.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == "faregate.accounts"]
    assert sum("lost the Redis subscription" in line for line in said) == 1, said
    assert sum("subscribed again" in line for line in said) == 1, said


async def test_an_idle_ledger_shipper_is_no_outage_whatever_its_interval(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shipper waits for new ledger entries in a blocking read; a wait longer than the Redis
    client's socket timeout (accounts.ledger_flush_interval_s set above it) timed out on every
    idle round: an outage logged, a connection dropped, for a Redis that was fine."""
    import logging

    from redis.asyncio import Redis

    from faregate.store.redis.shipper import LedgerShipper

    caplog.set_level(logging.WARNING, logger="faregate.ledger")
    redis = Redis.from_url(redis_server.new_database(), socket_timeout=1.5)
    shipper = LedgerShipper(redis, None, interval_s=2.0)  # type: ignore[arg-type]  # no entry: PostgreSQL unused
    try:
        await shipper._ensure_group()
        await shipper._ship_round()
    finally:
        await redis.aclose()
    assert [r.getMessage() for r in caplog.records if r.name == "faregate.ledger"] == []


class SilentLink:
    """A TCP relay to a server on loopback that can go silent: it keeps every connection open but
    passes nothing either way (a network partition, as a client sees it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent = False
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if not self.silent:
                    sink.write(data)
                    await sink.drain()
        sink.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_a_key_events_subscription_gone_silent_is_made_anew(
    redis_server: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A partition leaves the subscription's connection open and silent: no error ever comes, and
    key changes went unheard until a restart. A subscription that stays silent after a PING is
    lost and made anew, and hears the key changes published once the link is back."""
    import logging

    from redis.asyncio import Redis

    from faregate.accounts.shared import KeyEvents

    caplog.set_level(logging.INFO, logger="faregate.accounts")
    url = redis_server.new_database()
    direct = Redis.from_url(url)
    link = SilentLink(direct.connection_pool.connection_kwargs["port"])
    port = await link.start()
    database = direct.connection_pool.connection_kwargs.get("db", 0)
    relayed = Redis(host="127.0.0.1", port=port, db=database, socket_timeout=1.0, decode_responses=True)
    heard_after = asyncio.Event()
    events = KeyEvents(relayed, [lambda key_id: key_id == "key_after" and heard_after.set()], quiet_s=0.3)
    lost = asyncio.Event()

    class LossSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "lost the Redis subscription" in record.getMessage():
                lost.set()

    seen = LossSeen()
    logging.getLogger("faregate.accounts").addHandler(seen)

    def said(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records if r.name == "faregate.accounts")

    try:
        await events.start()
        assert events.ready.is_set()
        link.silent = True
        events.ready.clear()
        async with asyncio.timeout(30):
            await lost.wait()
        link.silent = False
        async with asyncio.timeout(30):
            await events.ready.wait()  # subscribed again
        await direct.publish("fg:keys", "key_after")
        async with asyncio.timeout(30):
            await heard_after.wait()
    finally:
        logging.getLogger("faregate.accounts").removeHandler(seen)
        await events.stop()
        await relayed.aclose()
        await direct.aclose()
        await link.close()
    assert said("subscribed again") == 1
