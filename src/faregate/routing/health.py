"""Health per provider offer: a circuit breaker and moving latency statistics.

Kept per process for now; the breaker fails fast while open so a dead upstream
stops costing every request its timeout.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from faregate.config import BreakerSettings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class Breaker:
    settings: BreakerSettings
    state: str = CLOSED
    consecutive_failures: int = 0
    opened_at: float = 0.0
    probe_in_flight: bool = False
    recent: deque[bool] = field(default_factory=deque)
    opened_count: int = 0

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

    def record(self, ok: bool, now: float) -> None:
        self.recent.append(ok)
        while len(self.recent) > self.settings.window:
            self.recent.popleft()
        if ok:
            self.consecutive_failures = 0
            if self.state != CLOSED:
                self.state = CLOSED
                self.recent.clear()
            self.probe_in_flight = False
            return
        self.consecutive_failures += 1
        if self.state == HALF_OPEN:
            self._open(now)
            return
        failures = self.recent.count(False)
        if self.consecutive_failures >= self.settings.consecutive_failures or (
            len(self.recent) >= self.settings.min_calls
            and failures / len(self.recent) >= self.settings.error_rate
        ):
            self._open(now)

    def release_probe(self) -> None:
        """A probe that ended without a verdict (client gone, rejected as bad input)."""
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
class LatencyStats:
    """Recent latencies (ms) of successful calls, with an EWMA for cheap comparisons."""

    window: int
    samples: deque[float] = field(default_factory=deque)
    ttft: deque[float] = field(default_factory=deque)
    ewma: float | None = None
    _sorted_cache: list[float] | None = None

    def add(self, latency_ms: float, ttft_ms: float | None = None) -> None:
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
        self.breakers: dict[str, Breaker] = {}
        self.latency: dict[str, LatencyStats] = {}
        self._random = random.Random()

    def breaker(self, key: str) -> Breaker:
        found = self.breakers.get(key)
        if found is None:
            found = self.breakers[key] = Breaker(self._breaker_settings)
        return found

    def stats(self, key: str) -> LatencyStats:
        found = self.latency.get(key)
        if found is None:
            found = self.latency[key] = LatencyStats(self._window)
        return found

    def usable(self, key: str, now: float | None = None) -> bool:
        breaker = self.breakers.get(key)
        return breaker is None or breaker.would_allow(time.monotonic() if now is None else now)

    def success(self, key: str, latency_ms: float, ttft_ms: float | None = None) -> None:
        self.breaker(key).record(True, time.monotonic())
        self.stats(key).add(latency_ms, ttft_ms)

    def failure(self, key: str) -> None:
        self.breaker(key).record(False, time.monotonic())

    def error_rate(self, key: str) -> float:
        breaker = self.breakers.get(key)
        return breaker.error_rate if breaker else 0.0

    def p99(self, key: str) -> float | None:
        stats = self.latency.get(key)
        return stats.quantile(0.99) if stats else None

    def ewma(self, key: str) -> float | None:
        stats = self.latency.get(key)
        return stats.ewma if stats else None

    def pick_two(self, n: int) -> tuple[int, int]:
        first = self._random.randrange(n)
        second = self._random.randrange(n - 1)
        return first, second + (second >= first)

    def snapshot(self) -> dict[str, Any]:
        keys = sorted(set(self.breakers) | set(self.latency))
        out: dict[str, Any] = {}
        for key in keys:
            breaker = self.breakers.get(key)
            stats = self.latency.get(key)
            out[key] = {
                "breaker": breaker.state if breaker else CLOSED,
                "consecutive_failures": breaker.consecutive_failures if breaker else 0,
                "error_rate": round(breaker.error_rate, 4) if breaker else 0.0,
                "times_opened": breaker.opened_count if breaker else 0,
                "latency_ms": {
                    "ewma": round(stats.ewma, 2) if stats and stats.ewma is not None else None,
                    "p50": stats.quantile(0.5) if stats else None,
                    "p99": stats.quantile(0.99) if stats else None,
                    "samples": len(stats.samples) if stats else 0,
                },
                "ttft_ms_p50": sorted(stats.ttft)[len(stats.ttft) // 2] if stats and stats.ttft else None,
            }
        return out
