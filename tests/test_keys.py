from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import faregate.accounts.keys as keys_module
from faregate.accounts.keys import ApiKey, KeyStore, hash_key
from faregate.accounts.master import MIN_MASTER_KEY_CHARS, MasterKey
from faregate.config import Settings
from faregate.errors import ConfigError, InvalidRequest
from faregate.store.protocols import KeyRow
from faregate.store.sqlite.store import SQLiteStore


class CountingTable:
    """A KeyTable that counts lookups, over the real SQLite store."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.lookups = 0

    async def insert_key(self, row: KeyRow) -> None:
        await self.store.insert_key(row)

    async def find_key(self, key_hash: str) -> KeyRow | None:
        self.lookups += 1
        return await self.store.find_key(key_hash)

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRow]:
        return await self.store.list_keys(include_revoked)

    async def revoke_key(self, key_id: str, at: float) -> bool:
        return await self.store.revoke_key(key_id, at)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = await SQLiteStore.open(tmp_path)
    yield store
    await store.close()


@pytest.fixture
def table(store: SQLiteStore) -> CountingTable:
    return CountingTable(store)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(table: CountingTable, clock: Clock) -> KeyStore:
    return KeyStore(table, cache_ttl_s=5.0, clock=clock)


async def test_create_makes_random_prefixed_keys(keys: KeyStore) -> None:
    key, raw = await keys.create("ci")
    assert re.fullmatch(r"fg-[A-Za-z0-9_-]{40,}", raw)
    assert key.id.startswith("key_") and key.name == "ci" and not key.premium and not key.revoked
    assert key.prefix == raw[:9] + "…"
    assert not hasattr(key, "key_hash")

    premium, raw_premium = await keys.create("vip", premium=True)
    assert re.fullmatch(r"fg_pro_[A-Za-z0-9_-]{40,}", raw_premium)
    assert premium.premium and premium.prefix == raw_premium[:13] + "…"

    _, other = await keys.create("ci")  # names need not be unique
    assert other != raw


async def test_create_rejects_blank_name(keys: KeyStore) -> None:
    with pytest.raises(InvalidRequest):
        await keys.create("  ")


async def test_verify_accepts_own_keys_only(keys: KeyStore) -> None:
    key, raw = await keys.create("app")
    assert await keys.verify(raw) == key
    assert await keys.verify(raw + "x") is None
    assert await keys.verify("fg-" + "A" * 40) is None
    assert await keys.verify("sk-not-ours") is None
    assert await keys.verify("") is None


async def test_a_key_whose_header_bytes_are_not_utf_8_is_refused(keys: KeyStore) -> None:
    # Both servers decode header bytes that are not UTF-8 to lone surrogates ("surrogateescape").
    presented = b"fg-\xff\xfeabc".decode("utf-8", "surrogateescape")
    assert await keys.verify(presented) is None
    assert keys.known(presented) is None
    master = MasterKey("fg-master-right")
    assert not master.matches(b"fg-master-\xe9".decode("utf-8", "surrogateescape"))
    assert master.matches("fg-master-right")


async def test_only_the_hash_is_stored(tmp_path: Path, keys: KeyStore, store: SQLiteStore) -> None:
    _, raw = await keys.create("secret-holder")
    _, raw_premium = await keys.create("vip", premium=True)

    def stored_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file())

    for secret in (raw, raw_premium):
        digest = hashlib.sha256(secret.encode()).hexdigest()
        data = stored_bytes()  # database, WAL and shared-memory files while open
        assert digest.encode() in data
        assert secret.encode() not in data
        assert secret[9:].encode() not in data  # not even the part after the display prefix
    await store.close()
    data = stored_bytes()  # after the checkpoint into the main file
    assert raw.encode() not in data and raw_premium.encode() not in data


async def test_verify_compares_in_constant_time(keys: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _, raw = await keys.create("app")
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert await keys.verify(raw) is not None
    assert calls == [(hash_key(raw), hash_key(raw))]


async def test_verified_and_unknown_keys_are_cached(keys: KeyStore, table: CountingTable) -> None:
    _, raw = await keys.create("app")
    for _ in range(5):
        assert await keys.verify(raw) is not None
    assert table.lookups == 1
    unknown = "fg-" + "B" * 40
    for _ in range(5):
        assert await keys.verify(unknown) is None
    assert table.lookups == 2


async def test_concurrent_misses_share_one_lookup(keys: KeyStore, table: CountingTable) -> None:
    key, raw = await keys.create("app")
    results = await asyncio.gather(*(keys.verify(raw) for _ in range(50)))
    assert results == [key] * 50
    assert table.lookups == 1


async def test_cache_entries_expire_after_ttl(keys: KeyStore, table: CountingTable, clock: Clock) -> None:
    _, raw = await keys.create("app")
    await keys.verify(raw)
    clock.now += 4.9
    await keys.verify(raw)
    assert table.lookups == 1
    clock.now += 0.2
    await keys.verify(raw)
    assert table.lookups == 2


async def test_known_answers_from_the_cache_of_good_keys_only(
    keys: KeyStore, table: CountingTable, clock: Clock
) -> None:
    """The pipeline's no-wait path (`known`) says what `verify` would, or None to ask `verify`."""
    key, raw = await keys.create("app")
    assert keys.known(raw) is None  # not verified yet
    assert await keys.verify(raw) == key
    assert keys.known(raw) == key
    assert keys.known("fg-" + "B" * 40) is None and keys.known("not a key") is None
    clock.now += 5.1
    assert keys.known(raw) is None  # expired from the cache: `verify` looks it up again
    assert await keys.verify(raw) == key and table.lookups == 2
    assert await keys.revoke(key.id) is True
    assert keys.known(raw) is None  # a revocation here clears the cache at once


async def test_revoke_here_invalidates_cache_at_once(keys: KeyStore) -> None:
    key, raw = await keys.create("app")
    assert await keys.verify(raw) == key
    assert await keys.revoke(key.id) is True
    assert await keys.verify(raw) is None
    assert await keys.revoke(key.id) is False  # already revoked


async def test_revoke_elsewhere_applies_after_ttl(keys: KeyStore, store: SQLiteStore, clock: Clock) -> None:
    key, raw = await keys.create("app")
    assert await keys.verify(raw) == key
    other_process = KeyStore(store)
    assert await other_process.revoke(key.id)
    assert await keys.verify(raw) == key  # still cached here
    clock.now += 5.1
    assert await keys.verify(raw) is None


async def test_revoke_by_name_and_ambiguity(keys: KeyStore) -> None:
    first, raw = await keys.create("worker")
    assert await keys.revoke("worker") is True
    assert await keys.verify(raw) is None
    assert await keys.revoke("nobody") is False

    a, _ = await keys.create("twin")
    b, _ = await keys.create("twin")
    with pytest.raises(InvalidRequest, match=f"{a.id}, {b.id}"):
        await keys.revoke("twin")
    assert await keys.revoke(a.id)
    assert await keys.revoke("twin")  # now unambiguous: b
    assert [k.id for k in await keys.list()] == []
    listed = await keys.list(include_revoked=True)
    assert [k.id for k in listed] == [first.id, a.id, b.id]
    assert all(isinstance(k, ApiKey) and k.revoked for k in listed)


async def test_zero_ttl_disables_cache(table: CountingTable) -> None:
    keys = KeyStore(table, cache_ttl_s=0)
    _, raw = await keys.create("app")
    await keys.verify(raw)
    await keys.verify(raw)
    assert table.lookups == 2


async def test_negative_cache_is_bounded(keys: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "_MAX_NEGATIVE_ENTRIES", 3)
    for i in range(10):
        await keys.verify(f"fg-{i:040d}")
    assert len(keys._bad) == 3


def test_a_master_key_read_from_a_file_with_its_newline_still_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAREGATE_MASTER_KEY filled from a file (a Kubernetes secret, `$(cat key)` keeps none, `env`
    files often do) ends in a newline no header can carry: the key is the value without the
    whitespace around it, else admin was locked out with no word why."""
    settings = Settings()
    settings.store.path = str(tmp_path)
    from_file = "fg-master-from-a-file-0123456789abcdef"
    monkeypatch.setenv(settings.auth.master_key_env, from_file + "\n")
    assert MasterKey.load(settings).matches(from_file)
    monkeypatch.setenv(settings.auth.master_key_env, " \n")
    assert not MasterKey.load(settings).enabled  # blank: no master key, the admin API stays off


@pytest.mark.parametrize("raw", ["fg-master-change-me", "x" * (MIN_MASTER_KEY_CHARS - 1)])
def test_a_master_key_too_short_to_resist_guessing_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    """The master key guards every key, budget and record, and guesses at it are not limited:
    one shorter than MIN_MASTER_KEY_CHARS (a word, a placeholder) is refused at start, saying why
    and how to make one, never echoing it."""
    settings = Settings()
    settings.store.path = str(tmp_path)
    monkeypatch.setenv(settings.auth.master_key_env, raw)
    with pytest.raises(ConfigError, match=rf"\$FAREGATE_MASTER_KEY is {len(raw)} characters long") as info:
        MasterKey.load(settings)
    assert raw not in str(info.value) and f"at least {MIN_MASTER_KEY_CHARS}" in str(info.value)
    long_enough = "x" * MIN_MASTER_KEY_CHARS
    monkeypatch.setenv(settings.auth.master_key_env, f"  {long_enough}\n")
    assert MasterKey.load(settings).matches(long_enough)
    made = MasterKey().create(settings)  # the one `serve --new-key` makes is long enough
    assert len(made) >= MIN_MASTER_KEY_CHARS
