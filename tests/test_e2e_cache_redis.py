"""The cache shared through a real Redis: two gateway processes, and Redis dying mid-traffic."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from harness import GatewayProcess, SimProcess, create_key, run_gateway
from servers import RedisServer, redis_server, run_redis  # noqa: F401

pytestmark = pytest.mark.e2e


def ask(gateway: GatewayProcess, key: str, text: str) -> str:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-8b",
        messages=[{"role": "user", "content": text}],
        temperature=0,
        extra_body={"faregate": {"cache": {"namespace": "shared"}}},
    )
    status = str(raw.headers["x-faregate-cache"])
    if status != "semantic-hit":
        assert raw.parse().choices[0].message.content == text  # the simulator echoes
    return status


def eventually(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_two_instances_share_exact_and_semantic_entries(
    sim: SimProcess,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    config = f"cache: {{redis_url: {redis_server.new_database()!r}, semantic: {{enabled: true}}}}\n"
    with run_gateway(tmp_path / "a", sim, config) as a, run_gateway(tmp_path / "b", sim, config) as b:
        key_a, key_b = create_key(a.store_path, "a"), create_key(b.store_path, "b")
        assert ask(a, key_a, "What is the boiling point of water at sea level?") == "miss"
        assert eventually(lambda: ask(b, key_b, "What is the boiling point of water at sea level?") == "hit")
        assert ask(a, key_a, "How do I reverse a list in Python?") == "miss"
        # b learns the meaning from the Redis stream it tails, then serves the paraphrase.
        assert eventually(lambda: ask(b, key_b, "How can I reverse a Python list?") == "semantic-hit")


def test_redis_dying_mid_traffic_degrades_to_no_cache(sim: SimProcess, tmp_path: Path) -> None:
    with run_redis() as redis:
        config = f"cache: {{redis_url: 'redis://127.0.0.1:{redis.port}/0'}}\n"
        with run_gateway(tmp_path / "gw", sim, config) as gateway:
            key = create_key(gateway.store_path, "k")
            assert ask(gateway, key, "cache me while you can") == "miss"
            assert eventually(lambda: ask(gateway, key, "cache me while you can") == "hit")
            redis.process.kill()
            redis.process.wait()
            for i in range(20):
                assert ask(gateway, key, f"still answered {i}") in ("miss", "bypass")
            assert ask(gateway, key, "cache me while you can") == "miss"
