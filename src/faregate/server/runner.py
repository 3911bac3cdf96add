"""Run the gateway process: start the simulator when needed, serve, shut down cleanly.

SIGTERM and SIGINT stop accepting connections, let the app's cleanup flush every
pending request record, then stop the simulator this process started. A port that cannot be
listened on is a StartupError (one line from the CLI), not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
from aiohttp import HttpVersion11, web

from faregate.config import Settings, in_config_file
from faregate.errors import ConfigError, StartupError
from faregate.lifecycle import drain
from faregate.providers.registry import simulator_active, with_simulator
from faregate.server.app import (
    FAST_ROUTES,
    GATEWAY,
    LEAN_ROUTES,
    FastRoutes,
    Gateway,
    build_gateway,
    create_app,
)
from faregate.server.http_errors import errors_in_openai_format
from faregate.server.lean_server import LeanServer
from faregate.telemetry import log_limit
from faregate.telemetry.metrics_share import SharedMetrics

log = logging.getLogger("faregate")

# Net new container objects (allocations minus deallocations) between two young collections.
# CPython's 700 made the cyclic collector ~10% of the gateway's CPU under load (bench/README.md).
GC_YOUNG_THRESHOLD = 10_000

Announce = Callable[[Gateway, str], Awaitable[None]]
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server sends the hot path (`app[FAST_ROUTES]`: method and path to
    handler) straight to its handler, skipping the router and the middlewares: the chat
    handler answers every error itself, and route resolution was a measurable share of the
    CPU spent per request. With `lean`, the listening socket serves `app[LEAN_ROUTES]` through the
    lean httptools server and hands every other request to that aiohttp server
    (server/lean_server.py).

    Its stop drains: once the listening socket is closed and the idle connections with it, the
    requests in flight on either server get `drain_timeout_s` in all; then those left are
    cancelled, and each has settled and queued its record before the app's cleanup flushes the
    records. (aiohttp alone waited twice its shutdown timeout, then cancelled its handlers without
    waiting for them: their records came after the last flush and were lost.)"""

    def __init__(
        self, app: web.Application, *, lean: bool = False, drain_timeout_s: float = 60.0, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.lean = lean
        self.drain_timeout_s = drain_timeout_s
        # The tasks in which aiohttp runs a request's handler now (the lean server keeps its own).
        self.serving: set[asyncio.Task[Any]] = set()

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        routed: Handler = server.request_handler
        fast: FastRoutes = self.app.get(FAST_ROUTES, {})
        serving = self.serving

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            task = asyncio.current_task()
            if task is not None:
                serving.add(task)
            try:
                route = fast.get((request.method, request.path))
                if route is None:
                    return await routed(request)
                if request.headers.get("Expect", "").lower() == "100-continue":
                    await _continue(request)
                # The server's request factory is the app's, so this is a full web.Request.
                return await route(cast(web.Request, request))
            finally:
                serving.discard(task)

        server.request_handler = handler
        errors_in_openai_format(server)  # aiohttp's own error answers too (server/http_errors.py)
        if not self.lean:
            return server
        max_body_bytes = self.app[GATEWAY].settings.server.max_body_bytes
        return LeanServer(server, self.app.get(LEAN_ROUTES, {}), max_body_bytes)

    async def shutdown(self) -> None:
        """Called by `cleanup` after the sites stopped and idle connections were closed, before
        the servers' own shutdown and the app's cleanup: one deadline for every request in flight."""
        in_flight = set(self.serving)
        if isinstance(self.server, LeanServer):
            in_flight |= self.server.tasks
        await drain(in_flight, self.drain_timeout_s)
        await super().shutdown()


async def _continue(request: web.BaseRequest) -> None:
    """aiohttp's router says 100 Continue (its expect handler) before a handler runs; the hot
    POSTs skip the router, so a client that waits for it before sending its body waited (curl a
    second, others until their own timeout). Said as the router says it, unless the body has
    all come already (as the lean server leaves it out then)."""
    if request.version == HttpVersion11 and not request.content.is_eof():
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's size starts after it, as aiohttp counts it


def tune_gc() -> None:
    """Once the gateway is built: move everything allocated so far (the catalog, the config,
    imported modules: ~90,000 objects that live as long as the process) out of the cyclic
    collector's reach, and collect the young generation every GC_YOUNG_THRESHOLD net new objects
    instead of 700. Measured under load (bench/profile_request.py, 64 connections): the full
    collections took ~17 µs per request (one of ~60 ms every ~3,000 requests, scanning the
    catalog) and the young ones ~15 µs, as every collection re-traversed the live objects of the
    requests in flight; together ~0.5 µs per request after. Garbage in reference cycles (a
    failed request's exception and traceback) waits for at most that many new objects."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def free_port(host: str) -> int:
    """A port nobody listens on now. Another process could take it before the simulator binds it;
    then the simulator fails to start and says so, and the gateway stops with that error."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def simulator_port(settings: Settings) -> int:
    if settings.sim.port:
        return settings.sim.port
    if not settings.sim.launch:
        raise ConfigError("sim.port: give the port of the running simulator (sim.launch is false)")
    return free_port(settings.sim.host)


def simulator_command(settings: Settings, port: int, config_path: str | None = None) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "faregate.cli.main",
        "sim",
        "--host",
        settings.sim.host,
        "--port",
        str(port),
    ]
    if settings.sim.script:
        args += ["--script", settings.sim.script]
    if config_path:
        args += ["--config", config_path]
    return args


def check_simulator_port(settings: Settings, port: int) -> None:
    if _port_taken(settings.sim.host, port):
        # Never serve through whatever holds the port (an orphan of a killed gateway, once).
        raise StartupError(
            f"cannot start the provider simulator: {settings.sim.host}:{port} is already in use"
        )


async def start_simulator(
    settings: Settings, config_path: str | None = None, port: int | None = None
) -> asyncio.subprocess.Process:
    """The simulator runs as its own process so it never competes with the gateway's event loop."""
    port_used = port if port is not None else settings.sim.port
    check_simulator_port(settings, port_used)
    # Its "ready" line is for people who start it themselves; its errors still reach stderr.
    return await asyncio.create_subprocess_exec(
        *simulator_command(settings, port_used, config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        preexec_fn=simulator_apart,
    )


def simulator_apart() -> None:
    """In the simulator's process before it runs: a process group of its own, and dead with its
    parent. Ctrl-C in a terminal signals the whole foreground process group; in the gateway's, the
    simulator would stop at once and fail the requests in flight that the gateway lets finish. The
    gateway stops it after them, and the kernel if the gateway dies first."""
    os.setpgid(0, 0)
    die_with_parent()


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the simulator's process before it runs (and in each worker of `serve --workers`): the
    kernel sends it SIGTERM when its parent dies, however it dies (kill -9 included), so it never
    outlives the gateway and keeps its port (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_taken(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


async def wait_healthy(url: str, timeout_s: float, process: asyncio.subprocess.Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process is not None and process.returncode is not None:
                raise RuntimeError(f"process serving {url} exited with code {process.returncode}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s:.0f}s")


async def serve(settings: Settings, announce: Announce | None = None, config_path: str | None = None) -> None:
    """One gateway process: it starts the simulator when it stands in for the providers."""
    sim_process: asyncio.subprocess.Process | None = None
    sim_base_url: str | None = None
    if simulator_active(settings):
        sim_port = simulator_port(settings)
        if settings.sim.launch:
            sim_process = await start_simulator(settings, config_path, sim_port)
        sim_base_url = f"http://{settings.sim.host}:{sim_port}/v1"
        settings = with_simulator(settings, sim_base_url)

    async def simulator_ready() -> None:
        if sim_base_url is not None:
            try:
                await wait_healthy(sim_base_url.removesuffix("/v1") + "/health", 30, sim_process)
            except RuntimeError as exc:
                raise StartupError(f"the provider simulator did not start: {exc}") from None

    try:
        await serve_gateway(
            settings, announce, before_listening=simulator_ready, simulated=sim_base_url is not None
        )
    finally:
        if sim_process is not None and sim_process.returncode is None:
            sim_process.terminate()
            try:
                await asyncio.wait_for(sim_process.wait(), 5)
            except TimeoutError:
                sim_process.kill()


async def serve_gateway(
    settings: Settings,
    announce: Announce | None = None,
    *,
    before_listening: Callable[[], Awaitable[None]] | None = None,
    on_listening: Callable[[], None] | None = None,
    reuse_port: bool = False,
    simulated: bool = False,
    shared_metrics: SharedMetrics | None = None,
    announce_alerts: bool = True,
) -> None:
    """Build the gateway, listen, serve until SIGTERM or SIGINT, then close it (the last
    records flushed). `reuse_port`: one of several worker processes listening on the same port
    (server/workers.py). `announce_alerts`: log the alerts that fire and resolve (one worker of
    several does)."""
    runner: web.AppRunner | None = None
    gateway: Gateway | None = None
    try:
        gateway = await build_gateway(settings)
        gateway.shared_metrics = shared_metrics
        insights = gateway.observability.insights if gateway.observability is not None else None
        if insights is not None:
            insights.alerts.announce = announce_alerts
        if before_listening is not None:
            await before_listening()
        app = create_app(gateway)
        runner = GatewayRunner(
            app,
            lean=settings.server.lean_http,
            drain_timeout_s=settings.server.drain_timeout_s,
            access_log=None,
            handle_signals=False,
        )
        await runner.setup()
        tune_gc()
        site = web.TCPSite(
            runner,
            settings.server.host,
            settings.server.port,
            backlog=4096,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
        # Before listening: a stop from the first request on drains it and flushes its record
        # (one during the announce, a store write away, killed the process, requests and all).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await listen(site, settings.server.host, settings.server.port)
        base_url = settings.server.base_url
        log.info("faregate listening on %s%s", base_url, " (simulated providers)" if simulated else "")
        if on_listening is not None:
            on_listening()
        if announce is not None:
            await announce(gateway, base_url)
        await stop.wait()
        log.info("shutting down: flushing request records")
    finally:
        if runner is not None:
            await runner.cleanup()  # the app's cleanup closes the gateway
        elif gateway is not None:
            # Failed before there was an app (the simulator did not start): its stores' threads
            # would keep the process alive after the error.
            await gateway.close()


async def listen(site: web.TCPSite, host: str, port: int) -> None:
    try:
        await site.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen on {host}:{port}: the port is in use (another faregate?); "
                "choose another with --port or server.port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run(settings: Settings, announce: Announce | None = None, config_path: str | None = None) -> None:
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A failure repeated by every request (a store down) is written once per interval, not each time.
    log_limit.install()
    try:
        uvloop.run(serve(settings, announce, config_path))
    except ConfigError as exc:
        if config_path is None:
            raise
        raise ConfigError(in_config_file(str(exc), config_path)) from None
