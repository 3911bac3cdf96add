"""Versioned schema migrations for the SQLite store (store/schema.py says how they apply)."""

from __future__ import annotations

from faregate.store.schema import Migration

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
    Migration(
        5,
        "accounts: a balance and spending policy per key",
        (
            # Money in whole nano-dollars (see accounts.money). NULL limits: the tier's default;
            # budgets: a JSON array of [period, window, limit_nano].
            """
            CREATE TABLE accounts (
                key_id              TEXT PRIMARY KEY REFERENCES api_keys (id),
                balance_nano        INTEGER NOT NULL DEFAULT 0,
                requests_per_minute INTEGER,
                tokens_per_minute   INTEGER,
                max_request_nano    INTEGER,
                budgets             TEXT NOT NULL DEFAULT '[]',
                updated_at          REAL NOT NULL
            )
            """,
            "INSERT INTO accounts (key_id, balance_nano, updated_at) SELECT id, 0, created_at FROM api_keys",
        ),
    ),
    Migration(
        6,
        "ledger: every balance change is a row",
        (
            # entry_id makes each change idempotent: <hold>:res, <hold>:close (settled, released or
            # expired: exactly one), <hold>:late (charged after the hold was gone), or a random id.
            """
            CREATE TABLE ledger (
                id          INTEGER PRIMARY KEY,
                entry_id    TEXT NOT NULL UNIQUE,
                key_id      TEXT NOT NULL,
                kind        TEXT NOT NULL
                            CHECK (kind IN ('grant', 'topup', 'reservation', 'settlement', 'release')),
                amount_nano INTEGER NOT NULL,
                cost_nano   INTEGER,
                hold_id     TEXT,
                request_id  TEXT,
                hour        INTEGER,
                created_at  REAL NOT NULL,
                note        TEXT
            )
            """,
            "CREATE INDEX ledger_key ON ledger (key_id, id)",
            "CREATE INDEX ledger_request ON ledger (request_id)",
        ),
    ),
    Migration(
        7,
        "holds: reservations not yet settled or released",
        (
            """
            CREATE TABLE holds (
                hold_id     TEXT PRIMARY KEY,
                key_id      TEXT NOT NULL,
                request_id  TEXT,
                amount_nano INTEGER NOT NULL,
                tokens      INTEGER NOT NULL,
                hour        INTEGER NOT NULL,
                created_at  REAL NOT NULL,
                expires_at  REAL NOT NULL
            )
            """,
            "CREATE INDEX holds_key ON holds (key_id, expires_at)",
            "CREATE INDEX holds_expires ON holds (expires_at)",
        ),
    ),
    Migration(
        8,
        "hourly spend per key, for budgets",
        (
            """
            CREATE TABLE spend_buckets (
                key_id     TEXT NOT NULL,
                hour       INTEGER NOT NULL,
                spent_nano INTEGER NOT NULL,
                PRIMARY KEY (key_id, hour)
            ) WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        9,
        "the ledger is append-only",
        (
            # A correction is a new row, never an edit: the audit can then trust every old row.
            """
            CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
            """,
            """
            CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
            BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END
            """,
        ),
    ),
    Migration(
        10,
        "feedback and dashboard indexes",
        (
            # One score per request (a later one replaces it); joins request_records on request_id.
            # No foreign key: records may be pruned without touching the scores, and the writer
            # may not have flushed a record yet when its feedback arrives.
            """
            CREATE TABLE feedback (
                id          INTEGER PRIMARY KEY,
                request_id  TEXT NOT NULL UNIQUE,
                key_id      TEXT NOT NULL,
                created_at  REAL NOT NULL,
                score       REAL NOT NULL,
                thumb       TEXT,
                rating      INTEGER,
                comment     TEXT
            )
            """,
            "CREATE INDEX feedback_created_at ON feedback (created_at)",
            # Covers every column the dashboard aggregates, so a time-range scan reads this index
            # alone (about a fifth of the table's bytes: no attempts JSON, ids or error text).
            """
            CREATE INDEX request_records_dashboard ON request_records (
                created_at, model_used, model_requested, provider, route, key_id, status, cache_status,
                cost_nanousd, baseline_cost_nanousd, prompt_tokens, completion_tokens, latency_ms,
                ttft_ms, empty_response
            )
            """,
            # The few requests whose attempts say something (a retry, a fallback, a failure): the
            # reliability queries read the attempts JSON of these rows only.
            """
            CREATE INDEX request_records_eventful ON request_records (created_at)
            WHERE json_array_length(attempts) > 1 OR status >= 500
            """,
            # Hourly sums per model, provider, route and key ('' as dim: all requests), kept up to
            # date by faregate.store.sqlite.rollup; the dashboard reads whole hours from here and only the
            # edges of a range (and records not rolled up yet) from request_records.
            """
            CREATE TABLE rollup_hourly (
                dim                  TEXT NOT NULL,
                value                TEXT NOT NULL,
                bucket               INTEGER NOT NULL,
                requests             INTEGER NOT NULL,
                errors               INTEGER NOT NULL,
                client_errors        INTEGER NOT NULL,
                budget_refusals      INTEGER NOT NULL,
                rate_limited         INTEGER NOT NULL,
                cost_nanousd         INTEGER NOT NULL,
                baseline_nanousd     INTEGER NOT NULL,
                prompt_tokens        INTEGER NOT NULL,
                completion_tokens    INTEGER NOT NULL,
                cache_lookups        INTEGER NOT NULL,
                cache_hits           INTEGER NOT NULL,
                semantic_hits        INTEGER NOT NULL,
                cache_saved_nanousd  INTEGER NOT NULL,
                empty_responses      INTEGER NOT NULL,
                fallbacks            INTEGER NOT NULL,
                retried              INTEGER NOT NULL,
                PRIMARY KEY (dim, value, bucket)
            )
            """,
            # Failed upstream attempts per hour and offer: which provider is failing, and how.
            """
            CREATE TABLE rollup_failures_hourly (
                provider  TEXT NOT NULL,
                model     TEXT NOT NULL,
                outcome   TEXT NOT NULL,
                bucket    INTEGER NOT NULL,
                attempts  INTEGER NOT NULL,
                PRIMARY KEY (provider, model, outcome, bucket)
            )
            """,
            # How far (by request_records.id) the rollup has read.
            "CREATE TABLE rollup_state (name TEXT PRIMARY KEY, last_id INTEGER NOT NULL)",
        ),
    ),
    Migration(
        11,
        "holds belong to an instance whose lease says it is alive",
        (
            "ALTER TABLE holds ADD COLUMN instance_id TEXT",
            """
            CREATE TABLE instances (
                instance_id TEXT PRIMARY KEY,
                started_at  REAL NOT NULL,
                lease_until REAL NOT NULL,
                host        TEXT NOT NULL,
                pid         INTEGER NOT NULL
            )
            """,
            "CREATE INDEX holds_instance ON holds (instance_id)",
        ),
    ),
    Migration(
        12,
        "request records say the wire a request came in on (chat, messages, responses, embeddings)",
        ("ALTER TABLE request_records ADD COLUMN wire TEXT NOT NULL DEFAULT 'chat'",),
    ),
    Migration(
        13,
        "verifications and calibration state (quality targets)",
        (
            # One row per shadow verification (quality/verifier.py); cost in nano-USD.
            """
            CREATE TABLE verifications (
                id              INTEGER PRIMARY KEY,
                request_id      TEXT NOT NULL,
                scope           TEXT NOT NULL,
                kind            TEXT NOT NULL,
                label_kind      TEXT NOT NULL,
                decision        TEXT NOT NULL,
                rank            REAL NOT NULL,
                probability     REAL NOT NULL,
                comparator      TEXT NOT NULL,
                outcome         TEXT NOT NULL,
                reference_model TEXT,
                cost_nanousd    INTEGER NOT NULL,
                created_at      REAL NOT NULL
            )
            """,
            "CREATE INDEX verifications_scope_created ON verifications (scope, created_at)",
            # The calibration per route or cache scope; `version` for compare-and-set.
            """
            CREATE TABLE calibration_state (
                scope      TEXT PRIMARY KEY,
                version    INTEGER NOT NULL,
                state      TEXT NOT NULL,
                updated_at REAL NOT NULL
            )
            """,
        ),
    ),
    Migration(
        14,
        "rate-limit buckets and key events shared by the worker processes of one store",
        (
            # One row per key: its requests and tokens buckets (level NULL: no such limit yet).
            """
            CREATE TABLE rate_buckets (
                key_id     TEXT PRIMARY KEY,
                req_level  REAL,
                req_at     REAL NOT NULL,
                tok_level  REAL,
                tok_at     REAL NOT NULL
            )
            """,
            # A key's policy changed or it was revoked: the other processes drop what they cache.
            """
            CREATE TABLE key_events (
                seq     INTEGER PRIMARY KEY AUTOINCREMENT,
                key_id  TEXT NOT NULL,
                at      REAL NOT NULL
            )
            """,
        ),
    ),
    Migration(
        15,
        "the dashboard's sums per wire: the covering index holds the wire; the rollup is rebuilt",
        (
            "DROP INDEX request_records_dashboard",
            """
            CREATE INDEX request_records_dashboard ON request_records (
                created_at, model_used, model_requested, provider, route, key_id, status, cache_status,
                cost_nanousd, baseline_cost_nanousd, prompt_tokens, completion_tokens, latency_ms,
                ttft_ms, empty_response, wire
            )
            """,
            # Its hours have no per-wire sums: the rollup starts again from the first record
            # (in chunks, as on a new store; the queries read what is not rolled up from records).
            "DELETE FROM rollup_hourly",
            "DELETE FROM rollup_failures_hourly",
            "DELETE FROM rollup_state",
        ),
    ),
    Migration(
        16,
        "request records carry their attempts' count, fallback and retry (the rollup parsed the JSON)",
        (
            # Worked out when the record is made (store/rows.py: attempt_summary); the rollup and
            # the reliability queries read these instead of the attempts JSON of every record.
            "ALTER TABLE request_records ADD COLUMN attempt_count INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE request_records ADD COLUMN fell_back INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE request_records ADD COLUMN retried INTEGER NOT NULL DEFAULT 0",
            # The rows written before: filled from their JSON by the SQL the rollup used until now.
            "UPDATE request_records SET attempt_count = json_array_length(attempts) WHERE attempts <> '[]'",
            """
            UPDATE request_records SET
            fell_back = CASE WHEN EXISTS (SELECT 1 FROM json_each(attempts) AS f
                WHERE json_extract(f.value, '$.outcome') NOT IN ('ok', 'escalated', 'judge')
                AND json_extract(f.value, '$.provider') || '/' || json_extract(f.value, '$.model')
                <> json_extract(attempts, '$[#-1].provider') || '/' || json_extract(attempts, '$[#-1].model'))
                THEN 1 ELSE 0 END,
            retried = CASE WHEN EXISTS (SELECT 1 FROM json_each(attempts) AS a
                JOIN json_each(attempts) AS b ON b.key = a.key + 1
                WHERE json_extract(a.value, '$.outcome') NOT IN ('ok', 'escalated', 'judge')
                AND json_extract(a.value, '$.provider') = json_extract(b.value, '$.provider')
                AND json_extract(a.value, '$.model') = json_extract(b.value, '$.model'))
                THEN 1 ELSE 0 END
            WHERE attempt_count > 1
            """,
            # The few eventful records, now found without parsing JSON (rollup.py's EVENTFUL word for word).
            "DROP INDEX request_records_eventful",
            """
            CREATE INDEX request_records_eventful ON request_records (created_at)
            WHERE attempt_count > 1 OR status >= 500
            """,
        ),
    ),
    Migration(
        17,
        "the verification caps' holds and daily spend, apart from the calibration state",
        (
            # A verification's worst case admitted against its scope's daily cap, until settled
            # (quality/spend.py; amount: exact decimal text). The holds calibration_state kept
            # before are no longer read (a verification in flight across the upgrade is charged,
            # its hold not counted); the day's spend it kept still bounds admissions that day.
            """
            CREATE TABLE verification_holds (
                hold_id     TEXT PRIMARY KEY,
                scope       TEXT NOT NULL,
                instance_id TEXT NOT NULL,
                amount      TEXT NOT NULL,
                day         TEXT NOT NULL,
                created_at  REAL NOT NULL
            )
            """,
            "CREATE INDEX verification_holds_scope ON verification_holds (scope)",
            # The real cost charged per scope and UTC day (exact decimal text).
            """
            CREATE TABLE verification_spend (
                scope TEXT NOT NULL,
                day   TEXT NOT NULL,
                spent TEXT NOT NULL,
                PRIMARY KEY (scope, day)
            )
            """,
        ),
    ),
    Migration(
        18,
        "no index of its own on request_records.created_at",
        (
            # The dashboard's covering index begins with created_at and serves every range and
            # order on it; a second index of created_at alone cost each record's insert a B-tree
            # more (bench/README.md, "Request ids in time order").
            "DROP INDEX IF EXISTS request_records_created_at",
        ),
    ),
    Migration(
        19,
        "alert_states: the alerts the webhook was told are firing",
        (
            # One row per firing alert of the process that posts (store/alert_memory.py): alert is
            # the JSON pair [rule, subject], state what was posted (JSON). A restart reads it back.
            """
            CREATE TABLE alert_states (
                alert TEXT PRIMARY KEY,
                state TEXT NOT NULL
            )
            """,
        ),
    ),
    Migration(
        20,
        "the fallback and retry sums are of the requests taken on: the rollup is rebuilt",
        (
            # Hours rolled up before store/record_sums.py's EVENT_COLUMNS left 4xx refusals out
            # count them in fallbacks and retried, and a range read them beside hours that do not.
            # No sum can be corrected in place (a row does not say which version added to it): the
            # rollup starts again from the first record, as in migration 15.
            "DELETE FROM rollup_hourly",
            "DELETE FROM rollup_failures_hourly",
            "DELETE FROM rollup_state",
        ),
    ),
    Migration(
        21,
        "verification_spend.paused_cap: a day paused by its verification cap, apart from its spend",
        (
            # The cap a refusal paused the day at (exact decimal text; NULL: not paused). The spend
            # was marked as the whole cap instead, so a cap raised that day left the raised cap
            # less the old one, not less the real spend. Days marked so still read as spent.
            "ALTER TABLE verification_spend ADD COLUMN paused_cap TEXT",
        ),
    ),
    Migration(
        22,
        "verifications.verification_id: a row written again is written once",
        (
            # Each row's own id (quality's VerificationRow), unique: a row whose insert committed
            # but whose answer was lost is written again and must not count its cost twice. Rows
            # from before have none (NULL: never equal to another).
            "ALTER TABLE verifications ADD COLUMN verification_id TEXT",
            "CREATE UNIQUE INDEX verifications_verification_id ON verifications (verification_id)",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version
