"""Feedback scores in the embedded store: one upsert per score, on the analytics connection."""

from __future__ import annotations

import sqlite3

import aiosqlite

from faregate.store.feedback import Feedback
from faregate.store.protocols import StoreUnavailable

_UPSERT = (
    "INSERT INTO feedback (request_id, key_id, created_at, score, thumb, rating, comment)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (request_id) DO UPDATE SET key_id = excluded.key_id, created_at = excluded.created_at,"
    " score = excluded.score, thumb = excluded.thumb, rating = excluded.rating, comment = excluded.comment"
)


class SQLiteFeedbackTable:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def upsert(self, feedback: Feedback) -> None:
        """One statement, so it commits on its own (the connection is in autocommit mode)."""
        try:
            await self._conn.execute(
                _UPSERT,
                (
                    feedback.request_id,
                    feedback.key_id,
                    feedback.created_at,
                    feedback.score,
                    feedback.thumb,
                    feedback.rating,
                    feedback.comment,
                ),
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def get(self, request_id: str) -> Feedback | None:
        try:
            rows = await self._conn.execute_fetchall(
                "SELECT request_id, key_id, created_at, thumb, rating, comment FROM feedback"
                " WHERE request_id = ?",
                (request_id,),
            )
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(str(exc)) from exc
        for row in rows:
            return Feedback(row[0], row[1], float(row[2]), row[3], row[4], row[5])
        return None
