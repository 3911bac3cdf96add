"""Prices that depend on the hour of the day: DeepSeek bills twice as much at its peak hours (UTC).

A request is held and billed the price in force when it came (ChatRequest.received_at), decided
once when it is planned: its reservation and its settlement read the same price, however long it
runs or whenever a retry is made. Hours are kept as minutes of the UTC day, so the hot path reads
an int from the request's timestamp, with no datetime and no scan of the genai-prices snapshot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from faregate.types import Price

_DAY_SECONDS = 86_400
_DAY_MINUTES = 1_440
_SPAN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(slots=True, frozen=True)
class PeakPrice:
    """The price billed instead of an offer's own in some minutes of every UTC day."""

    price: Price
    # [start, end) in minutes of the UTC day; a span whose end is before its start wraps midnight.
    spans: tuple[tuple[int, int], ...]
    # As configured ("01:00-04:00"), for what the catalog lists.
    hours: tuple[str, ...]

    def in_force(self, unix_seconds: float) -> bool:
        minute = int(unix_seconds % _DAY_SECONDS) // 60
        return any(
            start <= minute < end if start < end else minute >= start or minute < end
            for start, end in self.spans
        )


def parse_hours(hours: list[str]) -> tuple[tuple[int, int], ...]:
    """Each "HH:MM-HH:MM" as minutes of the day; ValueError saying which is not one."""
    if not hours:
        raise ValueError('hours: at least one "HH:MM-HH:MM" span (UTC)')
    spans = []
    for span in hours:
        found = _SPAN.match(span)
        if found is None:
            raise ValueError(f'hours: {span!r} is not "HH:MM-HH:MM" (UTC, 00:00 to 23:59)')
        start_h, start_m, end_h, end_m = (int(g) for g in found.groups())
        start, end = start_h * 60 + start_m, end_h * 60 + end_m
        if start == end:
            raise ValueError(f"hours: {span!r} is empty")
        spans.append((start % _DAY_MINUTES, end % _DAY_MINUTES))
    return tuple(spans)
