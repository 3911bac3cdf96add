"""`faregate serve --workers N`: N gateway processes on one port, and a supervisor that keeps them.

One Python process uses one core. The supervisor (the process `serve` started) prepares what
the workers share, forks N workers, restarts one that dies (with backoff), and on SIGTERM or
SIGINT stops them all and waits for each to flush its request records.

Before forking it: holds the port (a bound, not listening, SO_REUSEPORT socket: nobody else can
take the port, even while a worker restarts); migrates the store, once and with no time limit (a
migration that rewrites a large records table may take minutes: in the workers it ran under their
start timeout, was cut short and rolled back, and failed every start); starts the simulator
when it stands in for the providers (one, shared); loads the tokenizer if
`accounts.usage_estimate: tokenizer` asks for it, and freezes what exists, so those pages stay
shared copy-on-write by every worker instead of being loaded N times. Each worker then builds
its own gateway (event loop, stores, upstream pool) and listens with SO_REUSEPORT: the kernel
spreads new connections across the workers.

What stays exact, and what is per worker:
- credits, budgets, holds, the ledger, keys and request records live in the store; every worker
  writes in transactions (SQLite admits one writer at a time across processes; PostgreSQL and
  Redis as with several instances). Each worker holds its own instance lease, so a killed
  worker's reservations are released within `accounts.instance_lease_s`.
- rate limits and key events (a key revoked or its policy changed: every worker drops what it
  caches of it): in the SQLite file when the store is embedded (accounts/embedded.py), in Redis
  when shared.
- per worker, by design: the exact and semantic caches in process (a Redis cache is shared),
  breakers and latency statistics, the upstream connection pool, `upstream_limits` (each worker
  gets an equal share of `max_concurrent`, `max_queued` and `verification_slots`, rounded up),
  and the alerts' evaluation (worker 0 alone posts to the webhook and logs, so an alert is posted
  and logged once).
- metrics: each worker publishes its own to a directory the supervisor made; a scrape, answered
  by one worker, sums them (telemetry/metrics_share.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import msgspec

from faregate.config import Settings, UpstreamQueueSettings, in_config_file
from faregate.errors import ConfigError, StartupError
from faregate.providers.registry import simulator_active, with_simulator
from faregate.server import runner
from faregate.server.app import BACKENDS_CLOSE_TIMEOUT_S, RECORDS_CLOSE_TIMEOUT_S
from faregate.server.worker_process import (
    CONFIG_REFUSED,
    MAX_REFUSAL_BYTES,
    READY,
    START_FAILED,
    Seat,
    worker_main,
)
from faregate.store.protocols import Store, StoreUnavailable
from faregate.telemetry import log_limit
from faregate.telemetry.log_limit import EVERY_LINE
from faregate.telemetry.metrics_share import SharedMetrics

log = logging.getLogger("faregate.workers")
# A worker's exit, restart or kill is an event of its own, never a repeat of another worker's (or
# of its own last one): written with EVERY_LINE, past the log's repeat filter (log_limit.py).

# A worker that dies sooner than this after it started counts as failing: the next restart waits
# twice as long (from RESTART_DELAY_S up to MAX_RESTART_DELAY_S); one that lived longer restarts
# after RESTART_DELAY_S.
HEALTHY_AFTER_S = 30.0
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
# How long the first start of every worker may take before the supervisor gives up.
START_TIMEOUT_S = 120.0
# A worker's clean stop lets its requests in flight finish (`server.drain_timeout_s`), then flushes
# its records and closes its stores, each bounded in time (server/app.py); past the drain, those
# bounds and this much more it is killed (stop_timeout_s).
STOP_MARGIN_S = 10.0
# How long the simulator (`make run`) may take to stop, after the workers, before it is killed.
SIMULATOR_STOP_S = 5.0
POLL_S = 0.1
# What stops the supervisor, and each worker (gracefully, once it serves).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Where Linux says which cgroup this process is in, and where the cgroups' files are.
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def default_workers(settings: Settings) -> int:
    """One per core this process may run on, and no more than its CPU limit allows (a container's,
    a service's); one when the simulator stands in (`make run`)."""
    if simulator_active(settings):
        return 1
    cores = len(os.sched_getaffinity(0))
    limit = cpu_limit()
    return cores if limit is None else max(1, min(cores, limit))


def cpu_limit() -> int | None:
    """The CPUs of time this process's cgroup may use, rounded up (None: no limit, or none known).

    A container limited to 2 CPUs on a 64-core host may run on all 64 cores (its affinity), for 2
    CPUs of time in all: 64 workers would hold 64 times the memory for no more throughput."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2, "0::/its/path": its cpu.max is "max 100000" or "150000 100000"
            words = _words(CGROUP_ROOT / path.lstrip("/") / "cpu.max")
            if len(words) == 2:
                return _cpus(words[0], words[1])
        elif "cpu" in controllers.split(","):  # cgroup v1: the CFS quota (-1: none) and its period
            quota = _words(CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us")
            period = _words(CGROUP_ROOT / "cpu" / "cpu.cfs_period_us")
            if quota and period:
                return _cpus(quota[0], period[0])
    return None


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _cpus(quota: str, period: str) -> int | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no limit
        return None
    return math.ceil(quota_us / period_us) if quota_us > 0 and period_us > 0 else None


def stop_timeout_s(settings: Settings) -> float:
    """How long a worker told to stop may take before it is killed: the drain, then the last flush
    of its records and the close of its stores within their own bounds (a backlog of records after
    a store outage, a PostgreSQL failing over), as one process stops; then STOP_MARGIN_S for the
    rest of its closes."""
    cleanup_s = RECORDS_CLOSE_TIMEOUT_S + BACKENDS_CLOSE_TIMEOUT_S + STOP_MARGIN_S
    return settings.server.drain_timeout_s + cleanup_s


def worker_settings(settings: Settings, index: int, count: int) -> Settings:
    """What worker `index` of `count` runs with: its share of each upstream limit, and the alert
    webhook on worker 0 only."""
    limits = {name: _share(queue, count) for name, queue in settings.upstream_limits.items()}
    alerts = settings.alerts if index == 0 else msgspec.structs.replace(settings.alerts, webhook=None)
    server = msgspec.structs.replace(settings.server, workers=count)
    return msgspec.structs.replace(settings, upstream_limits=limits, alerts=alerts, server=server)


def _share(queue: UpstreamQueueSettings, count: int) -> UpstreamQueueSettings:
    return msgspec.structs.replace(
        queue,
        max_concurrent=math.ceil(queue.max_concurrent / count),
        max_queued=math.ceil(queue.max_queued / count),
        verification_slots=math.ceil(queue.verification_slots / count),
    )


def hold_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) the port the workers will share: a port in use is one clear
    error here, before any worker starts, and stays ours while a worker restarts.

    SO_REUSEPORT lets any process of the same user bind the port beside us, so the port is first
    bound without it, as by one gateway process: that fails where another supervisor's workers
    listen (joining them, the kernel would split the connections between two gateways); not in the
    moment when every one of them is restarting at once."""
    _bind(host, port, reuse_port=False).close()
    return _bind(host, port, reuse_port=True)


def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host, port))
    except OSError as exc:
        holder.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen on {host}:{port}: the port is in use (another faregate?); "
                "choose another with --port or server.port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return holder


def _wait_simulator(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise StartupError(f"the provider simulator did not start: it exited with code {code}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise StartupError(f"the provider simulator did not start: {url} not healthy within {timeout_s:.0f}s")


def migrate_store(settings: Settings, workers: int = 1) -> None:
    """Open the store the settings name (which applies its pending migrations) and close it; the
    workers then find nothing left to migrate. A shared store's Redis is asked too: only the
    workers' accounts use it, and down, each worker said so in a line of its own; and PostgreSQL,
    whether it has room for the `workers`' pools. The event loop, its threads and the store's
    connections are all gone when this returns: nothing of them is forked."""
    from faregate.store.backends import open_backends

    async def migrate() -> None:
        backends = await open_backends(settings, accounts=False, analytics=False)
        try:
            if backends.redis_url is not None:
                from faregate.accounts.shared import check_redis  # the embedded store never loads redis

                await check_redis(backends.redis_url)
                await _check_postgres_room(backends.store, settings, workers)
        finally:
            await backends.close()

    asyncio.run(migrate())


async def _check_postgres_room(store: Store, settings: Settings, workers: int) -> None:
    """Warn when the workers' pools may open more connections than PostgreSQL takes: each pool
    opens connections as the load asks, so the gateway starts, and under load its requests fail
    (503) on "too many clients". A warning, not a refusal: the pools may never fill, and other
    instances' needs are not known here."""
    import asyncpg

    from faregate.store.postgres.analytics import POOL_SIZE as ANALYTICS_POOL_SIZE
    from faregate.store.postgres.store import PostgresStore

    if not isinstance(store, PostgresStore) or settings.store.postgres_transaction_pooling:
        return  # behind a pooler the workers' connections are the pooler's, not PostgreSQL's
    per_worker = settings.store.postgres_pool_size + ANALYTICS_POOL_SIZE
    try:
        room = await store.connection_room()
    except (asyncpg.PostgresError, StoreUnavailable) as exc:
        # Advice only: a proxy in front (PgBouncer), or a role that may not read these, starts as before.
        log.info("could not ask PostgreSQL how many connections it takes (%s); not checked", exc)
        return
    if workers * per_worker <= room.free:
        return
    fits = room.free // workers - ANALYTICS_POOL_SIZE
    advice = f"set store.postgres_pool_size: {fits}" if fits >= 1 else "run fewer workers"
    log.warning(
        "%d workers may open up to %d connections to PostgreSQL (store.postgres_pool_size %d and %d "
        "for the dashboard, each), more than the %d it has room for (max_connections %d, %d reserved "
        "for superusers, %d open by others now): under load, requests would fail with 503 on "
        "'too many clients'; %s, or raise PostgreSQL's max_connections",
        *(workers, workers * per_worker, settings.store.postgres_pool_size, ANALYTICS_POOL_SIZE),
        *(room.free, room.max_connections, room.reserved, room.others, advice),
    )


def preload(settings: Settings) -> None:
    """Load in the supervisor what every worker would load on its own, before forking: the modules
    the gateway imports, and the tokenizer when opted in (~45 MiB of pages written once, then only
    read: shared by every worker; bench/README.md, the memory soak)."""
    import faregate.server.app  # noqa: F401  (its imports are the gateway's)
    from faregate import usage_estimate

    usage_estimate.configure(settings.accounts.usage_estimate)
    usage_estimate.preload()


@dataclass(slots=True)
class Worker:
    index: int
    pid: int = 0
    ready_fd: int = -1
    started_at: float = 0.0
    ready: bool = False
    failures: int = 0
    restart_at: float | None = None
    # Why it could not start, as it said on its ready pipe (worker_process.refusal).
    refused: StartupError | None = None


Announce = runner.Announce


@dataclass
class Supervisor:
    settings: Settings
    count: int
    announce: Announce | None = None
    config_path: str | None = None
    workers: list[Worker] = field(default_factory=list)
    _stopping: bool = False
    _holder: socket.socket | None = None
    _simulator: subprocess.Popen[bytes] | None = None
    _simulated: bool = False
    _metrics_dir: Path | None = None
    # Run once the port is held, before the workers are forked (`serve --new-key` makes the
    # master key there).
    before_workers: Callable[[], None] | None = None

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit code."""
        try:
            self._holder = hold_port(self.settings.server.host, self.settings.server.port)
            # Before the signal handlers: SIGTERM or Ctrl-C stops a long migration at once (it is
            # one transaction, rolled back), rather than once it is done.
            migrate_store(self.settings, self.count)
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_stop)
            self._prepare()
            if self.before_workers is not None:
                self.before_workers()
            self.workers = [Worker(index) for index in range(self.count)]
            for worker in self.workers:
                self._start(worker, announce=worker.index == 0)
            if not self._wait_all_ready():
                return 0 if self._stopping else 1
            log.info(
                "faregate: %d workers listening on %s:%d (pids %s)",
                self.count,
                self.settings.server.host,
                self.settings.server.port,
                " ".join(str(w.pid) for w in self.workers),
            )
            while not self._stopping:
                self._tend()
            return 0
        finally:
            self._stop_all()

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _prepare(self) -> None:
        settings = self.settings
        if simulator_active(settings):
            port = runner.simulator_port(settings)
            if settings.sim.launch:
                runner.check_simulator_port(settings, port)
                self._simulator = subprocess.Popen(
                    runner.simulator_command(settings, port, self.config_path),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    preexec_fn=runner.simulator_apart,
                )
                _wait_simulator(f"http://{settings.sim.host}:{port}/health", self._simulator)
            self.settings = with_simulator(settings, f"http://{settings.sim.host}:{port}/v1")
            self._simulated = True
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="faregate-metrics-"))
        preload(self.settings)
        if threading.active_count() > 1:
            alive = threading.active_count()
            log.warning("forking with %d threads alive; workers may inherit held locks", alive)
        # Whatever exists now lives as long as the workers: out of the collector's reach, so that
        # collections in a worker never write to (and so copy) these shared pages.
        gc.collect()
        gc.freeze()

    def _start(self, worker: Worker, announce: bool = False) -> None:
        read_fd, write_fd = os.pipe()
        settings = worker_settings(self.settings, worker.index, self.count)
        sys.stdout.flush()
        sys.stderr.flush()
        # Held across the fork: a stop that reaches the new process before it has left the
        # supervisor's handlers (which only note it) would be lost there; held, it waits for them to go.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_fd)
            os.close(write_fd)
            raise
        if pid == 0:
            try:
                # A stop sent since the fork ends it now, as it would a worker not serving yet.
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.close(read_fd)
                assert self._metrics_dir is not None
                shared = SharedMetrics.join(self._metrics_dir, worker.index, self.count)
                seat = Seat(worker.index, write_fd, self._holder, self._simulated, shared)
                worker_main(seat, settings, self.announce if announce else None)
            except BaseException:
                # Never back into the supervisor's code: a copy of it, on its way out, would stop
                # every other worker (MemoryError, as under the pressure that killed the last one).
                log.exception("worker %d could not start", worker.index)
            finally:
                os._exit(1)  # worker_main leaves by os._exit itself
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_fd)
        worker.pid, worker.ready_fd, worker.started_at, worker.ready = pid, read_fd, time.monotonic(), False
        worker.restart_at = None
        worker.refused = None

    def _wait_all_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers):
            if self._stopping:
                return False
            if time.monotonic() > deadline:
                log.error("workers did not start within %.0fs; stopping", START_TIMEOUT_S)
                return False
            self._read_ready()
            for worker, code in self._reap():
                # A worker that cannot start (a bad config, a store it cannot open) would fail again.
                if worker.refused is not None:
                    # Every worker fails alike: said once, as one process says it (the CLI's line).
                    raise worker.refused
                log.error("worker %d exited with code %s before it was ready; stopping", worker.index, code)
                return False
        return True

    def _read_ready(self) -> None:
        waiting = {w.ready_fd: w for w in self.workers if not w.ready and w.ready_fd >= 0}
        if not waiting:
            time.sleep(POLL_S)
            return
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(list(waiting), [], [], POLL_S)
            for fd in readable:
                self._read_word(waiting[fd])

    def _read_word(self, worker: Worker) -> None:
        """What the worker said on its ready pipe (READY, or why it cannot start), or its end;
        the pipe is closed after."""
        word = os.read(worker.ready_fd, MAX_REFUSAL_BYTES)
        os.close(worker.ready_fd)
        worker.ready_fd = -1
        if word == READY:
            worker.ready = True
        elif word[:1] == CONFIG_REFUSED:
            problem = word[1:].decode(errors="replace")
            # As one process says it: with the config file's line of the setting (runner.run).
            worker.refused = ConfigError(
                in_config_file(problem, self.config_path) if self.config_path else problem
            )
        elif word[:1] == START_FAILED:
            worker.refused = StartupError(word[1:].decode(errors="replace"))

    def _reap(self) -> list[tuple[Worker, int]]:
        exited: list[tuple[Worker, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return exited
            if pid == 0:
                return exited
            if self._simulator is not None and pid == self._simulator.pid:
                self._simulator.returncode = os.waitstatus_to_exitcode(status)
                if not self._stopping:
                    log.error("the provider simulator exited with code %s", self._simulator.returncode)
                continue
            for worker in self.workers:
                if worker.pid == pid:
                    worker.pid = 0
                    if worker.ready_fd >= 0:
                        # Its last word, if it wrote one since the pipe was last read: it has
                        # exited, so the read does not wait.
                        self._read_word(worker)
                    exited.append((worker, os.waitstatus_to_exitcode(status)))

    def _tend(self) -> None:
        """One round: note restarted workers that are ready, schedule restarts of dead ones, start
        those that are due."""
        was_ready = {w.index for w in self.workers if w.ready}
        self._read_ready()
        for worker in self.workers:
            if worker.ready and worker.index not in was_ready:
                log.info("worker %d (pid %d) is serving again", worker.index, worker.pid, extra=EVERY_LINE)
        now = time.monotonic()
        for worker, code in self._reap():
            if self._stopping:
                continue
            if self._metrics_dir is not None:
                # Its breakers, records pending and alerts firing are no one's now.
                with contextlib.suppress(OSError):
                    SharedMetrics.retire(self._metrics_dir, worker.index)
            lived = now - worker.started_at
            worker.failures = worker.failures + 1 if lived < HEALTHY_AFTER_S or not worker.ready else 0
            delay = _restart_delay(worker.failures)
            worker.ready = False
            worker.restart_at = now + delay
            why = f" ({worker.refused})" if worker.refused is not None else ""
            log.warning(
                "worker %d exited with code %s after %.1fs%s; restarting it in %.1fs",
                *(worker.index, code, lived, why, delay),
                extra=EVERY_LINE,
            )
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now and not self._stopping:
                self._restart(worker, now)

    def _restart(self, worker: Worker, now: float) -> None:
        try:
            self._start(worker)
        except OSError as exc:
            # No process or pipe to be had now (memory, as when the OOM killer took the worker, or
            # a process or file limit): the other workers serve on, and it is tried again later.
            worker.failures += 1
            delay = _restart_delay(worker.failures)
            worker.restart_at = now + delay
            reason = exc.strerror or exc
            log.error(
                "worker %d could not be restarted (%s); trying again in %.1fs",
                *(worker.index, reason, delay),
                extra=EVERY_LINE,
            )

    def _stop_all(self) -> None:
        alive = [w for w in self.workers if w.pid]
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        timeout_s = stop_timeout_s(self.settings)
        deadline = time.monotonic() + timeout_s
        while any(w.pid for w in self.workers) and time.monotonic() < deadline:
            self._reap()
            time.sleep(POLL_S / 2)
        for worker in self.workers:
            if worker.pid:
                stuck = (worker.index, timeout_s)
                log.error("worker %d did not stop within %.0fs; killing it", *stuck, extra=EVERY_LINE)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(worker.pid, 0)
                worker.pid = 0
        if self._simulator is not None and self._simulator.poll() is None:
            self._simulator.terminate()
            try:
                self._simulator.wait(SIMULATOR_STOP_S)
            except subprocess.TimeoutExpired:
                self._simulator.kill()
        if self._holder is not None:
            self._holder.close()
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _restart_delay(failures: int) -> float:
    """RESTART_DELAY_S, doubled for each failure in a row after the first, up to MAX_RESTART_DELAY_S."""
    return min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2.0 ** max(0, failures - 1))


def run_workers(
    settings: Settings,
    count: int,
    announce: Announce | None = None,
    config_path: str | None = None,
    before_workers: Callable[[], None] | None = None,
) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_limit.install()
    return Supervisor(settings, count, announce, config_path, before_workers=before_workers).run()
