"""Bounds on what a request body may hold, checked before anything else reads it.

The gateway forwards a chat body almost untouched, but it reads a few fields itself (the token
limits, `n`, `temperature` for the cache, the `models` list) and serialises the body again on
its way upstream and into the cache. A value of the wrong type there, or JSON nested deeper
than the serialiser accepts, must be the client's error (400 naming the field), never ours
(500). Invariants: every numeric field the gateway reads is checked for type and range here;
no body deeper than `max_depth` containers gets past `check_depth`.
"""

from __future__ import annotations

from typing import Any

from faregate.errors import InvalidRequest
from faregate.types import JSON

# Sampling fields the gateway reads or that a cache key normalises: (low, high), inclusive.
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}
# Integer fields with their range (None: unbounded on that side).
INTEGER_RANGES: dict[str, tuple[int | None, int | None]] = {
    "seed": (None, None),
    "top_logprobs": (0, 20),
}


def check_depth(value: Any, max_depth: int, raw: bytes | None = None) -> None:
    """Refuse JSON nested deeper than `max_depth` objects and arrays (iterative: no recursion
    limit of our own to hit). With the `raw` text the value was parsed from, a body with no more
    than `max_depth` opening brackets in all cannot be deeper and is not walked (a bracket inside
    a string only makes the count larger): a chat request is checked in ~0.3 µs instead of ~4."""
    if raw is not None and raw.count(b"{") + raw.count(b"[") <= max_depth:
        return
    # One level at a time: ~3x faster than a stack of (container, depth) pairs on long
    # conversations (~70 µs for 100 messages with content parts, against ~210).
    level = [value] if isinstance(value, dict | list) else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            raise InvalidRequest(
                f"The request body is nested more than {max_depth} levels deep.", code="json_too_deep"
            )
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, dict | list)
        ]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Every field check_numbers reads: a body naming none of them (most do) is done in one test.
_CHECKED_NUMBERS = frozenset(NUMBER_RANGES) | frozenset(INTEGER_RANGES)


def check_numbers(body: JSON) -> None:
    """Type and range of the sampling numbers (a string temperature used to reach float())."""
    if _CHECKED_NUMBERS.isdisjoint(body):
        return
    for name, (low, high) in NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not low <= value <= high:
            raise InvalidRequest(
                f"'{name}' must be a number from {low:g} to {high:g}, got {value!r}.", param=name
            )
    for name, (ilow, ihigh) in INTEGER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (ilow is not None and value < ilow)
            or (ihigh is not None and value > ihigh)
        ):
            span = f" from {ilow} to {ihigh}" if ilow is not None and ihigh is not None else ""
            raise InvalidRequest(f"'{name}' must be an integer{span}, got {value!r}.", param=name)


def positive_int(body: JSON, name: str, high: int | None = None) -> int | None:
    """An optional positive integer field (at most `high`)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer, got {value!r}.", param=name)
    if high is not None and value > high:
        raise InvalidRequest(f"'{name}' may be at most {high} on this gateway, got {value}.", param=name)
    return value


def check_text(value: str, name: str) -> str:
    """`value`, a text the stores keep or look up (a key name, a filter, a search): never a NUL
    character, which PostgreSQL's text cannot hold (it refuses the whole statement, a 500) while
    SQLite's can; refused the same way on both stores, as a 400 naming the parameter."""
    if "\x00" in value:
        raise InvalidRequest(f"'{name}' must not contain a NUL character.", param=name)
    return value
