"""Repeated failures are logged once per interval (issue #12, item 5), and outages are told from bugs."""

from __future__ import annotations

import io
import logging

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
