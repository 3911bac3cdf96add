"""The embedded store: one SQLite database (WAL) for keys, accounts and their ledger, holds,
request records, feedback and the dashboard's rollups.

store.py (the connection, keys, records) composes accounts.py (balances and the ledger);
ledger.py makes reservations; analytics.py, rollup.py and feedback.py serve the dashboard on
connections of their own.
"""
