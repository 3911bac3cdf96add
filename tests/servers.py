"""Throwaway PostgreSQL and Redis servers for the tests: real Debian binaries, loopback, temp dirs.

Each server is started once per test session on a free 127.0.0.1 port and removed after.
Tests get a fresh database (PostgreSQL) or a flushed data set (Redis) each. When the
binaries are missing the fixtures fail, never skip: CI (.ci/run) installs them.

Use in a test module:  from servers import postgres_server, redis_server, shared_urls  # noqa: F401
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness import LEAN_HTTP, GatewayProcess, SimProcess, free_port, serving

T = TypeVar("T")
PG_USER = "postgres"
PR_SET_PDEATHSIG = 1


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed (looked in /usr/lib/postgresql/*/bin): "
            "apt-get install postgresql (.ci/run does)"
        )
    return found[-1]


def as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root: drop to the postgres system user then.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def die_with_parent() -> None:
    """preexec_fn: the server gets SIGTERM if the test process dies without cleaning up (a kill,
    a crash), so no server outlives its test run (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_port(port: int, process: subprocess.Popen[bytes] | None, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _wait_accepting(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """PostgreSQL listens before it accepts sessions ("the database system is starting up"):
    wait for pg_isready too."""
    isready = pg_bin("pg_isready")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}")
        ready = subprocess.run(
            [isready, "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER], capture_output=True
        )
        if ready.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"postgres on 127.0.0.1:{port} did not accept sessions within {timeout}s")


@dataclass
class PostgresServer:
    port: int
    datadir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            as_postgres(
                [
                    *(
                        pg_bin("psql"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-U",
                        PG_USER,
                        "-d",
                        database,
                    ),
                    *("-v", "ON_ERROR_STOP=1", "-At", "-c", sql),
                ]
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout

    def new_database(self) -> str:
        name = "fg_" + secrets.token_hex(6)
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """PostgreSQL stops answering without closing a connection (SIGSTOP to the postmaster and
        every backend: a frozen host, a network partition), and answers again after the block.
        Only for a server of the test's own (run_postgres), never the session's shared one."""
        postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        pids = [postmaster, *(pid for pid, ppid in _processes() if ppid == postmaster)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            # runuser (as_postgres) stops itself when its child stops: it goes on too.
            parent = dict(_processes()).get(postmaster)
            if parent is not None and parent != os.getpid():
                os.kill(parent, signal.SIGCONT)


def _processes() -> Iterator[tuple[int, int]]:
    """(pid, parent pid) of every process, from /proc."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit():
                # /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces.
                yield int(entry.name), int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    initdb, pg_ctl, postgres = pg_bin("initdb"), pg_bin("pg_ctl"), pg_bin("postgres")
    root = Path(tempfile.mkdtemp(prefix="faregate-pg-"))
    datadir = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER, PG_USER)
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            as_postgres(
                [initdb, "-D", str(datadir), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        settings = [
            *("-p", str(port), "-k", str(root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
            *("-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"),
        ]
        # In the foreground, as a child of this process: it cannot outlive the test run.
        log = open(root / "log", "wb")
        process = subprocess.Popen(
            as_postgres([postgres, "-D", str(datadir), *settings]),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        log.close()
        _wait_port(port, process, "postgres")
        _wait_accepting(port, process)
        yield PostgresServer(port, datadir)
    finally:
        if process is not None:
            subprocess.run(
                as_postgres([pg_ctl, "-D", str(datadir), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
            )
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PgBouncer:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def run_pgbouncer(postgres: PostgresServer, *, server_connections: int = 3) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of `postgres`, with a few server connections per
    database, so a client's transactions run on several (where a statement prepared on one does
    not exist)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        raise RuntimeError("pgbouncer is not installed: apt-get install pgbouncer (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="faregate-pgbouncer-"))
    port = free_port()
    (root / "users.txt").write_text(f'"{PG_USER}" ""\n')
    (root / "pgbouncer.ini").write_text(
        f"[databases]\n* = host=127.0.0.1 port={postgres.port}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'users.txt'}\npool_mode = transaction\n"
        f"default_pool_size = {server_connections}\nlogfile = {root / 'log'}\n"
    )
    if os.geteuid() == 0:  # it refuses to run as root, as postgres does
        for path in (root, *root.iterdir()):
            shutil.chown(path, PG_USER, PG_USER)
    process = subprocess.Popen(
        as_postgres([binary, str(root / "pgbouncer.ini")]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        _wait_port(port, process, "pgbouncer")
        yield PgBouncer(port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


DATABASES = 256


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    used: int = 0

    def new_database(self) -> str:
        """An empty logical database of its own (keys and streams are per database), so tests and
        module-wide gateways never see each other's data."""
        self.used = self.used % (DATABASES - 1) + 1
        self.cli("-n", str(self.used), "FLUSHDB")
        return f"redis://127.0.0.1:{self.port}/{self.used}"

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


@contextlib.contextmanager
def run_redis() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="faregate-redis-"))
    port = free_port()
    log = open(root / "log", "wb")
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(root), "--protected-mode", "yes", "--databases", str(DATABASES)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,
    )
    try:
        _wait_port(port, process, "redis-server")
        yield RedisServer(port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


# One server of each kind for the whole run. Test modules import these fixtures, and pytest
# makes one fixture per importing module; the servers themselves live in the config's stash.
_SERVERS = pytest.StashKey[dict[str, Any]]()


def _shared(config: pytest.Config, name: str, start: Callable[[], contextlib.AbstractContextManager[T]]) -> T:
    if _SERVERS not in config.stash:
        stack = contextlib.ExitStack()
        config.add_cleanup(stack.close)
        config.stash[_SERVERS] = {"stack": stack}
    servers = config.stash[_SERVERS]
    if name not in servers:
        servers[name] = servers["stack"].enter_context(start())
    server: T = servers[name]
    return server


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> PostgresServer:
    return _shared(pytestconfig, "postgres", run_postgres)


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> RedisServer:
    return _shared(pytestconfig, "redis", run_redis)


@dataclass
class SharedUrls:
    postgres: str
    redis: str

    def store(self) -> str:
        """Lines of a gateway's store section that use these servers (see launch_gateway)."""
        return f"postgres_url: {self.postgres!r}\nredis_url: {self.redis!r}\n"


@pytest.fixture
def shared_urls(postgres_server: PostgresServer, redis_server: RedisServer) -> SharedUrls:
    """A fresh PostgreSQL database and an empty Redis database for one test."""
    return SharedUrls(postgres_server.new_database(), redis_server.new_database())


@contextlib.contextmanager
def launch_gateway(
    workdir: Path,
    sim: SimProcess | None,
    *,
    store: str = "",
    server: str = "",
    extra: str = "",
    env: dict[str, str] | None = None,
    sim_first_byte_s: float = 1.5,
) -> Iterator[GatewayProcess]:
    """Like harness.run_gateway, with room in the server and store sections (a YAML config may
    not repeat a key): `store` and `server` are extra `key: value` lines for those sections."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "faregate.yaml"
    lines = [
        "server:",
        f"  port: {port}",
        "  max_body_bytes: 1048576",
        *(["  request_timeout_s: 20"] if "request_timeout_s" not in server else []),
        # One process unless a test asks for more (the default is one per core without the simulator).
        *(["  workers: 1"] if "workers" not in server else []),
        *([f"  lean_http: {str(LEAN_HTTP).lower()}"] if "lean_http" not in server else []),
        *[f"  {line.strip()}" for line in server.splitlines() if line.strip()],
        "store:",
        f"  path: {str(workdir / 'store')!r}",
        *[f"  {line.strip()}" for line in store.splitlines() if line.strip()],
        *(["records: {flush_interval_s: 0.05}"] if "records:" not in extra else []),
    ]
    if sim is not None:
        lines.append(
            f"sim: {{mode: 'on', launch: false, port: {sim.port}, first_byte_timeout_s: {sim_first_byte_s}}}"
        )
    config.write_text("\n".join(lines) + "\n" + extra)
    with serving(workdir, port, config, env, log_mode="ab") as gateway:
        yield gateway
