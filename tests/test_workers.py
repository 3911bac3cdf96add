"""`serve --workers N` without processes: the default count and what each worker runs with."""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import Settings, UpstreamQueueSettings, WebhookSettings, load_settings
from faregate.errors import StartupError
from faregate.server import workers
from faregate.server.app import BACKENDS_CLOSE_TIMEOUT_S, RECORDS_CLOSE_TIMEOUT_S, build_gateway, create_app
from faregate.server.workers import default_workers, hold_port, stop_timeout_s, worker_settings
from faregate.telemetry import log_limit, metrics_share
from faregate.telemetry.metrics_share import SharedMetrics
from harness import MASTER_KEY


def test_one_worker_per_core_unless_the_simulator_stands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers, "PROC_CGROUP", tmp_path / "no-cgroup-file")
    simulated = Settings()
    simulated.sim.mode = "on"
    assert default_workers(simulated) == 1
    real = Settings()
    real.sim.mode = "off"
    assert default_workers(real) == len(os.sched_getaffinity(0))


def cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str, files: dict[str, str]) -> None:
    """A /proc/self/cgroup that says `own`, and a /sys/fs/cgroup holding `files`."""
    root = tmp_path / "sys-fs-cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "proc-self-cgroup").write_text(own)
    monkeypatch.setattr(workers, "PROC_CGROUP", tmp_path / "proc-self-cgroup")
    monkeypatch.setattr(workers, "CGROUP_ROOT", root)


@pytest.mark.parametrize(
    ("own", "files", "cores"),
    [
        # A container (cgroup v2, its own namespace) limited to 1.5 CPUs: 2 workers.
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),
        # A systemd service with CPUQuota=100%.
        (
            "0::/system.slice/faregate.service\n",
            {"system.slice/faregate.service/cpu.max": "100000 100000\n"},
            1,
        ),
        # cgroup v1 (older Docker hosts).
        (
            "12:cpu,cpuacct:/docker/abc\n",
            {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"},
            1,
        ),
    ],
)
def test_a_cpu_limit_bounds_the_default_worker_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str, files: dict[str, str], cores: int
) -> None:
    """In a container limited to 2 CPUs on a 64-core host, the scheduler lets the process run on 64
    cores: one worker per core was 64 workers (64 times the memory, the pools, the caches) sharing
    2 CPUs of time."""
    cgroups(tmp_path, monkeypatch, own, files)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    real = Settings()
    real.sim.mode = "off"
    assert default_workers(real) == cores


@pytest.mark.parametrize(
    ("own", "files"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}),  # no limit
        ("0::/\n", {}),  # the host's root cgroup has no cpu.max
        ("12:cpu,cpuacct:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}),
    ],
)
def test_no_cpu_limit_leaves_one_worker_per_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str, files: dict[str, str]
) -> None:
    cgroups(tmp_path, monkeypatch, own, files)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    real = Settings()
    real.sim.mode = "off"
    assert default_workers(real) == 8


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


def test_a_stopping_worker_is_given_the_time_its_own_stop_may_take() -> None:
    """After the drain a worker flushes its pending records and closes its stores, each within a
    bound of its own (server/app.py: a backlog of records after a store outage, a PostgreSQL that
    is failing over), as one process does. The supervisor killed it 10 s after the drain: its
    records, and the settlements it still kept, were lost where one process would have written them."""
    settings = Settings()
    settings.server.drain_timeout_s = 5.0
    assert stop_timeout_s(settings) >= 5.0 + RECORDS_CLOSE_TIMEOUT_S + BACKENDS_CLOSE_TIMEOUT_S


def test_a_restart_that_cannot_fork_is_tried_again_while_the_other_workers_serve(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed under memory pressure (the OOM killer) is restarted under the same pressure:
    fork (or the pipe before it) may fail. That failure ended the supervisor's loop, which then
    stopped every worker: the gateway was down for one worker it could not restart yet."""
    supervisor = workers.Supervisor(Settings(), 2)
    supervisor.workers = [workers.Worker(0, pid=os.getpid(), ready=True), workers.Worker(1, restart_at=0.0)]

    def no_memory() -> int:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    open_fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "fork", no_memory)
    monkeypatch.setattr(supervisor, "_reap", lambda: [])
    monkeypatch.setattr(supervisor, "_read_ready", lambda: None)
    supervisor._tend()
    restarting = supervisor.workers[1]
    assert restarting.pid == 0 and restarting.restart_at is not None and restarting.restart_at > 0.0
    assert restarting.failures == 1
    assert "worker 1 could not be restarted (Cannot allocate memory); trying again in" in caplog.text
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the pipe made for it is closed


def test_the_metrics_of_a_worker_that_exited_are_retired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = workers.Supervisor(Settings(), 2)
    supervisor._metrics_dir = tmp_path
    dead = workers.Worker(1, pid=0, ready=True)
    supervisor.workers = [workers.Worker(0, pid=os.getpid(), ready=True), dead]
    retired: list[tuple[Path, int]] = []
    monkeypatch.setattr(
        workers.SharedMetrics, "retire", lambda directory, index: retired.append((directory, index))
    )
    monkeypatch.setattr(supervisor, "_reap", lambda: [(dead, -9)])
    monkeypatch.setattr(supervisor, "_read_ready", lambda: None)
    supervisor._tend()
    assert retired == [(tmp_path, 1)]


def test_every_worker_exit_is_logged_even_several_at_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    """The log's repeat filter (telemetry/log_limit.py, installed by run_workers) held back a line
    like one written in the last 10 s: a second worker's exit, or its restart, was not said."""
    # pytest keeps one capture handler for the whole session: the filter must go with the test,
    # or it holds back later tests' lines like one it saw in the last 10 s.
    repeats = log_limit.RepeatFilter()
    caplog.handler.addFilter(repeats)
    request.addfinalizer(lambda: caplog.handler.removeFilter(repeats))
    supervisor = workers.Supervisor(Settings(), 2)
    supervisor._metrics_dir = tmp_path
    first, second = workers.Worker(0, pid=0, ready=True), workers.Worker(1, pid=0, ready=True)
    supervisor.workers = [first, second]
    monkeypatch.setattr(supervisor, "_reap", lambda: [(first, -9), (second, -9)])
    monkeypatch.setattr(supervisor, "_read_ready", lambda: None)
    with caplog.at_level("INFO", logger="faregate.workers"):
        supervisor._tend()
    exits = [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]
    assert [line.split(" exited")[0] for line in exits] == ["worker 0", "worker 1"], caplog.text


async def test_the_verifications_pending_are_every_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GET /admin/quality` says how many verifications are not finished (a client waits for 0
    before it reads the figures): with several workers, it was those of the worker that answered."""
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    config = tmp_path / "faregate.yaml"
    config.write_text(
        "models: {a: {input: 1, output: 1}, b: {input: 2, output: 2}}\n"
        "routes:\n  c:\n    cascade: {steps: [a, b]}\n    quality: {}\n",
        encoding="utf-8",
    )
    overrides = {"store": {"path": str(tmp_path / "store")}, "catalog": {"broad": False}}
    gateway = await build_gateway(load_settings(config, overrides=overrides))
    gateway.shared_metrics = SharedMetrics(tmp_path / "share", 0, 2)
    (tmp_path / "share").mkdir()
    other = {"worker": 1, "pid": 1, "uptime_s": 1.0, "offers": {}, "upstream_queues": {}}
    other["counters"] = {"records_written": 2, "verifications_pending": 3}
    SharedMetrics(tmp_path / "share", 1, 2).publish_view("health.json", orjson.dumps(other), live=True)
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    async with TestClient(TestServer(create_app(gateway))) as client:
        quality = await (await client.get("/admin/quality", headers=admin)).json()
        health = await (await client.get("/health", headers=admin)).json()
    assert quality["pending"] == 3
    assert health["counters"]["verifications_pending"] == 3
    assert health["counters"]["records_written"] == 2


async def test_health_and_metrics_answer_when_the_shared_folder_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full /tmp (or a metrics folder made read-only): each answer's write of this worker's
    figures for the others failed, and /health and /metrics answered 503 (as for a store down).
    They answer with this worker's live figures and the others' last published ones, say so, and
    the log says it once."""
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    overrides = {"store": {"path": str(tmp_path / "store")}, "catalog": {"broad": False}}
    gateway = await build_gateway(load_settings(overrides=overrides))
    share = tmp_path / "share"
    share.mkdir()
    gateway.shared_metrics = SharedMetrics(share, 0, 2)
    other = {"worker": 1, "pid": 1, "uptime_s": 1.0, "offers": {}, "upstream_queues": {}}
    other["counters"] = {"records_written": 2}
    SharedMetrics(share, 1, 2).publish_view("health.json", orjson.dumps(other), live=True)

    full = True
    write_whole = metrics_share._write_whole

    def disk_full(path: Path, temporary: Path, body: bytes) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(temporary))
        write_whole(path, temporary, body)

    monkeypatch.setattr(metrics_share, "_write_whole", disk_full)
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    caplog.set_level("INFO", logger="faregate")
    async with TestClient(TestServer(create_app(gateway))) as client:
        for _ in range(2):
            health_answer = await client.get("/health", headers=admin)
            metrics_answer = await client.get("/metrics", headers=admin)
            assert (health_answer.status, metrics_answer.status) == (200, 200)
        health = await health_answer.json()
        scrape = await metrics_answer.text()
        assert health["worker"] == 0 and health["counters"]["records_written"] == 2
        assert "No space left on device" in health["share_error"]
        assert scrape.startswith("# faregate: worker 0 cannot publish") and "faregate_" in scrape
        said = [r.getMessage() for r in caplog.records if "cannot publish its figures" in r.getMessage()]
        assert len(said) == 1, said
        # Writable again: the answers stop saying it.
        full = False
        health = await (await client.get("/health", headers=admin)).json()
        assert "share_error" not in health


def test_the_documented_stop_timeout_covers_the_longest_clean_stop() -> None:
    """`docker stop` waits 10 s and systemd 90 s before SIGKILL, and a clean stop may take the
    drain and 70 s more: the README says what to give, and that must stay longer than the code's
    bounds (a worker's stop, then the simulator's)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    said = re.search(r"`server\.drain_timeout_s` \+ (\d+) s \((\d+) s with the defaults\)", readme)
    assert said is not None
    extra, total = int(said[1]), int(said[2])
    settings = Settings()
    assert total == settings.server.drain_timeout_s + extra
    assert extra >= stop_timeout_s(settings) - settings.server.drain_timeout_s + workers.SIMULATOR_STOP_S
    for setting in (
        f"--stop-timeout {total}",
        f"stop_grace_period: {total}s",
        f"terminationGracePeriodSeconds: {total}",
        f"TimeoutStopSec={total}",
    ):
        assert setting in readme
