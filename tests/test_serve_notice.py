"""What `faregate serve` says at start about the API keys, in process: a store with none gets a
line saying every request will be refused and how to make one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from faregate.cli.serve import NO_KEYS, no_keys_notice
from faregate.config import load_settings
from faregate.server.app import build_gateway


async def test_a_start_on_a_store_without_keys_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    gateway = await build_gateway(load_settings(overrides={"store": {"path": str(tmp_path / "store")}}))
    try:
        assert await no_keys_notice(gateway) == NO_KEYS
        assert "faregate keys create --name NAME" in NO_KEYS and "--new-key" in NO_KEYS
        key, _ = await gateway.keys.create(name="backend")
        assert await no_keys_notice(gateway) is None
        # A revoked key serves nothing: the store has no key again.
        await gateway.backends.store.revoke_key(key.id, time.time())
        assert await no_keys_notice(gateway) == NO_KEYS
    finally:
        await gateway.close()
