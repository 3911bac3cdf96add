"""API keys: create, list, revoke, and verify on the hot path.

A key is `fg-` (or `fg_pro_` for premium keys) followed by 40 URL-safe characters
(240 random bits). Only its SHA-256 digest is stored. A plain fast hash is the right
tool here: slow, salted hashes (bcrypt, argon2) exist to stop guessing of low-entropy
passwords, and no amount of guessing finds a 240-bit random key; a slow hash would
only add milliseconds to every request.

`verify` runs on every request, so results are cached in process for
`auth.key_cache_ttl_s`. Revoking through this process clears the cache at once. With
metering on, a key revoked by another process is refused at its next reservation (the
store checks revocation in the same atomic step) or cache hit; shared stores also broadcast the
revocation so every instance drops its cache. Otherwise it stops working within the TTL.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from faregate.errors import InvalidRequest
from faregate.store.protocols import KeyRow, KeyTable, PolicyValues

KEY_PREFIX = "fg-"
PREMIUM_KEY_PREFIX = "fg_pro_"
# token_urlsafe(30) gives 40 characters of 6 bits each.
_RANDOM_BYTES = 30
# Random characters shown after the tag in listings: enough to tell keys apart, far too few to matter.
_SHOWN_CHARS = 6
# Anything longer than this cannot be one of our keys; don't hash or cache it.
_MAX_KEY_LENGTH = 256
# Cap on remembered bad keys, so a client spraying random keys cannot grow memory without bound.
_MAX_NEGATIVE_ENTRIES = 10_000
MAX_NAME_LENGTH = 100


@dataclass(slots=True, frozen=True)
class ApiKey:
    """A key as the rest of the gateway sees it: never the raw key, never its hash."""

    id: str
    name: str
    prefix: str
    premium: bool
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def from_row(cls, row: KeyRow) -> ApiKey:
        return cls(row.id, row.name, row.prefix, row.premium, row.created_at, row.revoked_at)


def hash_key(raw: str) -> str:
    # surrogateescape: header bytes that are not UTF-8 arrive as lone surrogates (both servers
    # decode headers so); they hash as the bytes sent, matching no key, instead of failing.
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


def new_raw_key(premium: bool = False) -> str:
    return (PREMIUM_KEY_PREFIX if premium else KEY_PREFIX) + secrets.token_urlsafe(_RANDOM_BYTES)


def display_prefix(raw: str) -> str:
    tag = PREMIUM_KEY_PREFIX if raw.startswith(PREMIUM_KEY_PREFIX) else KEY_PREFIX
    return raw[: len(tag) + _SHOWN_CHARS] + "…"


def looks_like_key(raw: str) -> bool:
    return raw.startswith((KEY_PREFIX, PREMIUM_KEY_PREFIX)) and len(raw) <= _MAX_KEY_LENGTH


class KeyStore:
    """API keys over a KeyTable, with an in-process verification cache."""

    def __init__(
        self,
        table: KeyTable,
        *,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        new_key_credits_nano: int = 0,
    ) -> None:
        self._table = table
        # Credits granted to each key this store creates (accounts.new_key_credits_usd).
        self._grant = new_key_credits_nano
        self._ttl = cache_ttl_s
        self._clock = clock
        # hash -> (expires at, key). Revoked keys are never cached here.
        self._good: dict[str, tuple[float, ApiKey]] = {}
        # hash -> expires at, for hashes that are unknown or revoked.
        self._bad: dict[str, float] = {}
        # One store lookup per hash at a time: a burst of requests with the same key after the
        # cache entry expires waits for a single query instead of queueing one each.
        self._inflight: dict[str, asyncio.Task[ApiKey | None]] = {}
        # Bumped on revoke, so a lookup that started before the revoke does not re-cache its answer.
        self._generation = 0

    @property
    def grant_nano(self) -> int:
        """Credits each new key starts with unless its creator says otherwise."""
        return self._grant

    async def create(
        self,
        name: str,
        premium: bool = False,
        credits_nano: int | None = None,
        policy: PolicyValues | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its raw value. The raw value is returned once and stored nowhere.
        The key starts with `credits_nano` (default: the configured grant) and the policy columns
        in `policy` (AccountTable.set_policy's), atomically: it exists whole or not at all."""
        name = name.strip()
        if not name:
            raise InvalidRequest("a key needs a non-empty name", param="name")
        if len(name) > MAX_NAME_LENGTH:
            raise InvalidRequest(f"a key name is at most {MAX_NAME_LENGTH} characters", param="name")
        raw = new_raw_key(premium)
        row = KeyRow(
            id="key_" + secrets.token_hex(6),
            name=name,
            prefix=display_prefix(raw),
            key_hash=hash_key(raw),
            premium=premium,
            created_at=time.time(),
        )
        grant = self._grant if credits_nano is None else credits_nano
        # A clash of 48-bit ids or 240-bit keys is not worth a retry loop: DuplicateError propagates.
        if policy:
            await self._table.insert_key(row, grant, policy)
        elif grant:
            await self._table.insert_key(row, grant)
        else:
            await self._table.insert_key(row)
        self._bad.pop(row.key_hash, None)
        return ApiKey.from_row(row), raw

    async def list(self, include_revoked: bool = False) -> builtins.list[ApiKey]:
        return [ApiKey.from_row(row) for row in await self._table.list_keys(include_revoked)]

    async def revoke(self, id_or_name: str) -> bool:
        """Revoke by id, or else by name. False if no active key matches; InvalidRequest if
        several active keys share the name."""
        return await self.revoke_id(id_or_name) is not None

    async def revoke_id(self, id_or_name: str) -> str | None:
        """Like `revoke`, returning the id of the key revoked (None if none was)."""
        revoked_id: str | None = None
        if await self._table.revoke_key(id_or_name, time.time()):
            revoked_id = id_or_name
        else:
            named = [row for row in await self._table.list_keys() if row.name == id_or_name]
            if len(named) > 1:
                ids = ", ".join(row.id for row in named)
                raise InvalidRequest(
                    f"{len(named)} active keys are named {id_or_name!r} ({ids}); revoke one by id", param="id"
                )
            if named and await self._table.revoke_key(named[0].id, time.time()):
                revoked_id = named[0].id
        if revoked_id is not None:
            # Revocations are rare: dropping the whole cache is simpler than finding the hash,
            # and costs one store lookup per active key.
            self.clear_cache()
        return revoked_id

    def clear_cache(self) -> None:
        self._generation += 1
        self._good.clear()
        self._bad.clear()
        self._inflight.clear()

    def known(self, raw: str) -> ApiKey | None:
        """`verify` answered from the cache of good keys alone, without waiting: the key, or
        None when `verify` must be asked (not cached, expired from the cache, or not a key)."""
        if not looks_like_key(raw):
            return None
        good = self._good.get(hash_key(raw))
        if good is not None and good[0] > self._clock():
            return good[1]
        return None

    async def verify(self, raw: str) -> ApiKey | None:
        """The active key for this raw value, or None. Cached; never logs or keeps the raw key."""
        if not looks_like_key(raw):
            return None
        key_hash = hash_key(raw)
        now = self._clock()
        good = self._good.get(key_hash)
        if good is not None:
            if good[0] > now:
                return good[1]
            del self._good[key_hash]
        bad_until = self._bad.get(key_hash)
        if bad_until is not None:
            if bad_until > now:
                return None
            del self._bad[key_hash]
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._lookup(key_hash, self._generation))
            self._inflight[key_hash] = task
            task.add_done_callback(lambda t: self._forget_inflight(key_hash, t))
        # shield: one caller giving up (client disconnect) must not cancel the others' lookup.
        return await asyncio.shield(task)

    def _forget_inflight(self, key_hash: str, task: asyncio.Task[ApiKey | None]) -> None:
        if self._inflight.get(key_hash) is task:
            del self._inflight[key_hash]
        # Mark a failure as seen: every waiter that still cares got it through the shield already.
        if not task.cancelled():
            task.exception()

    async def _lookup(self, key_hash: str, generation: int) -> ApiKey | None:
        row = await self._table.find_key(key_hash)
        # The store matched on the hash already; compare again in constant time so that no
        # code path ever accepts a key on a timing-dependent comparison.
        key = None
        if row is not None and hmac.compare_digest(row.key_hash, key_hash) and row.revoked_at is None:
            key = ApiKey.from_row(row)
        if generation == self._generation and self._ttl > 0:
            expires = self._clock() + self._ttl
            if key is not None:
                self._good[key_hash] = (expires, key)
            else:
                if len(self._bad) >= _MAX_NEGATIVE_ENTRIES:
                    # Oldest first (dicts keep insertion order).
                    del self._bad[next(iter(self._bad))]
                self._bad[key_hash] = expires
        return key
