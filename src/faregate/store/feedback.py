"""A feedback score: one per request (a later score replaces it), joined to records on request_id.

The value type both stores keep (store/sqlite/feedback.py, store/postgres/feedback.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Thumb = Literal["up", "down"]


@dataclass(slots=True, frozen=True)
class Feedback:
    request_id: str
    key_id: str
    created_at: float
    thumb: Thumb | None = None
    rating: int | None = None  # 1..5
    comment: str | None = None

    @property
    def score(self) -> float:
        """Satisfaction on 0..100, so thumbs and ratings average together: up = 100, down = 0,
        a rating r = (r - 1) * 25."""
        if self.rating is not None:
            return (self.rating - 1) * 25.0
        return 100.0 if self.thumb == "up" else 0.0
