"""Repeated failures are logged once per interval (issue #12, item 5), and outages are told from bugs."""

from __future__ import annotations

import io
import logging

import pytest

from faregate.store.outage import is_outage, outage_error
from faregate.store.protocols import StoreUnavailable
from faregate.telemetry.log_limit import RepeatFilter


def logger_with_filter(clock: list[float]) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RepeatFilter(10.0, clock=lambda: clock[0]))
    logger = logging.getLogger(f"test-repeat-{id(out)}")
    logger.propagate = False
    logger.addHandler(handler)
    return logger, out


def test_the_same_failure_is_written_once_per_interval_with_a_count() -> None:
    clock = [0.0]
    logger, out = logger_with_filter(clock)
    for i in range(500):
        try:
            raise ConnectionRefusedError("connect call failed")
        except ConnectionRefusedError:
            logger.exception("unhandled error in request %s", f"req_{i}")
    logger.warning("something else entirely")
    clock[0] = 11.0
    try:
        raise ConnectionRefusedError("connect call failed")
    except ConnectionRefusedError:
        logger.exception("unhandled error in request %s", "req_late")
    text = out.getvalue()
    assert text.count("Traceback") == 1
    assert text.count("unhandled error in request") == 2
    assert "something else entirely" in text
    assert "req_late [499 more like this in the last 11s]" in text
    assert "(ConnectionRefusedError: connect call failed)" in text


def test_outages_are_told_from_bugs() -> None:
    assert is_outage(StoreUnavailable("PostgreSQL: gone"))
    assert is_outage(ConnectionRefusedError())
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_outage(wrapped)
    assert not is_outage(KeyError("a bug"))
    error = outage_error(TimeoutError())
    assert error is not None and error.status == 503 and error.code == "store_unavailable"
    assert outage_error(ValueError()) is None


def test_asyncpg_reconnecting_its_pool_in_an_outage_logs_a_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncpg reopens a pool's connections in the background after PostgreSQL closed them and
    warns with a traceback at each failed attempt: every second at first, through an outage."""
    import faregate.store.postgres.pool  # noqa: F401  (its import sets the asyncpg.pool filter)

    caplog.set_level(logging.WARNING, logger="asyncpg.pool")
    pool_log = logging.getLogger("asyncpg.pool")
    for error in (ConnectionRefusedError("connect call failed"), ValueError("a bug")):
        try:
            raise error
        except Exception:
            pool_log.warning("Failed to restore the pool connection floor; retrying", exc_info=True)
    outage, bug = caplog.records
    assert outage.exc_info is None and outage.getMessage() == (
        "Failed to restore the pool connection floor; retrying (ConnectionRefusedError: connect call failed)"
    )
    assert bug.exc_info is not None  # not an outage: its traceback is kept


async def test_dashboard_rollups_failing_in_an_outage_log_a_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from faregate.telemetry.observability import Insights

    class DownRollup:
        async def step(self) -> bool:
            raise StoreUnavailable("PostgreSQL: [Errno 111] Connection refused")

    insights = Insights(analytics=None, feedback=None, alerts=None, rollup=DownRollup())  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="faregate.observability")
    await insights._roll_up()
    [line] = caplog.records
    assert line.exc_info is None and "Connection refused" in line.getMessage()
