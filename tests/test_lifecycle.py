"""One lifecycle: the exit stack closes newest first and never waits forever; the periodic-task
helper runs, wakes, survives failures and stops; a gateway closes everything it opened, also
when its start-up fails half-way, and leaves no task behind."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from faregate.config import load_settings
from faregate.lifecycle import Lifecycle, Periodic
from faregate.server import app as app_module
from faregate.server.app import build_gateway


async def eventually(condition: object, seconds: float = 2.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def test_closes_run_newest_first_and_each_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []
    lifecycle = Lifecycle()

    def close(name: str) -> object:
        async def run() -> None:
            closed.append(name)

        return run

    async def stuck() -> None:
        await asyncio.Event().wait()  # a store that stopped answering

    async def broken() -> None:
        raise RuntimeError("boom")

    lifecycle.on_close("first", close("first"))  # type: ignore[arg-type]
    lifecycle.on_close("stuck", stuck, timeout_s=0.05)
    lifecycle.on_close("broken", broken)
    lifecycle.on_close("last", close("last"))  # type: ignore[arg-type]
    await asyncio.wait_for(lifecycle.aclose(), 5)
    assert closed == ["last", "first"]  # the stuck and the broken ones did not stop the others
    assert "closing stuck: gave up" in caplog.text
    assert "closing broken failed" in caplog.text


async def test_a_periodic_task_runs_wakes_survives_failures_and_stops() -> None:
    rounds: list[int] = []

    async def action() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise RuntimeError("a store hiccup")

    loop = Periodic("test", 60.0, action, run_first=True)
    loop.start()
    await eventually(lambda: len(rounds) == 1)  # at once, not after 60 s
    loop.wake()
    await eventually(lambda: len(rounds) == 2)  # the failing round
    loop.wake()
    await eventually(lambda: len(rounds) == 3)  # and the loop goes on
    await loop.stop()
    assert not loop.running
    await loop.stop()  # idempotent


async def test_the_interval_is_read_before_each_wait() -> None:
    pause = [60.0]
    rounds: list[float] = []

    async def action() -> None:
        rounds.append(pause[0])
        pause[0] = 0.001  # e.g. a full batch: go on at once

    loop = Periodic("test", lambda: pause[0], action, run_first=True)
    loop.start()
    await eventually(lambda: len(rounds) >= 3)
    await loop.stop()


async def test_stop_lets_a_round_finish_within_its_grace_then_cancels() -> None:
    finished: list[str] = []
    started = asyncio.Event()

    async def quick() -> None:
        started.set()
        await asyncio.sleep(0.02)
        finished.append("quick")

    loop = Periodic("quick", 60.0, quick, run_first=True)
    loop.start()
    await started.wait()
    await loop.stop(grace_s=5.0)
    assert finished == ["quick"]

    started.clear()

    async def endless() -> None:
        started.set()
        await asyncio.Event().wait()

    loop = Periodic("endless", 60.0, endless, run_first=True)
    loop.start()
    await started.wait()
    await asyncio.wait_for(loop.stop(grace_s=0.05), 5)
    assert not loop.running


async def test_a_stop_whose_caller_is_cancelled_ends_the_caller() -> None:
    """A close given up at its deadline cancels the caller of stop() while the round's cleanup
    still waits (a read on a frozen Redis): the caller ends there, it does not go on with its
    next steps as if stop() had returned."""
    started, cleanup_done = asyncio.Event(), asyncio.Event()

    async def round_with_a_slow_cleanup() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await cleanup_done.wait()

    periodic = Periodic("t", 10.0, round_with_a_slow_cleanup, run_first=True)
    periodic.start()
    await started.wait()
    went_on = False

    async def close() -> None:
        nonlocal went_on
        await periodic.stop()
        went_on = True

    closing = asyncio.create_task(close())
    for _ in range(5):
        await asyncio.sleep(0)
    closing.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    try:
        assert closing.cancelled() and not went_on
    finally:
        cleanup_done.set()
        await asyncio.gather(closing, return_exceptions=True)


async def test_a_spawned_task_is_cancelled_at_close() -> None:
    lifecycle = Lifecycle()
    task = lifecycle.spawn("forever", asyncio.Event().wait())
    await asyncio.sleep(0)
    await lifecycle.aclose()
    assert task.cancelled()


def _settings(tmp_path: Path, **overrides: object) -> object:
    return load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "accounts": {"enabled": True},
            "alerts": {"rules": [{"name": "spend", "metric": "daily_spend_usd", "above": 1}]},
            **overrides,
        }
    )


async def test_a_gateway_closes_everything_and_leaves_no_task(tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    gateway = await build_gateway(_settings(tmp_path))  # type: ignore[arg-type]
    assert gateway.observability is not None
    await gateway.observability.start()
    assert len(asyncio.all_tasks() - before) >= 4  # writer, sweeper, lease, rollup, alerts
    await asyncio.wait_for(gateway.close(), 30)
    assert asyncio.all_tasks() - before == set()


async def test_a_failed_start_closes_what_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []
    real_open = app_module.open_backends

    async def spy(*args: object, **kwargs: object) -> object:
        backends = await real_open(*args, **kwargs)  # type: ignore[arg-type]
        real_close = backends.close

        async def close() -> None:
            closed.append("stores")
            await real_close()

        backends.close = close  # type: ignore[method-assign]
        return backends

    async def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("observability failed to start")

    monkeypatch.setattr(app_module, "open_backends", spy)
    monkeypatch.setattr(app_module.Observability, "open", broken)
    before = asyncio.all_tasks()
    caplog.set_level(logging.WARNING)
    with pytest.raises(RuntimeError, match="observability failed"):
        await build_gateway(_settings(tmp_path))  # type: ignore[arg-type]
    assert closed == ["stores"]
    assert asyncio.all_tasks() - before == set()  # the writer, the sweeper and the lease stopped too
