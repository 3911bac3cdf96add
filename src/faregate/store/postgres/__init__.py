"""The shared durable store: PostgreSQL for keys, accounts and their ledger, request records,
feedback and the dashboard's rollups, used by every gateway instance at once.

store.py (the pool, keys, records) composes accounts.py (balances and the ledger shipped from
Redis); analytics.py, rollup.py and feedback.py serve the dashboard on a pool of their own.
Imported only when store.postgres_url is set: the embedded store never loads asyncpg.
"""
