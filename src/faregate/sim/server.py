"""Running the simulator: in-process for tests (`start`), as a server (`serve`, `run`)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from aiohttp import web

from faregate.config import config_path, load_settings
from faregate.errors import StartupError
from faregate.sim.script import Script, load_script
from faregate.sim.simulator import Simulator
from faregate.wire.model_params import effort_list, refused_params

# A hung request is cancelled when its client gives up, so there is nothing worth waiting for at shutdown.
SHUTDOWN_TIMEOUT_S = 0.5
SIMULATOR_KEY = web.AppKey("simulator", Simulator)


def catalog_model_names(config: str | Path | None = None) -> list[str]:
    """The curated catalog's model names (the config's `models`), without loading the broad catalog."""
    return list(load_settings(config_path(str(config) if config is not None else None)).models)


def catalog_refusals(config: str | Path | None = None) -> dict[str, frozenset[str]]:
    """The settings each curated model refuses (ModelSettings.reasoning, .sampling), which the
    simulator refuses as the model's real API does."""
    models = load_settings(config_path(str(config) if config is not None else None)).models
    refused = {name: refused_params(ms.reasoning, ms.sampling) for name, ms in models.items()}
    return {name: params for name, params in refused.items() if params}


def catalog_efforts(config: str | Path | None = None) -> dict[str, tuple[str, ...]]:
    """The efforts each curated model that lists them takes (ModelSettings.efforts): any other
    the simulator refuses, as the model's real API does."""
    models = load_settings(config_path(str(config) if config is not None else None)).models
    return {name: effort_list(ms.efforts) for name, ms in models.items() if ms.efforts is not None}


def create_app(
    script: Script | None = None, *, catalog_names: Iterable[str] | None = None
) -> web.Application:
    """An aiohttp Application, for embedding or aiohttp's test client (`start` uses the faster low-level
    server).

    catalog_names: the names /v1/models lists besides the script's; None reads them from the config.
    """
    simulator = _simulator(script, catalog_names)
    app = web.Application()
    app[SIMULATOR_KEY] = simulator

    async def warm_up(app: web.Application) -> None:
        simulator.start_warming()

    app.on_startup.append(warm_up)
    app.router.add_route("*", "/{path:.*}", simulator.handle)
    return app


@dataclass(slots=True)
class RunningSim:
    simulator: Simulator
    runner: web.BaseRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as base_url."""
        return f"{self.url}/v1"

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningSim:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def start(
    script: Script | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    catalog_names: Iterable[str] | None = None,
    warm: bool = True,
    refusals: Mapping[str, frozenset[str]] | None = None,
    efforts: Mapping[str, tuple[str, ...]] | None = None,
) -> RunningSim:
    """Listen on host:port (0 picks a free port). With `warm`, returns once the tokenizer is loaded;
    it loads in a thread while the socket is already open, and requests that need it wait for it.
    `refusals`: the settings each model refuses, `efforts` the efforts each model listed takes
    (sim/refusals.py; none unless given)."""
    simulator = _simulator(script, catalog_names, refusals, efforts)
    simulator.start_warming()
    server = web.Server(simulator.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException as exc:
        await runner.cleanup()
        if isinstance(exc, OSError):
            # One line from the CLI, not a traceback (a busy port is the usual case).
            reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise StartupError(f"the simulator cannot listen on {host}:{port}: {reason}") from None
        raise
    bound = runner.addresses[0][1] if port == 0 else port
    if warm:
        await simulator.warm()
    return RunningSim(simulator, runner, host, bound)


async def serve(
    script: Script | None = None,
    host: str = "127.0.0.1",
    port: int = 4001,
    *,
    catalog_names: Iterable[str] | None = None,
    refusals: Mapping[str, frozenset[str]] | None = None,
    efforts: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Run until cancelled; prints one line ending in the base URL once ready."""
    running = await start(script, host, port, catalog_names=catalog_names, refusals=refusals, efforts=efforts)
    print(f"faregate sim ready at {running.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


def run(
    host: str = "127.0.0.1",
    port: int = 4001,
    script_path: str | Path | None = None,
    *,
    config: str | Path | None = None,
) -> None:
    """Load the script and serve on uvloop until interrupted. `config` is the faregate config whose
    curated models /v1/models lists (default: $FAREGATE_CONFIG or ./faregate.yaml, else built-ins)."""
    import uvloop

    script = load_script(script_path)
    names = catalog_model_names(config) if script.catalog_models else []
    try:
        refusals, efforts = catalog_refusals(config), catalog_efforts(config)
        uvloop.run(serve(script, host, port, catalog_names=names, refusals=refusals, efforts=efforts))
    except KeyboardInterrupt:
        pass


def _simulator(
    script: Script | None,
    catalog_names: Iterable[str] | None,
    refusals: Mapping[str, frozenset[str]] | None = None,
    efforts: Mapping[str, tuple[str, ...]] | None = None,
) -> Simulator:
    script = script if script is not None else Script()
    if catalog_names is None:
        catalog_names = catalog_model_names() if script.catalog_models else []
    return Simulator(script, catalog_names, refusals, efforts)
