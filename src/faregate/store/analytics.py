"""The one interface the dashboard, the feedback endpoint and the alerts read and write through.

Two implementations answer it with the same figures for the same records: SQLiteAnalytics
(store/sqlite/analytics.py, over hourly rollups) for the embedded store, and PostgresAnalytics
(store/postgres/analytics.py, over request_records) for the shared one. tests/test_analytics_parity.py
holds them to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from faregate.store.analytics_rows import (
    Dimension,
    FeedbackRow,
    GroupTotals,
    LatencyRow,
    ReliabilityRow,
    Slice,
    Totals,
    Traffic,
)
from faregate.store.feedback import Feedback

# A breakdown's limit that keeps every group (a report, an alert per key: not a top N).
EVERY_GROUP = 2**62


class Analytics(Protocol):
    async def close(self) -> None: ...

    async def totals(self, s: Slice) -> Totals: ...

    async def breakdown(self, s: Slice, by: Dimension, limit: int = 100) -> list[GroupTotals]: ...

    async def top_groups(self, s: Slice, by: Dimension, limit: int) -> tuple[list[GroupTotals], int]:
        """The breakdown's first `limit` groups, and how many groups there are in all."""
        ...

    async def series(self, s: Slice, bucket_s: int) -> list[GroupTotals]: ...

    async def latency(self, s: Slice, by: Dimension | None) -> tuple[list[LatencyRow], int]: ...

    async def reliability(self, s: Slice, by: Dimension | None) -> list[ReliabilityRow]: ...

    async def failed_attempts_by_offer(
        self, s: Slice, limit: int = 50
    ) -> list[tuple[str, str, str, int]]: ...

    async def feedback(
        self, s: Slice, by: Dimension | None, *, by_feedback_time: bool = False
    ) -> list[FeedbackRow]: ...

    async def recent(
        self,
        s: Slice,
        *,
        search: str | None = None,
        limit: int = 50,
        before: float | None = None,
        before_id: str | None = None,
    ) -> list[dict[str, Any]]: ...

    async def traffic(self, s: Slice, by: Dimension = "model") -> list[Traffic]:
        """Per group, the most expensive first: requests, cache hits, billed tokens, exact cost.
        Read from request_records (the rollups keep nano-dollars, not the exact text)."""
        ...

    async def first_record_at(self) -> float | None: ...

    async def key_labels(self, ids: Sequence[str]) -> dict[str, str]: ...

    async def resolve_keys(self, id_or_name: str) -> tuple[str, ...]: ...


class Rollup(Protocol):
    """Adds the records written since its last step to the hourly sums (store/sqlite/rollup.py,
    store/postgres/rollup.py)."""

    async def step(self) -> int:
        """Roll up one chunk; how many records it covered (0: up to date)."""
        ...


class FeedbackStore(Protocol):
    """Feedback scores, one per request (store/feedback.py, store/postgres/feedback.py)."""

    async def upsert(self, feedback: Feedback) -> None: ...

    async def get(self, request_id: str) -> Feedback | None: ...
