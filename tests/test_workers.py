"""`serve --workers N` without processes: the default count and what each worker runs with."""

from __future__ import annotations

import os
import socket

import pytest

from faregate.config import Settings, UpstreamQueueSettings, WebhookSettings
from faregate.errors import StartupError
from faregate.server.workers import default_workers, hold_port, worker_settings


def test_one_worker_per_core_unless_the_simulator_stands_in() -> None:
    simulated = Settings()
    simulated.sim.mode = "on"
    assert default_workers(simulated) == 1
    real = Settings()
    real.sim.mode = "off"
    assert default_workers(real) == len(os.sched_getaffinity(0))


def test_each_worker_gets_a_share_of_the_upstream_limits_and_only_the_first_posts_alerts() -> None:
    settings = Settings()
    settings.upstream_limits = {"sim": UpstreamQueueSettings(max_concurrent=5, max_queued=100)}
    settings.alerts.webhook = WebhookSettings(url="http://127.0.0.1:9/hook")
    first, second = (worker_settings(settings, i, 2) for i in range(2))
    assert first.upstream_limits["sim"].max_concurrent == second.upstream_limits["sim"].max_concurrent == 3
    assert first.upstream_limits["sim"].max_queued == 50
    assert first.upstream_limits["sim"].verification_slots == 1  # of 1: rounded up, one each
    assert first.alerts.webhook is not None and second.alerts.webhook is None
    assert first.server.workers == second.server.workers == 2
    assert settings.server.workers is None  # the supervisor's own settings are untouched


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            hold_port("127.0.0.1", port)


def test_a_port_another_supervisors_workers_listen_on_is_in_use_too() -> None:
    """The workers of a `serve --workers N` already running listen with SO_REUSEPORT, which lets
    any process of the same user join them: a second supervisor must not (the kernel would split
    the connections between two gateways, each with its own config and store)."""
    with socket.socket() as worker:
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", 0))
        worker.listen()
        port = worker.getsockname()[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            hold_port("127.0.0.1", port)


def test_the_port_of_a_supervisor_that_stopped_can_be_held_again() -> None:
    first = hold_port("127.0.0.1", 0)
    port = first.getsockname()[1]
    first.close()
    hold_port("127.0.0.1", port).close()
