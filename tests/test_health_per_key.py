"""Issue #12, item 4: one API key's failures open its own breaker, never the one every key shares."""

from __future__ import annotations

import time

from faregate.config import BreakerSettings
from faregate.routing.health import CLOSED, OPEN, HealthBoard

SETTINGS = BreakerSettings(consecutive_failures=3, error_rate=0.5, window=10, min_calls=4, cooldown_s=30)


def test_one_keys_failures_stop_only_that_key() -> None:
    health = HealthBoard(SETTINGS)
    for _ in range(10):
        health.failure("sim/m", "key_a")
    now = time.monotonic()
    assert health.breaker("sim/m").state == CLOSED
    assert not health.usable("sim/m", now, "key_a") and not health.allow("sim/m", "key_a", now)
    assert health.usable("sim/m", now, "key_b") and health.allow("sim/m", "key_b", now)
    # Nor does it make the offer look dearer for anyone.
    assert health.error_rate("sim/m") == 0.0
    assert health.snapshot()["sim/m"]["keys_open"] == 1


def test_failures_from_several_keys_stop_everyone() -> None:
    health = HealthBoard(SETTINGS)
    for key in ("key_a", "key_b", "key_a"):
        health.failure("sim/m", key)
    now = time.monotonic()
    assert health.breaker("sim/m").state == OPEN
    assert not health.usable("sim/m", now, "key_c") and not health.allow("sim/m", "key_c", now)


def test_error_rate_needs_several_keys_too() -> None:
    health = HealthBoard(BreakerSettings(consecutive_failures=100, error_rate=0.5, window=10, min_calls=4))
    for _ in range(8):
        health.success("sim/m", 10.0, api_key="key_b")
        health.failure("sim/m", "key_a")
    assert health.breaker("sim/m").state == CLOSED and health.error_rate("sim/m") == 0.0
    health.failure("sim/m", "key_c")
    assert health.breaker("sim/m").state == OPEN


def test_outcomes_without_a_key_behave_as_one_breaker() -> None:
    health = HealthBoard(SETTINGS)
    for _ in range(3):
        health.failure("sim/m")
    assert health.breaker("sim/m").state == OPEN


def test_a_keys_own_breaker_probes_and_closes() -> None:
    health = HealthBoard(SETTINGS)
    for _ in range(3):
        health.failure("sim/m", "key_a")
    own = health.own_breaker("sim/m", "key_a")
    assert own is not None and own.state == OPEN
    now = own.opened_at + SETTINGS.cooldown_s + 1
    assert health.allow("sim/m", "key_a", now)
    assert not health.allow("sim/m", "key_a", now), "one probe at a time"
    health.success("sim/m", 5.0, api_key="key_a")
    assert own.state == CLOSED
