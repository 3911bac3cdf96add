"""Versioned schema migrations for the SQLite store.

Append only: a released migration is never edited, a change is a new version. At start-up
the versions missing from `schema_migrations` are applied in order, in one transaction
together with their rows in that table, so a database is never left half-migrated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Migration:
    version: int
    name: str
    # One statement per item: sqlite3 can only run a multi-statement script outside a transaction.
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "api keys",
        (
            """
            CREATE TABLE api_keys (
                id          TEXT PRIMARY KEY,
                name        TEXT NOT NULL,
                prefix      TEXT NOT NULL,
                key_hash    TEXT NOT NULL UNIQUE,
                premium     INTEGER NOT NULL DEFAULT 0,
                created_at  REAL NOT NULL,
                revoked_at  REAL
            )
            """,
            # Names need not be unique (`serve --new-key` makes a "quickstart" key at each start);
            # revoking by a name that several active keys share is refused as ambiguous.
            "CREATE INDEX api_keys_name ON api_keys (name)",
        ),
    ),
    Migration(
        2,
        "request records",
        (
            """
            CREATE TABLE request_records (
                id                INTEGER PRIMARY KEY,
                request_id        TEXT NOT NULL UNIQUE,
                created_at        REAL NOT NULL,
                key_id            TEXT,
                model_requested   TEXT NOT NULL,
                model_used        TEXT,
                provider          TEXT,
                status            INTEGER NOT NULL,
                stream            INTEGER NOT NULL,
                prompt_tokens     INTEGER NOT NULL,
                completion_tokens INTEGER NOT NULL,
                cost_usd          TEXT NOT NULL,
                cost_nanousd      INTEGER NOT NULL,
                usage_estimated   INTEGER NOT NULL,
                latency_ms        REAL NOT NULL,
                ttft_ms           REAL,
                empty_response    INTEGER NOT NULL,
                error             TEXT,
                attempts          TEXT NOT NULL
            )
            """,
            "CREATE INDEX request_records_created_at ON request_records (created_at)",
            "CREATE INDEX request_records_key_id ON request_records (key_id)",
            "CREATE INDEX request_records_model_used ON request_records (model_used)",
        ),
    ),
    Migration(
        3,
        "route on request records",
        (
            "ALTER TABLE request_records ADD COLUMN route TEXT",
            "CREATE INDEX request_records_route ON request_records (route)",
        ),
    ),
    Migration(
        4,
        "baseline cost and cache status on request records",
        (
            "ALTER TABLE request_records ADD COLUMN baseline_cost_usd TEXT NOT NULL DEFAULT '0'",
            "ALTER TABLE request_records ADD COLUMN baseline_cost_nanousd INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE request_records ADD COLUMN cache_status TEXT NOT NULL DEFAULT 'bypass'",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
