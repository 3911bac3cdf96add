"""Feedback scores on the shared PostgreSQL store: the same table and upsert as store/feedback.py."""

from __future__ import annotations

from typing import Any, cast

from faregate.store.feedback import Feedback, Thumb
from faregate.store.postgres.errors import unavailable_errors
from faregate.store.postgres.pool import REQUEST_READ_TIMEOUT_S, answered_within

_UPSERT = (
    "INSERT INTO feedback (request_id, key_id, created_at, score, thumb, rating, comment)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7)"
    " ON CONFLICT (request_id) DO UPDATE SET key_id = excluded.key_id, created_at = excluded.created_at,"
    " score = excluded.score, thumb = excluded.thumb, rating = excluded.rating, comment = excluded.comment"
)


class PostgresFeedbackTable:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def upsert(self, feedback: Feedback) -> None:
        """One statement: two instances scoring the same request at once leave the later score."""
        with unavailable_errors():
            await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.execute(
                    _UPSERT,
                    feedback.request_id,
                    feedback.key_id,
                    feedback.created_at,
                    feedback.score,
                    feedback.thumb,
                    feedback.rating,
                    feedback.comment,
                ),
            )

    async def get(self, request_id: str) -> Feedback | None:
        with unavailable_errors():
            row = await answered_within(
                REQUEST_READ_TIMEOUT_S,
                self._pool,
                lambda conn: conn.fetchrow(
                    "SELECT request_id, key_id, created_at, thumb, rating, comment FROM feedback"
                    " WHERE request_id = $1",
                    request_id,
                ),
            )
        if row is None:
            return None
        return Feedback(
            row[0],
            row[1],
            float(row[2]),
            cast(Thumb | None, row[3]),
            None if row[4] is None else int(row[4]),
            row[5],
        )
