"""Issue #12, item 10: an unknown feedback id is cheap to refuse on PostgreSQL (it was about 15
transactions each, a lever for loading the database through any key)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from harness import MASTER_KEY, GatewayProcess, SimProcess
from servers import PostgresServer, SharedUrls, launch_gateway, postgres_server, redis_server, shared_urls  # noqa: F401

pytestmark = pytest.mark.e2e

BACKENDS_GONE_S = 30.0


def committed_when_gone(server: PostgresServer, urls: SharedUrls) -> int:
    """The database's committed transactions once no session is left on it.

    A backend reports its transaction counts to pg_stat_database late (up to 10 s) when it goes
    idle less than a second after its last report, but always as it exits, before it leaves
    pg_stat_activity: once the gateway has stopped and its sessions are gone, the count is whole.
    """
    name = urls.postgres.rsplit("/", 1)[1]
    deadline = time.monotonic() + BACKENDS_GONE_S
    while int(server.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'").strip()):
        assert time.monotonic() < deadline, "the stopped gateway's sessions are still open"
        time.sleep(0.05)
    return int(server.psql(f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{name}'").strip())


async def unknown_feedback(gateway: GatewayProcess, key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{gateway.base_url}/feedback", json={"request_id": f"req_{i:024x}", "score": "up"}
                )
                for i in range(count)
            )
        )
    return [a.status_code for a in answers]


def not_ids(gateway: GatewayProcess, key: str) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(20):
            answer = client.post(f"{gateway.base_url}/feedback", json={"request_id": "req_nope", "score": 1})
            assert answer.status_code == 404


def unknown_ids(gateway: GatewayProcess, key: str) -> None:
    assert asyncio.run(unknown_feedback(gateway, key, 40)) == [404] * 40


def test_unknown_ids_cost_a_few_reads(
    sim: SimProcess,
    postgres_server: PostgresServer,  # noqa: F811
    shared_urls: SharedUrls,  # noqa: F811
    tmp_path: Path,
) -> None:
    with launch_gateway(tmp_path / "keys", sim, store=shared_urls.store()) as gateway:
        with httpx.Client(headers={"Authorization": f"Bearer {MASTER_KEY}"}) as admin:
            key = admin.post(f"http://127.0.0.1:{gateway.port}/admin/keys", json={"name": "fb"}).json()[
                "api_key"
            ]

    # Each action in a gateway of its own, counted from before its start to after its stop (see
    # committed_when_gone); a gateway that does nothing but start, verify the key and stop gives
    # the cost of all that (its startup, background work, shutdown), discounted from the others.
    def lifetime(action: Callable[[GatewayProcess, str], None], name: str) -> int:
        before = committed_when_gone(postgres_server, shared_urls)
        with launch_gateway(tmp_path / name, sim, store=shared_urls.store()) as gateway:
            assert asyncio.run(unknown_feedback(gateway, key, 2)) == [404] * 2  # the key verified
            action(gateway, key)
        return committed_when_gone(postgres_server, shared_urls) - before

    counts = {
        "nothing": lifetime(lambda gateway, key: None, "nothing"),
        "unknown ids": lifetime(unknown_ids, "unknown"),
        "not ids": lifetime(not_ids, "not-ids"),
    }
    # At most three reads per id (look, flush ours and look, wait once for the other instances'
    # flush and look), as the endpoint promises: one transaction each, as the pool gives a
    # connection back without asyncpg's reset query (store/postgres/pool.py). It was about 15 per
    # id, then 6.3 with the reset query after every read.
    assert counts["unknown ids"] - counts["nothing"] <= 40 * 4.5, counts
    # Something that is not an id the gateway gives out costs nothing at all.
    assert counts["not ids"] - counts["nothing"] <= 5, counts
