"""Start the simulator and the gateway as real processes on loopback ports, as users run them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

MASTER_KEY = "fg-master-test-0123456789abcdefghijklmnop"
# Which server carries the hot POSTs in the gateways started here (server.lean_http): the lean
# httptools one by default, aiohttp alone with FAREGATE_TEST_LEAN_HTTP=0 (run the e2e files both ways).
LEAN_HTTP = os.environ.get("FAREGATE_TEST_LEAN_HTTP", "1") != "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """No provider key leaks in from the machine, so the simulator is the only upstream."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["FAREGATE_MASTER_KEY"] = MASTER_KEY
    env.update(extra)
    return env


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], timeout: float = 30, log_path: Path | None = None
) -> None:
    """Wait for `url` to answer 200; a process that exits first fails with the end of its log,
    so a start-up failure in CI says why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = "\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"process for {url} exited with {process.returncode}{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy in {timeout}s")


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Poll for a condition that background work makes true (a cache write, a queued request)
    instead of sleeping a fixed time that a busy machine may not honour."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(0.02)


def stored_record(gateway: GatewayProcess, request_id: str, timeout_s: float = 15.0) -> sqlite3.Row:
    """The request's row in the gateway's SQLite store, once its record writer (which batches)
    has written it."""
    found: list[sqlite3.Row] = []

    def written() -> bool:
        with closing(sqlite3.connect(gateway.store_path / "faregate.db")) as db:
            db.row_factory = sqlite3.Row
            found[:] = db.execute(
                "SELECT * FROM request_records WHERE request_id = ?", (request_id,)
            ).fetchall()
        return bool(found)

    wait_until(written, f"the record of {request_id}", timeout_s)
    return found[0]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class SimProcess:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    config: Path
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def store_path(self) -> Path:
        return self.workdir / "store"

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_sim(workdir: Path, script: str | None = None) -> Iterator[SimProcess]:
    port = free_port()
    args = [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(port)]
    if script is not None:
        path = workdir / "sim.yaml"
        path.write_text(script)
        args += ["--script", str(path)]
    log = open(workdir / "sim.log", "wb")
    process = subprocess.Popen(args, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path=workdir / "sim.log")
        yield SimProcess(port, process)
    finally:
        stop(process)
        log.close()


@contextmanager
def run_gateway(
    workdir: Path,
    sim: SimProcess | None,
    extra_config: str = "",
    first_byte_timeout_s: float = 1.5,
    env: dict[str, str] | None = None,
    lean_http: bool | None = None,
    stream_idle_timeout_s: float | None = None,
) -> Iterator[GatewayProcess]:
    """A gateway on `sim` (None: the config's providers, enabled by the keys in `env`);
    `lean_http` None: as LEAN_HTTP says; `stream_idle_timeout_s` None: the sim section's default."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "faregate.yaml"
    lean = LEAN_HTTP if lean_http is None else lean_http
    lines = [
        f"server: {{port: {port}, max_body_bytes: 1048576, request_timeout_s: 20, workers: 1, "
        f"lean_http: {str(lean).lower()}}}",
        f"store: {{path: {str(workdir / 'store')!r}}}",
    ]
    if "records:" not in extra_config:
        lines.append("records: {flush_interval_s: 0.05}")
    if sim is not None:
        idle = "" if stream_idle_timeout_s is None else f", stream_idle_timeout_s: {stream_idle_timeout_s}"
        lines.append(
            f"sim: {{mode: 'on', launch: false, port: {sim.port}, "
            f"first_byte_timeout_s: {first_byte_timeout_s}{idle}}}"
        )
    config.write_text("\n".join(lines) + "\n" + extra_config)
    with serving(workdir, port, config, env, log_mode="wb") as gateway:
        yield gateway


@contextmanager
def serving(
    workdir: Path, port: int, config: Path, env: dict[str, str] | None, log_mode: str
) -> Iterator[GatewayProcess]:
    """`faregate serve` with `config` (which says `port`), healthy, its output in
    workdir/gateway.log (opened with `log_mode`: "ab" keeps an earlier run's); stopped after."""
    log_path = workdir / "gateway.log"
    log = open(log_path, log_mode)
    process = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
        env=clean_env(**(env or {})),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, log_path=log_path)
        yield GatewayProcess(port, process, workdir, config, log_path)
    finally:
        stop(process)
        log.close()


def health_counter(gateway: GatewayProcess, name: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}/health", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.load(response)["counters"][name])


@contextmanager
def cache_written(gateway: GatewayProcess, counter: str = "cache_writes") -> Iterator[None]:
    """After the block, wait until the gateway has written the block's answer to its cache
    (written in the background, just after the response)."""
    before = health_counter(gateway, counter)
    yield
    wait_until(lambda: health_counter(gateway, counter) > before, f"{counter} passes {before}")


def create_key(store_path: Path, name: str = "test", premium: bool = False) -> str:
    async def make() -> str:
        from faregate.accounts.keys import KeyStore
        from faregate.store.sqlite.store import SQLiteStore

        store = await SQLiteStore.open(store_path)
        try:
            _, raw = await KeyStore(store).create(name=name, premium=premium)
        finally:
            await store.close()
        return raw

    return asyncio.run(make())
