"""Where the gateway keeps its state: one folder per backend, the shared parts at the top.

    protocols.py      what the rest of the gateway may ask of a store (keys, records, accounts)
    holds.py rows.py  reservation values; a request record as a flat SQL row (money exact)
    schema.py         a versioned migration step
    analytics.py      what the dashboard, feedback and alerts ask (Analytics, FeedbackStore)
    analytics_rows.py analytics_sql.py record_sums.py   their rows and dialect-neutral SQL
    outage.py         "a store is down right now" (503) told apart from a bug
    backends.py       open_backends: the one place that chooses embedded or shared, and closes all
    sqlite/           the embedded store: everything in one SQLite file
    postgres/         the shared durable store: keys, the ledger, records, the dashboard
    redis/            the shared live store: reservations, rate limits, the ledger's outbox

The embedded store never imports asyncpg or redis: postgres/ and redis/ load only when the
config names them.
"""
