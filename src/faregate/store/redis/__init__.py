"""The shared live store: Redis for reservations, rate limits and the outbox of ledger rows.

scripts.py holds the Lua that makes each reservation atomic across instances; ledger.py calls
it; shipper.py moves the outbox to PostgreSQL's ledger; connect.py makes clients that survive a
Redis restart. Imported only when store.redis_url is set.
"""
