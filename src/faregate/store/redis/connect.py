"""Redis clients that survive a Redis restart.

Pooled connections opened before a restart are dead afterwards; the first command on each
failed with a connection error, so after a restart about as many requests as the pool had
connections got 503. Every client the gateway makes retries a command once, on a fresh
connection, when the server closed the old one (a connection error, not a timeout: a command
that timed out may have run). The account scripts are idempotent for that one retry: a
reservation already made is not made twice (store.redis.scripts), a hold already closed is not
charged again, a credit already applied is not applied again.
"""

from __future__ import annotations

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def retry_once_on_a_fresh_connection() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
