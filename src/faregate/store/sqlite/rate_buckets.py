"""Rate-limit buckets in the SQLite file, for several gateway processes on one store.

`faregate serve --workers N` runs N processes on one embedded store; a bucket in one process's
memory would let each of them admit a key's whole per-minute limit. Here a key's two buckets are
one row, read and written inside the caller's write transaction (the reservation's own, so a
request costs no extra transaction): SQLite admits one writer at a time across processes, so a
take can never interleave with another. The arithmetic is accounts/ratelimit.py's, on the wall
clock (every process must agree on "now"). A NULL level is a bucket the key had no limit for.
"""

from __future__ import annotations

import math
import sqlite3

from faregate.accounts.ratelimit import Bucket

_SELECT = "SELECT req_level, req_at, tok_level, tok_at FROM rate_buckets WHERE key_id = ?"
_UPSERT = (
    "INSERT INTO rate_buckets (key_id, req_level, req_at, tok_level, tok_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (key_id) DO UPDATE SET req_level = excluded.req_level, req_at = excluded.req_at,"
    " tok_level = excluded.tok_level, tok_at = excluded.tok_at"
)


def _bucket(level: float | None, at: float | None, now: float) -> Bucket:
    return Bucket(math.nan if level is None else float(level), now if at is None else float(at))


def _level(bucket: Bucket) -> float | None:
    return None if math.isnan(bucket.level) else bucket.level


def load(conn: sqlite3.Connection, key_id: str, now: float) -> tuple[Bucket, Bucket]:
    """The key's request and token buckets (new ones, not yet limited, if it has none)."""
    row = conn.execute(_SELECT, (key_id,)).fetchone()
    if row is None:
        return Bucket(math.nan, now), Bucket(math.nan, now)
    return _bucket(row[0], row[1], now), _bucket(row[2], row[3], now)


def save(conn: sqlite3.Connection, key_id: str, requests: Bucket, tokens: Bucket) -> None:
    conn.execute(_UPSERT, (key_id, _level(requests), requests.at, _level(tokens), tokens.at))
