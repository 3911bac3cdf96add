"""Issue #12, item 10: an unknown feedback id is cheap to refuse on PostgreSQL (it was about 15
transactions each, a lever for loading the database through any key)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from harness import MASTER_KEY, GatewayProcess, SimProcess
from servers import PostgresServer, SharedUrls, launch_gateway, postgres_server, redis_server, shared_urls  # noqa: F401

pytestmark = pytest.mark.e2e


def committed(server: PostgresServer, urls: SharedUrls) -> int:
    name = urls.postgres.rsplit("/", 1)[1]
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


def test_unknown_ids_cost_a_few_reads(
    sim: SimProcess,
    postgres_server: PostgresServer,  # noqa: F811
    shared_urls: SharedUrls,  # noqa: F811
    tmp_path: Path,
) -> None:
    with launch_gateway(tmp_path / "gw", sim, store=shared_urls.store()) as gateway:
        with httpx.Client(headers={"Authorization": f"Bearer {MASTER_KEY}"}) as admin:
            key = admin.post(f"http://127.0.0.1:{gateway.port}/admin/keys", json={"name": "fb"}).json()[
                "api_key"
            ]
        asyncio.run(unknown_feedback(gateway, key, 2))  # warm: the key is verified and cached
        before = committed(postgres_server, shared_urls)
        started = time.monotonic()
        assert asyncio.run(unknown_feedback(gateway, key, 40)) == [404] * 40
        took = time.monotonic() - started
        spent = committed(postgres_server, shared_urls) - before
        # The gateway's own background work (rollups, leases, flushes) over as long a quiet spell,
        # so that a loaded machine's slower run is not counted against the reads per id.
        before = committed(postgres_server, shared_urls)
        time.sleep(took)
        background = committed(postgres_server, shared_urls) - before
        # At most three reads per id (look, flush ours and look, wait once for the other instances'
        # flush and look), fewer when they overlap: about 55 in all. Polling every 50 ms for a
        # second cost 90 and more.
        assert spent - background <= 40 * 2, (spent, background)
        # Something that is not an id the gateway gives out costs nothing at all.
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as client:
            before = committed(postgres_server, shared_urls)
            for _ in range(20):
                answer = client.post(
                    f"{gateway.base_url}/feedback", json={"request_id": "req_nope", "score": 1}
                )
                assert answer.status_code == 404
            assert committed(postgres_server, shared_urls) - before <= 10
