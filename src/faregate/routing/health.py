"""Health per provider offer: circuit breakers and moving latency statistics.

Kept per process for now; a breaker fails fast while open so a dead upstream
stops costing every request its timeout.

No API key can open a breaker for the others. Each offer has one breaker every key shares,
and each key that saw a failure there has one of its own. A key's own breaker opens on its
own failures, exactly as a single breaker would (so a one-key deployment behaves as if there
were no distinction). The shared one counts every outcome but opens only when the failures
come from at least `shared_min_keys` keys: a failure one client can provoke at will (a blank
answer to an empty prompt, a timeout from a prompt that never ends, an upstream 5xx on one odd
input) then stops that client alone, while a dead upstream, which fails for everyone, still
stops everyone. An attempt is made only if both breakers allow it. The error rate that makes an
offer look dearer is the shared one, under the same condition. Outcomes without a key (None)
cannot be attributed and count as coming from a key of their own each.

An offer can also cool down: an upstream that answers "no capacity" (a 429 rate limit, a 503, a
529) with a Retry-After longer than the gateway waits out (`max_retry_after_s`) has said when it
will have room, so until then the offer is tried after every other candidate of a request, not
before them (the attempt loop). Its scope is the breakers': the key that was told so, and every key
once `shared_min_keys` keys are cooling at once; bounded by the breaker's cool-down; ended early by
a success. Nothing cooling costs the hot path one test of an empty dict.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from faregate.config import BreakerSettings
from faregate.errors import OVERLOADED_STATUSES, UpstreamFailure

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Keys' own breakers kept per process (least recently used dropped beyond this).
MAX_KEY_BREAKERS = 10_000


def told_to_wait(failure: UpstreamFailure, max_retry_after_s: float) -> bool:
    """Did the upstream say it has no room (a rate limit, a 503 or 529) for longer than the
    gateway waits (`max_retry_after_s`) before calling it again? Then its offer cools down."""
    return (
        failure.retry_after is not None
        and failure.retry_after > max_retry_after_s
        and failure.status in OVERLOADED_STATUSES
        and (failure.status != 429 or failure.kind == "rate_limited")
    )


@dataclass(slots=True)
class Breaker:
    settings: BreakerSettings
    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    recent: deque[bool] = field(default_factory=deque)
    opened_count: int = 0
    # Failures must come from this many keys to open it (1: any failures will do).
    min_keys: int = 1
    # The key of each outcome in `recent`, and the keys of the current run of failures (only
    # as many as `min_keys` are kept: enough to tell).
    recent_keys: deque[str | None] = field(default_factory=deque)
    run_keys: set[str] = field(default_factory=set)
    run_unattributed: int = 0

    def allow(self, now: float) -> bool:
        """May a call go through now? In half-open state, exactly one probe at a time."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and now - self.opened_at >= self.settings.cooldown_s:
            self.state = HALF_OPEN
            self.probe_in_flight = False
        if self.state == HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def would_allow(self, now: float) -> bool:
        """Like `allow` but without taking the probe slot (for planning)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            return now - self.opened_at >= self.settings.cooldown_s
        return not self.probe_in_flight

    def reopens_in(self, now: float) -> float:
        """Seconds until `allow` may let a call through: what is left of an open breaker's
        cool-down; 0 when closed, or half-open (its probe's verdict may come any moment)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.opened_at + self.settings.cooldown_s - now)

    def record(self, ok: bool, now: float, key: str | None = None) -> None:
        self.recent.append(ok)
        self.recent_keys.append(key)
        while len(self.recent) > self.settings.window:
            self.recent.popleft()
            self.recent_keys.popleft()
        if ok:
            self.consecutive_failures = 0
            self.run_keys.clear()
            self.run_unattributed = 0
            if self.state != CLOSED:
                self.state = CLOSED
                self.recent.clear()
                self.recent_keys.clear()
            self.probe_in_flight = False
            return
        self.consecutive_failures += 1
        if key is None:
            self.run_unattributed += 1
        elif len(self.run_keys) < self.min_keys:
            self.run_keys.add(key)
        if self.state == HALF_OPEN:
            self._open(now)
            return
        failures = self.recent.count(False)
        if (
            self.consecutive_failures >= self.settings.consecutive_failures
            and len(self.run_keys) + self.run_unattributed >= self.min_keys
        ) or (
            len(self.recent) >= self.settings.min_calls
            and failures / len(self.recent) >= self.settings.error_rate
            and self._enough_keys(self._failing_keys())
        ):
            self._open(now)

    def _failing_keys(self) -> Iterable[str | None]:
        return (key for ok, key in zip(self.recent, self.recent_keys, strict=True) if not ok)

    def _enough_keys(self, keys: Iterable[str | None]) -> bool:
        """Did failures come from at least `min_keys` keys? (None: a key of its own each.)"""
        if self.min_keys <= 1:
            return True
        seen: set[str] = set()
        unattributed = 0
        for key in keys:
            if key is None:
                unattributed += 1
            else:
                seen.add(key)
            if len(seen) + unattributed >= self.min_keys:
                return True
        return False

    @property
    def attributable_error_rate(self) -> float:
        """The error rate, if its failures come from enough keys to count for everyone; else 0."""
        return self.error_rate if self._enough_keys(self._failing_keys()) else 0.0

    def release_probe(self) -> None:
        """A probe that ended without a verdict (client gone, rejected as bad input)."""
        self.probe_in_flight = False

    def answering(self) -> None:
        """The upstream has begun to answer a call (a stream's first content): a half-open breaker
        closes now, not when the stream ends (minutes later, the offer refused to every other
        request meanwhile). The call's outcome is still recorded when it ends, as any call's."""
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.consecutive_failures = 0
            self.run_keys.clear()
            self.run_unattributed = 0
            self.recent.clear()
            self.recent_keys.clear()
            self.probe_in_flight = False

    def _open(self, now: float) -> None:
        self.state = OPEN
        self.opened_at = now
        self.probe_in_flight = False
        self.opened_count += 1

    @property
    def error_rate(self) -> float:
        return self.recent.count(False) / len(self.recent) if self.recent else 0.0


@dataclass(slots=True)
class Cooldown:
    """When an offer the upstream told to wait may be called first again (time.monotonic)."""

    # Per key told so (a call without a key: a token of its own, counted among the keys but
    # never looked up, as an unattributed failure counts toward a shared breaker).
    keys: dict[object, float] = field(default_factory=dict)
    # For every key: while at least `min_keys` keys are cooling.
    shared_until: float = 0.0
    # The latest any of those ends (the entry is dropped after it).
    ends: float = 0.0

    def until(self, api_key: str | None) -> float:
        own = self.keys.get(api_key, 0.0) if api_key is not None else 0.0
        return max(self.shared_until, own)

    def tell(self, token: object, until: float, now: float, min_keys: int) -> None:
        """`token`'s key was told to wait until `until`: the upstream's latest word, so it
        replaces an earlier one, longer or shorter."""
        for told, ends in list(self.keys.items()):
            if ends <= now:
                del self.keys[told]
        self.keys.pop(token, None)
        self.keys[token] = until
        while len(self.keys) > MAX_KEY_BREAKERS:
            del self.keys[next(iter(self.keys))]  # the one told first
        if len(self.keys) >= min_keys:
            self.shared_until = heapq.nlargest(min_keys, self.keys.values())[-1]
        self.ends = max(self.ends, until)

    def keys_cooling(self, now: float) -> int:
        return sum(1 for until in self.keys.values() if until > now)


@dataclass(slots=True)
class LatencyStats:
    """Recent latencies (ms) of successful calls, with an EWMA for cheap comparisons.

    Figures older than `stale_after_s` (the breaker's cool-down) say nothing about now: routing
    reads them as unknown (`fresh`), and the next call starts them afresh. An offer demoted for
    its latency is called only when the ones before it fail, so without this its figures would
    never be measured again, and one slow spell would demote it for as long as the process runs."""

    window: int
    stale_after_s: float = math.inf
    samples: deque[float] = field(default_factory=deque)
    ttft: deque[float] = field(default_factory=deque)
    ewma: float | None = None
    # When the last sample came (time.monotonic).
    last_at: float = 0.0
    _sorted_cache: list[float] | None = None

    def fresh(self, now: float) -> bool:
        return bool(self.samples) and now - self.last_at <= self.stale_after_s

    def add(self, latency_ms: float, ttft_ms: float | None = None, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        if self.samples and not self.fresh(moment):
            self.samples.clear()
            self.ttft.clear()
            self.ewma = None
        self.last_at = moment
        self.samples.append(latency_ms)
        if len(self.samples) > self.window:
            self.samples.popleft()
        if ttft_ms is not None:
            self.ttft.append(ttft_ms)
            if len(self.ttft) > self.window:
                self.ttft.popleft()
        self.ewma = latency_ms if self.ewma is None else 0.8 * self.ewma + 0.2 * latency_ms
        self._sorted_cache = None

    def quantile(self, q: float) -> float | None:
        if not self.samples:
            return None
        if self._sorted_cache is None:
            self._sorted_cache = sorted(self.samples)
        data = self._sorted_cache
        return data[min(len(data) - 1, int(q * len(data)))]


class HealthBoard:
    """Breakers and latency per offer key (`provider/model`)."""

    def __init__(self, breaker: BreakerSettings, latency_window: int = 200) -> None:
        self._breaker_settings = breaker
        self._window = latency_window
        # The shared breaker of each offer, and each key's own (offer, key) -> breaker.
        self.breakers: dict[str, Breaker] = {}
        self.key_breakers: OrderedDict[tuple[str, str], Breaker] = OrderedDict()
        self.latency: dict[str, LatencyStats] = {}
        # Offers an upstream told to wait (Cooldown); empty, the usual case, when none is.
        self.cooling: dict[str, Cooldown] = {}
        self._random = random.Random()

    def breaker(self, key: str) -> Breaker:
        """The shared breaker of an offer (`provider/model`)."""
        found = self.breakers.get(key)
        if found is None:
            found = self.breakers[key] = Breaker(
                self._breaker_settings, min_keys=self._breaker_settings.shared_min_keys
            )
        return found

    def own_breaker(self, key: str, api_key: str | None, create: bool = False) -> Breaker | None:
        """An API key's own breaker for an offer (made on its first failure)."""
        if api_key is None:
            return None
        slot = (key, api_key)
        found = self.key_breakers.get(slot)
        if found is not None:
            self.key_breakers.move_to_end(slot)
        elif create:
            found = self.key_breakers[slot] = Breaker(self._breaker_settings)
            if len(self.key_breakers) > MAX_KEY_BREAKERS:
                self.key_breakers.popitem(last=False)
        return found

    def allow(self, key: str, api_key: str | None, now: float) -> bool:
        """May this key call the offer now? Both breakers must allow it; a half-open one gives
        its one probe slot (the caller then records the outcome or releases the probe)."""
        own = self.own_breaker(key, api_key)
        if own is not None and not own.would_allow(now):
            return False
        if not self.breaker(key).allow(now):
            return False
        return own is None or own.allow(now)

    def release_probe(self, key: str, api_key: str | None = None) -> None:
        """A call that ended without a verdict (client gone, rejected as bad input)."""
        self.breaker(key).release_probe()
        own = self.own_breaker(key, api_key)
        if own is not None:
            own.release_probe()

    def answering(self, key: str, api_key: str | None = None) -> None:
        """A call to the offer has begun to answer (Breaker.answering): its half-open breakers close."""
        breaker = self.breakers.get(key)
        if breaker is not None and breaker.state == HALF_OPEN:
            breaker.answering()
        own = self.key_breakers.get((key, api_key)) if api_key is not None else None
        if own is not None and own.state == HALF_OPEN:
            own.answering()

    def stats(self, key: str) -> LatencyStats:
        found = self.latency.get(key)
        if found is None:
            found = self.latency[key] = LatencyStats(self._window, self._breaker_settings.cooldown_s)
        return found

    def usable(self, key: str, now: float | None = None, api_key: str | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        breaker = self.breakers.get(key)
        if breaker is not None and not breaker.would_allow(moment):
            return False
        own = self.own_breaker(key, api_key)
        return own is None or own.would_allow(moment)

    def reopens_in(self, key: str, now: float, api_key: str | None = None) -> float:
        """Seconds until this key may call the offer again as far as its breakers go (both must
        allow it): for the Retry-After of a request every breaker refused."""
        breaker = self.breakers.get(key)
        own = self.own_breaker(key, api_key)
        return max(
            breaker.reopens_in(now) if breaker is not None else 0.0,
            own.reopens_in(now) if own is not None else 0.0,
        )

    def cool(self, key: str, api_key: str | None, seconds: float, now: float | None = None) -> None:
        """The upstream told this key to leave the offer alone for `seconds` (its Retry-After):
        at most the breaker's cool-down, after which one call finds out whether it has room."""
        seconds = min(seconds, self._breaker_settings.cooldown_s)
        if seconds <= 0:
            return
        moment = time.monotonic() if now is None else now
        entry = self.cooling.get(key)
        if entry is None:
            entry = self.cooling[key] = Cooldown()
        token: object = api_key if api_key is not None else object()
        entry.tell(token, moment + seconds, moment, self._breaker_settings.shared_min_keys)

    def cools(self, key: str, api_key: str | None, now: float) -> bool:
        """Is this key to leave the offer alone for now (its own cool-down, or everyone's)?"""
        entry = self.cooling.get(key)
        if entry is None:
            return False
        if now < entry.until(api_key):
            return True
        if now >= entry.ends:
            del self.cooling[key]  # over for every key: nothing to look up any more
        return False

    def _warm(self, key: str, api_key: str | None) -> None:
        """A call served: the offer has room again, for everyone as for this key (as a success
        closes the shared breaker); other keys' own words stand."""
        entry = self.cooling.get(key)
        if entry is None:
            return
        entry.shared_until = 0.0
        entry.keys.pop(api_key, None)
        if not entry.keys:
            del self.cooling[key]

    def success(
        self, key: str, latency_ms: float, ttft_ms: float | None = None, api_key: str | None = None
    ) -> None:
        now = time.monotonic()
        self.breaker(key).record(True, now, api_key)
        own = self.own_breaker(key, api_key)
        if own is not None:
            own.record(True, now, api_key)
        self.stats(key).add(latency_ms, ttft_ms, now)
        if self.cooling:
            self._warm(key, api_key)

    def failure(self, key: str, api_key: str | None = None) -> None:
        now = time.monotonic()
        self.breaker(key).record(False, now, api_key)
        own = self.own_breaker(key, api_key, create=True)
        if own is not None:
            own.record(False, now, api_key)

    def error_rate(self, key: str) -> float:
        """The shared error rate, counted only when failures come from enough keys."""
        breaker = self.breakers.get(key)
        return breaker.attributable_error_rate if breaker else 0.0

    def keys_open(self, key: str, now: float) -> int:
        return sum(
            1 for (offer, _), b in self.key_breakers.items() if offer == key and not b.would_allow(now)
        )

    def p99(self, key: str, now: float | None = None) -> float | None:
        """The offer's moving p99 for routing: None when unknown or stale (LatencyStats.fresh)."""
        stats = self.latency.get(key)
        if stats is None or not stats.fresh(time.monotonic() if now is None else now):
            return None
        return stats.quantile(0.99)

    def ewma(self, key: str, now: float | None = None) -> float | None:
        """The offer's latency EWMA for routing: None when unknown or stale (LatencyStats.fresh)."""
        stats = self.latency.get(key)
        if stats is None or not stats.fresh(time.monotonic() if now is None else now):
            return None
        return stats.ewma

    def pick_two(self, n: int) -> tuple[int, int]:
        first = self._random.randrange(n)
        second = self._random.randrange(n - 1)
        return first, second + (second >= first)

    def snapshot(self) -> dict[str, Any]:
        keys = sorted(set(self.breakers) | set(self.latency) | set(self.cooling))
        now = time.monotonic()
        out: dict[str, Any] = {}
        for key in keys:
            breaker = self.breakers.get(key)
            stats = self.latency.get(key)
            cooling = self.cooling.get(key)
            out[key] = {
                "breaker": breaker.state if breaker else CLOSED,
                "consecutive_failures": breaker.consecutive_failures if breaker else 0,
                "error_rate": round(breaker.error_rate, 4) if breaker else 0.0,
                "times_opened": breaker.opened_count if breaker else 0,
                # API keys whose own breaker for this offer is open now (their failures only).
                "keys_open": self.keys_open(key, now),
                # Seconds until every key may call it first again (an upstream's Retry-After, told
                # to `shared_min_keys` keys), and the keys told so whose own wait still runs.
                "cooling_s": round(max(0.0, cooling.shared_until - now), 3) if cooling else 0.0,
                "keys_cooling": cooling.keys_cooling(now) if cooling else 0,
                "latency_ms": {
                    "ewma": round(stats.ewma, 2) if stats and stats.ewma is not None else None,
                    "p50": stats.quantile(0.5) if stats else None,
                    "p99": stats.quantile(0.99) if stats else None,
                    "samples": len(stats.samples) if stats else 0,
                },
                "ttft_ms_p50": sorted(stats.ttft)[len(stats.ttft) // 2] if stats and stats.ttft else None,
            }
        return out
