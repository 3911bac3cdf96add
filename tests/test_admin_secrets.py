"""Raw API keys are never written anywhere: not to logs, not to the database, not to Redis.

Keys are made through the admin API and the CLI, used (served, refused for credit, revoked,
and mistyped), and then every byte the run left behind is searched for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import redis

from harness import MASTER_KEY, GatewayProcess, SimProcess, clean_env
from servers import (  # noqa: F401
    PostgresServer,
    RedisServer,
    SharedUrls,
    as_postgres,
    launch_gateway,
    pg_bin,
    postgres_server,
    redis_server,
    shared_urls,
)
from test_ledger_e2e import ADMIN, FLAT_MODEL, LORE, new_key

pytestmark = pytest.mark.e2e


def exercise(gateway: GatewayProcess) -> list[str]:
    """Make keys every way there is, use them every way there is; returns the raw keys."""
    _, rich = new_key(gateway, "1")
    _, poor = new_key(gateway, "0")
    premium_id, premium = new_key(gateway, "1", premium=True)
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "faregate.cli.main",
            "keys",
            "create",
            "--name",
            "cli",
            "--credits",
            "1",
            "--config",
            str(gateway.config),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    cli_key = made.stdout.strip().splitlines()[-1]
    for key in (rich, premium, cli_key):
        openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0).chat.completions.create(
            model="flat-1", messages=LORE, max_tokens=5, stream=key == premium
        )
    with pytest.raises(openai.APIStatusError):
        openai.OpenAI(base_url=gateway.base_url, api_key=poor, max_retries=0).chat.completions.create(
            model="flat-1", messages=LORE, max_tokens=5
        )
    assert (
        httpx.delete(f"http://127.0.0.1:{gateway.port}/admin/keys/{premium_id}", headers=ADMIN).status_code
        == 200
    )
    mistyped = rich[:-1] + ("A" if rich[-1] != "A" else "B")
    for key in (premium, mistyped):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0).models.list()
        assert (
            httpx.get(
                f"http://127.0.0.1:{gateway.port}/v1/me", headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 401
        )
    return [rich, poor, premium, cli_key, mistyped]


def assert_nowhere(keys: list[str], blobs: dict[str, bytes]) -> None:
    assert all(len(key) > 40 for key in keys)
    for name, blob in blobs.items():
        for key in keys:
            # The whole key, and its secret part alone (everything after the shown prefix).
            for needle in (key, key[12:]):
                assert needle.encode() not in blob, f"a raw key was found in {name}"


def files_under(*roots: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for root in roots for path in root.rglob("*") if path.is_file()}


def test_raw_keys_never_reach_logs_or_the_embedded_store(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, extra="accounts: {enabled: true}\n" + FLAT_MODEL) as gateway:
        keys = exercise(gateway)
    # The gateway stopped: its log is complete and the WAL is folded into the database file (or kept).
    blobs = files_under(tmp_path)
    assert any(name.endswith("faregate.db") for name in blobs) and any(
        name.endswith("gateway.log") for name in blobs
    )
    assert_nowhere(keys, blobs)


def test_raw_keys_never_reach_postgresql_or_redis(
    sim: SimProcess,
    shared_urls: SharedUrls,  # noqa: F811
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = "accounts: {enabled: true}\n" + FLAT_MODEL
    with launch_gateway(tmp_path / "gw", sim, store=shared_urls.store(), extra=config) as gateway:
        keys = exercise(gateway)
        database = shared_urls.postgres.rsplit("/", 1)[1]
        pg_dump = [
            pg_bin("pg_dump"),
            "-h",
            "127.0.0.1",
            "-p",
            str(postgres_server.port),
            "-U",
            "postgres",
            database,
        ]
        dump = subprocess.run(
            as_postgres(pg_dump),
            capture_output=True,
            check=True,
        ).stdout
        assert b"COPY public.ledger" in dump and b"COPY public.api_keys" in dump
        client = redis.Redis.from_url(shared_urls.redis)
        values: list[bytes] = []
        for name in client.scan_iter(count=1000):
            kind = client.type(name)
            values.append(name)
            if kind == b"hash":
                for field, value in client.hgetall(name).items():
                    values += [field, value]
            elif kind == b"stream":
                for _, fields in client.xrange(name):
                    values += [item for pair in fields.items() for item in pair]
            elif kind == b"zset":
                values += client.zrange(name, 0, -1)
            elif kind == b"string":
                values.append(client.get(name) or b"")
        client.close()
        assert len(values) > 5
    blobs = {"pg_dump": dump, "redis": b"\n".join(values), **files_under(tmp_path)}
    assert_nowhere(keys, blobs)


def test_the_master_key_is_never_logged(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, extra=FLAT_MODEL) as gateway:
        for headers in (ADMIN, {"Authorization": "Bearer " + MASTER_KEY + "x"}):
            httpx.get(f"http://127.0.0.1:{gateway.port}/admin/keys", headers=headers)
    assert MASTER_KEY.encode() not in (tmp_path / "gw" / "gateway.log").read_bytes()
