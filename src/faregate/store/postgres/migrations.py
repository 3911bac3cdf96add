"""Versioned schema migrations for the PostgreSQL store (its own numbering, apart from SQLite's).

Append only, like store.sqlite.migrations: a released migration is never edited. At start-up the
missing versions are applied in one transaction under an advisory lock, so instances
starting together never apply one twice. Columns mirror the SQLite store so that both
share store.rows; flags are INTEGER 0/1 for the same reason.
"""

from __future__ import annotations

from faregate.store.schema import Migration

PG_MIGRATIONS: tuple[Migration, ...] = (
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
                premium     BOOLEAN NOT NULL DEFAULT FALSE,
                created_at  DOUBLE PRECISION NOT NULL,
                revoked_at  DOUBLE PRECISION
            )
            """,
            "CREATE INDEX api_keys_name ON api_keys (name)",
        ),
    ),
    Migration(
        2,
        "request records",
        (
            """
            CREATE TABLE request_records (
                id                    BIGSERIAL PRIMARY KEY,
                request_id            TEXT NOT NULL UNIQUE,
                created_at            DOUBLE PRECISION NOT NULL,
                key_id                TEXT,
                model_requested       TEXT NOT NULL,
                model_used            TEXT,
                provider              TEXT,
                status                INTEGER NOT NULL,
                stream                INTEGER NOT NULL,
                prompt_tokens         BIGINT NOT NULL,
                completion_tokens     BIGINT NOT NULL,
                cost_usd              TEXT NOT NULL,
                cost_nanousd          BIGINT NOT NULL,
                usage_estimated       INTEGER NOT NULL,
                latency_ms            DOUBLE PRECISION NOT NULL,
                ttft_ms               DOUBLE PRECISION,
                empty_response        INTEGER NOT NULL,
                error                 TEXT,
                attempts              TEXT NOT NULL,
                route                 TEXT,
                baseline_cost_usd     TEXT NOT NULL DEFAULT '0',
                baseline_cost_nanousd BIGINT NOT NULL DEFAULT 0,
                cache_status          TEXT NOT NULL DEFAULT 'bypass'
            )
            """,
            "CREATE INDEX request_records_created_at ON request_records (created_at)",
            "CREATE INDEX request_records_key_id ON request_records (key_id)",
            "CREATE INDEX request_records_model_used ON request_records (model_used)",
            "CREATE INDEX request_records_route ON request_records (route)",
        ),
    ),
    Migration(
        3,
        "accounts, the ledger and open holds",
        (
            """
            CREATE TABLE accounts (
                key_id              TEXT PRIMARY KEY REFERENCES api_keys (id),
                balance_nano        BIGINT NOT NULL DEFAULT 0,
                requests_per_minute INTEGER,
                tokens_per_minute   INTEGER,
                max_request_nano    BIGINT,
                budgets             TEXT NOT NULL DEFAULT '[]',
                updated_at          DOUBLE PRECISION NOT NULL
            )
            """,
            # epoch: the Redis data set a reservation was made in (see store.redis.ledger).
            """
            CREATE TABLE ledger (
                id          BIGSERIAL PRIMARY KEY,
                entry_id    TEXT NOT NULL UNIQUE,
                key_id      TEXT NOT NULL,
                kind        TEXT NOT NULL
                            CHECK (kind IN ('grant', 'topup', 'reservation', 'settlement', 'release')),
                amount_nano BIGINT NOT NULL,
                cost_nano   BIGINT,
                hold_id     TEXT,
                request_id  TEXT,
                hour        BIGINT,
                created_at  DOUBLE PRECISION NOT NULL,
                note        TEXT,
                epoch       TEXT
            )
            """,
            "CREATE INDEX ledger_key ON ledger (key_id, id)",
            "CREATE INDEX ledger_key_hour ON ledger (key_id, hour) WHERE hour IS NOT NULL",
            # Reservations whose close has not reached PostgreSQL yet: the candidates to release
            # if the Redis data set they live in is lost.
            """
            CREATE TABLE open_holds (
                hold_id     TEXT PRIMARY KEY,
                key_id      TEXT NOT NULL,
                amount_nano BIGINT NOT NULL,
                hour        BIGINT,
                request_id  TEXT,
                epoch       TEXT
            )
            """,
            "CREATE INDEX open_holds_key ON open_holds (key_id)",
        ),
    ),
    Migration(
        4,
        "the ledger is append-only",
        (
            """
            CREATE FUNCTION faregate_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the ledger is append-only';
            END
            $$
            """,
            """
            CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
            FOR EACH ROW EXECUTE FUNCTION faregate_ledger_append_only()
            """,
        ),
    ),
    Migration(
        5,
        "feedback, dashboard indexes and hourly rollups",
        (
            # As SQLite's migration 10: one score per request (a later one replaces it), joined to
            # request_records on request_id. No foreign key: records may be pruned without the
            # scores, and a record may not have been flushed yet when its feedback arrives.
            """
            CREATE TABLE feedback (
                id          BIGSERIAL PRIMARY KEY,
                request_id  TEXT NOT NULL UNIQUE,
                key_id      TEXT NOT NULL,
                created_at  DOUBLE PRECISION NOT NULL,
                score       DOUBLE PRECISION NOT NULL,
                thumb       TEXT,
                rating      INTEGER,
                comment     TEXT
            )
            """,
            "CREATE INDEX feedback_created_at ON feedback (created_at)",
            # Covers every column the dashboard's sums use (store/postgres/analytics.py), so a range scan
            # of request_records can skip the rows' attempts JSON.
            """
            CREATE INDEX request_records_dashboard ON request_records (created_at) INCLUDE (
                model_used, model_requested, provider, route, key_id, status, cache_status,
                cost_nanousd, baseline_cost_nanousd, prompt_tokens, completion_tokens, latency_ms,
                ttft_ms, empty_response
            )
            """,
            # The few requests with a retry, a fallback or a failure: the only ones whose attempts
            # the reliability queries parse. Its condition is postgres/rollup.py's EVENTFUL word for word.
            """
            CREATE INDEX request_records_eventful ON request_records (created_at)
            WHERE (jsonb_array_length(attempts::jsonb) > 1 OR status >= 500)
            """,
            # The hourly rollups (store/postgres/rollup.py). Records wait in rollup_pending (filled by a
            # trigger, in the transaction that writes them) until a rollup step adds them to the
            # sums and takes them out, in one transaction; so a query (one statement, one
            # snapshot) reads each record once: from the sums, or from request_records while it
            # is pending. A queue, not an id watermark: ids from a sequence do not commit in order
            # across instances. Not a flag on the record either: updating each record would write
            # it (and all its indexes) twice.
            "CREATE TABLE rollup_pending (id BIGINT PRIMARY KEY)",
            """
            CREATE FUNCTION faregate_rollup_pending() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO rollup_pending (id) VALUES (NEW.id);
                RETURN NULL;
            END
            $$
            """,
            """
            CREATE TRIGGER request_records_rollup_pending AFTER INSERT ON request_records
            FOR EACH ROW EXECUTE FUNCTION faregate_rollup_pending()
            """,
            # The records written before this migration are pending too.
            "INSERT INTO rollup_pending (id) SELECT id FROM request_records",
            """
            CREATE TABLE rollup_hourly (
                dim                  TEXT NOT NULL,
                value                TEXT NOT NULL,
                bucket               BIGINT NOT NULL,
                requests             BIGINT NOT NULL,
                errors               BIGINT NOT NULL,
                client_errors        BIGINT NOT NULL,
                budget_refusals      BIGINT NOT NULL,
                rate_limited         BIGINT NOT NULL,
                cost_nanousd         BIGINT NOT NULL,
                baseline_nanousd     BIGINT NOT NULL,
                prompt_tokens        BIGINT NOT NULL,
                completion_tokens    BIGINT NOT NULL,
                cache_lookups        BIGINT NOT NULL,
                cache_hits           BIGINT NOT NULL,
                semantic_hits        BIGINT NOT NULL,
                cache_saved_nanousd  BIGINT NOT NULL,
                empty_responses      BIGINT NOT NULL,
                fallbacks            BIGINT NOT NULL,
                retried              BIGINT NOT NULL,
                PRIMARY KEY (dim, value, bucket)
            )
            """,
            """
            CREATE TABLE rollup_failures_hourly (
                provider  TEXT NOT NULL,
                model     TEXT NOT NULL,
                outcome   TEXT NOT NULL,
                bucket    BIGINT NOT NULL,
                attempts  BIGINT NOT NULL,
                PRIMARY KEY (provider, model, outcome, bucket)
            )
            """,
        ),
    ),
    Migration(
        6,
        "request records say the wire a request came in on (chat, messages, responses, embeddings)",
        ("ALTER TABLE request_records ADD COLUMN wire TEXT NOT NULL DEFAULT 'chat'",),
    ),
    Migration(
        7,
        "verifications and calibration state (quality targets)",
        (
            """
            CREATE TABLE verifications (
                id              BIGSERIAL PRIMARY KEY,
                request_id      TEXT NOT NULL,
                scope           TEXT NOT NULL,
                kind            TEXT NOT NULL,
                label_kind      TEXT NOT NULL,
                decision        TEXT NOT NULL,
                rank            DOUBLE PRECISION NOT NULL,
                probability     DOUBLE PRECISION NOT NULL,
                comparator      TEXT NOT NULL,
                outcome         TEXT NOT NULL,
                reference_model TEXT,
                cost_nanousd    BIGINT NOT NULL,
                created_at      DOUBLE PRECISION NOT NULL
            )
            """,
            "CREATE INDEX verifications_scope_created ON verifications (scope, created_at)",
            """
            CREATE TABLE calibration_state (
                scope      TEXT PRIMARY KEY,
                version    BIGINT NOT NULL,
                state      TEXT NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )
            """,
        ),
    ),
    Migration(
        8,
        "the dashboard's sums per wire: the covering index holds the wire; the rollup is rebuilt",
        (
            "DROP INDEX request_records_dashboard",
            """
            CREATE INDEX request_records_dashboard ON request_records (created_at) INCLUDE (
                model_used, model_requested, provider, route, key_id, status, cache_status,
                cost_nanousd, baseline_cost_nanousd, prompt_tokens, completion_tokens, latency_ms,
                ttft_ms, empty_response, wire
            )
            """,
            # Its hours have no per-wire sums: every record is pending again, in the same
            # transaction, so a query reads each record once (from the sums or from the record).
            "DELETE FROM rollup_hourly",
            "DELETE FROM rollup_failures_hourly",
            "INSERT INTO rollup_pending (id) SELECT id FROM request_records ON CONFLICT DO NOTHING",
        ),
    ),
    Migration(
        9,
        "request records carry their attempts' count, fallback and retry (the rollup parsed the JSON)",
        (
            # As SQLite's migration 16: worked out when the record is made (store/rows.py:
            # attempt_summary), read by the rollup and the reliability queries instead of the JSON.
            """
            ALTER TABLE request_records ADD COLUMN attempt_count INTEGER NOT NULL DEFAULT 0,
            ADD COLUMN fell_back INTEGER NOT NULL DEFAULT 0, ADD COLUMN retried INTEGER NOT NULL DEFAULT 0
            """,
            # The rows written before: filled from their JSON by the SQL the rollup used until now.
            """
            UPDATE request_records SET attempt_count = jsonb_array_length(attempts::jsonb)
            WHERE attempts <> '[]'
            """,
            """
            UPDATE request_records SET
            fell_back = CASE WHEN EXISTS (SELECT 1 FROM jsonb_array_elements(attempts::jsonb) AS f(v)
                WHERE (f.v ->> 'outcome') NOT IN ('ok', 'escalated', 'judge')
                AND ((f.v ->> 'provider') || '/' || (f.v ->> 'model'))
                <> ((attempts::jsonb -> -1 ->> 'provider') || '/' || (attempts::jsonb -> -1 ->> 'model')))
                THEN 1 ELSE 0 END,
            retried = CASE WHEN EXISTS (SELECT 1
                FROM jsonb_array_elements(attempts::jsonb) WITH ORDINALITY AS a(v, n)
                JOIN jsonb_array_elements(attempts::jsonb) WITH ORDINALITY AS b(v, n) ON b.n = a.n + 1
                WHERE (a.v ->> 'outcome') NOT IN ('ok', 'escalated', 'judge')
                AND (a.v ->> 'provider') = (b.v ->> 'provider') AND (a.v ->> 'model') = (b.v ->> 'model'))
                THEN 1 ELSE 0 END
            WHERE attempt_count > 1
            """,
            # The few eventful records, found without parsing JSON (rollup.py's EVENTFUL word for word).
            "DROP INDEX request_records_eventful",
            """
            CREATE INDEX request_records_eventful ON request_records (created_at)
            WHERE (attempt_count > 1 OR status >= 500)
            """,
        ),
    ),
    Migration(
        10,
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
                created_at  DOUBLE PRECISION NOT NULL
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
        11,
        "no index of its own on request_records.created_at",
        (
            # The dashboard's covering index begins with created_at and serves every range and
            # order on it; a second index of created_at alone cost each record's insert a B-tree
            # more (bench/README.md, "Request ids in time order").
            "DROP INDEX IF EXISTS request_records_created_at",
        ),
    ),
    Migration(
        12,
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
        13,
        "the fallback and retry sums are of the requests taken on: the rollup is rebuilt",
        (
            # Hours rolled up before store/record_sums.py's EVENT_COLUMNS left 4xx refusals out
            # count them in fallbacks and retried, and a range read them beside hours that do not.
            # No sum can be corrected in place (a row does not say which version added to it):
            # every record is pending again, in the same transaction, as in migration 8.
            "DELETE FROM rollup_hourly",
            "DELETE FROM rollup_failures_hourly",
            "INSERT INTO rollup_pending (id) SELECT id FROM request_records ON CONFLICT DO NOTHING",
        ),
    ),
    Migration(
        14,
        "verification_spend.paused_cap: a day paused by its verification cap, apart from its spend",
        (
            # The cap a refusal paused the day at (exact decimal text; NULL: not paused). The spend
            # was marked as the whole cap instead, so a cap raised that day left the raised cap
            # less the old one, not less the real spend. Days marked so still read as spent.
            "ALTER TABLE verification_spend ADD COLUMN paused_cap TEXT",
        ),
    ),
    Migration(
        15,
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

PG_LATEST_VERSION = PG_MIGRATIONS[-1].version
