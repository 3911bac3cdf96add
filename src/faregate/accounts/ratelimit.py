"""Rate limits per key: requests and tokens per minute, as token buckets.

A bucket holds up to `limit` units and refills continuously at limit/60 per second, so a key
may burst to its per-minute limit and then sustains that rate. This is the model OpenAI's
headers describe: `remaining` is what the bucket holds now and `reset` is the time until it is
full again. Tokens are taken as reserved (prompt + max output) and corrected at settlement:
the unused part goes back, an overrun is taken too (the level may go below zero, so the next
requests wait for it).

`LocalRateLimiter` keeps the buckets in this process (the embedded store with one serving
process); with several worker processes on one SQLite file the buckets live in that file
(store/sqlite/rate_buckets.py), taken in the reservation's own transaction with the same
arithmetic (`take_from`); the Redis store runs it in its reservation script.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from faregate.accounts.policy import Limits

WINDOW_S = 60.0
# Buckets of keys not seen for a while are full again anyway; forgetting them bounds memory.
_MAX_KEYS = 100_000


@dataclass(slots=True)
class Bucket:
    level: float
    at: float

    def refill(self, limit: int, now: float) -> None:
        if math.isnan(self.level):
            # The key had no such limit when its buckets were made: start full.
            self.level, self.at = float(limit), now
        elif now > self.at:
            self.level = min(float(limit), self.level + (now - self.at) * limit / WINDOW_S)
            self.at = now

    def wait_for(self, units: int, limit: int) -> float:
        """Seconds until `units` are available (0 if they are now; inf if never: units > limit)."""
        if units > limit:
            return math.inf
        return max(0.0, (units - self.level) * WINDOW_S / limit)


@dataclass(slots=True, frozen=True)
class Meter:
    """One limit's state after a decision, for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True, frozen=True)
class RateState:
    requests: Meter | None
    tokens: Meter | None


def meter(bucket: Bucket, limit: int) -> Meter:
    return Meter(limit, max(0, math.floor(bucket.level)), max(0.0, (limit - bucket.level) * WINDOW_S / limit))


@dataclass(slots=True, frozen=True)
class RateRefusal:
    what: str  # "requests" | "tokens"
    limit: int
    needed: int
    retry_after_s: float
    state: RateState


def take_from(
    requests: Bucket, token_bucket: Bucket, limits: Limits, tokens: int, now: float
) -> RateState | RateRefusal:
    """Take one request and `tokens` tokens from a key's two buckets, both or neither."""
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    if rpm is not None:
        requests.refill(rpm, now)
    if tpm is not None:
        token_bucket.refill(tpm, now)
    if tpm is not None and tokens > tpm:
        # Could never fit, however long it waited: said first (request_too_large), not after a
        # Retry-After for the requests bucket that the client would wait out only to hear it then.
        return RateRefusal("tokens", tpm, tokens, math.inf, state_of(requests, token_bucket, limits))
    if rpm is not None and requests.level < 1:
        wait = requests.wait_for(1, rpm)
        return RateRefusal("requests", rpm, 1, wait, state_of(requests, token_bucket, limits))
    if tpm is not None and token_bucket.level < tokens:
        wait = token_bucket.wait_for(tokens, tpm)
        return RateRefusal("tokens", tpm, tokens, wait, state_of(requests, token_bucket, limits))
    if rpm is not None:
        requests.level -= 1
    if tpm is not None:
        token_bucket.level -= tokens
    return state_of(requests, token_bucket, limits)


def count_request_in(
    requests: Bucket, token_bucket: Bucket, limits: Limits, now: float
) -> RateState | RateRefusal:
    """A cache hit: one request from the requests bucket, nothing from the token bucket (a hit
    uses no tokens, and a token overrun does not refuse it), whose level is reported all the same:
    the answer carries the x-ratelimit-* headers a normal answer carries."""
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    if rpm is not None:
        requests.refill(rpm, now)
    if tpm is not None:
        token_bucket.refill(tpm, now)
    if rpm is not None and requests.level < 1:
        wait = requests.wait_for(1, rpm)
        return RateRefusal("requests", rpm, 1, wait, state_of(requests, token_bucket, limits))
    if rpm is not None:
        requests.level -= 1
    return state_of(requests, token_bucket, limits)


def give_back_to(
    requests: Bucket, token_bucket: Bucket, limits: Limits, units: int, tokens: int, now: float
) -> None:
    """Return units taken by `take_from` (a refused reservation), or correct tokens at settlement
    (negative: the request used more than it reserved). Onto the bucket as it is `now`: an overrun
    added to the level of long ago would vanish in the refill since (a full bucket forgave it)."""
    for bucket, limit, count in (
        (requests, limits.requests_per_minute, units),
        (token_bucket, limits.tokens_per_minute, tokens),
    ):
        if limit is not None and not math.isnan(bucket.level):
            bucket.refill(limit, now)
            bucket.level = min(float(limit), bucket.level + count)


def state_of(requests: Bucket, tokens: Bucket, limits: Limits) -> RateState:
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    return RateState(
        meter(requests, rpm) if rpm is not None else None,
        meter(tokens, tpm) if tpm is not None else None,
    )


class LocalRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[Bucket, Bucket]] = OrderedDict()

    def _pair(self, key_id: str, now: float) -> tuple[Bucket, Bucket]:
        pair = self._buckets.get(key_id)
        if pair is None:
            pair = (Bucket(math.nan, now), Bucket(math.nan, now))
            self._buckets[key_id] = pair
            if len(self._buckets) > _MAX_KEYS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key_id)
        return pair

    def take(self, key_id: str, limits: Limits, tokens: int) -> RateState | RateRefusal:
        """Take one request and `tokens` tokens, both or neither."""
        now = self._clock()
        requests, token_bucket = self._pair(key_id, now)
        return take_from(requests, token_bucket, limits, tokens, now)

    def count_request(self, key_id: str, limits: Limits) -> RateState | RateRefusal:
        """A cache hit (`count_request_in`)."""
        now = self._clock()
        requests, token_bucket = self._pair(key_id, now)
        return count_request_in(requests, token_bucket, limits, now)

    def give_back(self, key_id: str, limits: Limits, requests: int, tokens: int) -> None:
        """Return units taken by `take` (a refused reservation), or correct tokens at settlement
        (negative: the request used more than it reserved)."""
        pair = self._buckets.get(key_id)
        if pair is not None:
            give_back_to(pair[0], pair[1], limits, requests, tokens, self._clock())


# -- headers -----------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1s", "1.5s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    seconds = math.ceil(seconds * 1000) / 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def rate_headers(state: RateState | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if state is None:
        return headers
    for name, value in (("requests", state.requests), ("tokens", state.tokens)):
        if value is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(value.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(value.remaining)
            headers[f"x-ratelimit-reset-{name}"] = duration_text(value.reset_s)
    return headers
