"""Issue #12, item 8: a killed instance's holds come back within its lease (seconds), not after
the hold's time to live, and an operator can release them at once (admin API and CLI).

On the embedded store (SQLite) and on the shared one (PostgreSQL + Redis): a real gateway is
killed with SIGKILL while a request holds a small key's whole balance, and another one starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness import MASTER_KEY, GatewayProcess, SimProcess, clean_env
from servers import PostgresServer, RedisServer, launch_gateway, postgres_server, redis_server  # noqa: F401

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
FLAT = """
models:
  flat-1: {input: 0, output: 1, context_window: 128000, offers: [{provider: sim}]}
"""
# $0.001 worst case: the key's whole balance.
WHOLE_BALANCE = {"model": "flat-1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}


def accounts(lease_s: int) -> str:
    # The hold's own time to live is ten minutes: only the lease can bring the money back sooner.
    return f"accounts: {{enabled: true, instance_lease_s: {lease_s}, sweep_interval_s: 1, hold_ttl_s: 600}}\n"


@pytest.fixture(params=["embedded", "shared"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "embedded":
        return ""
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    redis: RedisServer = request.getfixturevalue("redis_server")
    return f"postgres_url: {pg.new_database()!r}\nredis_url: {redis.new_database()!r}\n"


def admin(gateway: GatewayProcess) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN, timeout=30)


def hold_whole_balance_then_kill(gateway: GatewayProcess) -> tuple[str, str]:
    """A key with $0.001, a slow request holding all of it, and the gateway killed mid-request."""
    with admin(gateway) as client:
        made = client.post("/admin/keys", json={"name": "small", "credits_usd": "0.001"}).json()
    key_id, key = made["id"], made["api_key"]

    def slow() -> None:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)
        try:
            client.chat.completions.create(**WHOLE_BALANCE, extra_body={"sim": {"ttft_ms": 30000}})  # type: ignore[arg-type]
        except openai.APIError:
            pass  # the gateway dies under it

    worker = threading.Thread(target=slow, daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    with admin(gateway) as client:
        while not client.get(f"/admin/keys/{key_id}/reservations").json()["data"]:
            assert time.monotonic() < deadline, "the slow request never held its reservation"
            time.sleep(0.05)
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(10)
    worker.join(30)
    return key_id, key


def serve(sim: SimProcess, workdir: Path, store: str, lease_s: int) -> Any:
    return launch_gateway(
        workdir,
        sim,
        store=store,
        server="request_timeout_s: 120",
        extra=accounts(lease_s) + FLAT,
        sim_first_byte_s=60,
    )


def test_a_killed_instances_holds_come_back_within_its_lease(
    sim: SimProcess, tmp_path: Path, store: str
) -> None:
    with serve(sim, tmp_path / "gw", store, lease_s=3) as first:
        key_id, key = hold_whole_balance_then_kill(first)
    with serve(sim, tmp_path / "gw", store, lease_s=3) as second:
        client = openai.OpenAI(base_url=second.base_url, api_key=key, max_retries=0)
        deadline = time.monotonic() + 60  # far below the hold's 600 s time to live
        while True:
            try:
                client.chat.completions.create(**WHOLE_BALANCE)  # type: ignore[arg-type]
                break
            except openai.APIStatusError as refused:
                assert refused.status_code == 402, refused
                assert time.monotonic() < deadline, "the dead instance's hold still blocks the key"
                time.sleep(0.25)
        with admin(second) as a:
            ledger = a.get(f"/admin/keys/{key_id}/ledger").json()["data"]
            assert any("lease lapsed" in (row["note"] or "") for row in ledger), ledger
            assert a.get("/admin/audit").json()["clean"] is True


def test_an_operator_releases_a_dead_instances_holds_at_once(
    sim: SimProcess, tmp_path: Path, store: str
) -> None:
    with serve(sim, tmp_path / "gw", store, lease_s=120) as first:
        _, key = hold_whole_balance_then_kill(first)
    with serve(sim, tmp_path / "gw", store, lease_s=120) as second:
        client = openai.OpenAI(base_url=second.base_url, api_key=key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as blocked:
            client.chat.completions.create(**WHOLE_BALANCE)  # type: ignore[arg-type]
        assert blocked.value.status_code == 402
        with admin(second) as a:
            instances = a.get("/admin/instances").json()["data"]
            dead = [i for i in instances if i["holds"] == 1]
            assert len(dead) == 1 and len(instances) == 2, instances
            # Its lease has not lapsed yet (a long one): releasing needs force, and says why.
            refused = a.post(f"/admin/instances/{dead[0]['id']}/release")
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "instance_alive"
            listed = subprocess.run(
                [sys.executable, "-m", "faregate.cli.main", "credits", "instances", "-c", str(second.config)],
                env=clean_env(COLUMNS="200"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listed.returncode == 0 and dead[0]["id"] in listed.stdout, listed.stderr
            released = a.post(f"/admin/instances/{dead[0]['id']}/release", json={"force": True}).json()
            assert released["released"] == 1
        client.chat.completions.create(**WHOLE_BALANCE)  # type: ignore[arg-type]
