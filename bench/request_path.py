"""How many of the gateway's modules one chat completion crosses, and how often it hops between them.

Runs the provider simulator and the gateway in this process (loopback sockets, the real upstream
transport, default settings as `make run` has them: metering off, the exact cache on), sends a few
warm-up requests, then traces `--runs` non-streaming and `--runs` streaming chat completions with
`sys.setprofile`. Counted are the `faregate.*` modules (the simulator's own `faregate.sim.*` left
out) whose functions run for the request:

- modules: distinct modules with at least one function called;
- hops: calls into a function of one module from a function of another (a coroutine resumed by
  the event loop is not a new call; a callback the loop makes has no faregate caller: not a hop);
- edges: distinct (caller module, callee module) pairs among those hops;
- package edges: the same between packages (faregate.server, faregate.routing, ...; a top-level
  module such as faregate.types counts as a package of its own).

Each figure is the median over the runs (background loops may add a module to one run). Hops grow
with the number of chunks a stream has (each chunk is read and written through calls); the edges
do not.

Usage: python bench/request_path.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import aiohttp

SKIP = ("faregate.sim",)
BODY = {"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": "Say hello"}]}


def module_of(frame: FrameType) -> str | None:
    name = str(frame.f_globals.get("__name__", ""))
    if name.startswith("faregate.") and not name.startswith(SKIP):
        return name
    return None


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


@dataclass
class Trace:
    seen: set[FrameType] = field(default_factory=set)
    modules: Counter[str] = field(default_factory=Counter)
    first_seen: list[str] = field(default_factory=list)
    edges: Counter[tuple[str, str]] = field(default_factory=Counter)
    hops: int = 0

    def package_edges(self) -> set[tuple[str, str]]:
        pairs = {(package(a), package(b)) for a, b in self.edges}
        return {(a, b) for a, b in pairs if a != b}

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = module_of(frame)
        if module is None or frame in self.seen:
            return  # not ours, or a coroutine resumed (the set keeps its frame alive, so ids stay unique)
        self.seen.add(frame)
        if module not in self.modules:
            self.first_seen.append(module)
        self.modules[module] += 1
        caller = frame.f_back
        while caller is not None and module_of(caller) is None:
            caller = caller.f_back
        source = module_of(caller) if caller is not None else None
        if source is not None and source != module:
            self.hops += 1
            self.edges[(source, module)] += 1


async def one(session: aiohttp.ClientSession, url: str, key: str, stream: bool) -> None:
    body = {**BODY, "stream": stream}
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
        await response.read()
        assert response.status == 200, response.status


async def measure(runs: int) -> dict[str, Any]:
    from aiohttp import web

    from faregate.config import load_settings
    from faregate.providers.registry import with_simulator
    from faregate.server.app import build_gateway, create_app
    from faregate.server.runner import GatewayRunner
    from faregate.sim.server import start

    with tempfile.TemporaryDirectory() as scratch:
        sim = await start(catalog_names=[])
        settings = with_simulator(load_settings(overrides={"store": {"path": scratch}}), sim.base_url)
        gateway = await build_gateway(settings)
        runner = GatewayRunner(create_app(gateway), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        _, key = await gateway.keys.create(name="trace")
        results: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession() as session:
                for stream in (False, True, False, True):
                    await one(session, url, key, stream)  # warm-up: lazy imports, first connections
                for stream in (False, True):
                    traces = []
                    for _ in range(runs):
                        trace = Trace()
                        sys.setprofile(trace)
                        try:
                            await one(session, url, key, stream)
                        finally:
                            sys.setprofile(None)
                        traces.append(trace)
                    every = set.intersection(*(set(t.modules) for t in traces))
                    results["stream" if stream else "whole"] = {
                        "modules": statistics.median(len(t.modules) for t in traces),
                        "hops": statistics.median(t.hops for t in traces),
                        "edges": statistics.median(len(t.edges) for t in traces),
                        "package_edges": statistics.median(len(t.package_edges()) for t in traces),
                        "path": [m for m in traces[0].first_seen if m in every],
                    }
        finally:
            await runner.cleanup()
            await sim.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures and paths as JSON")
    args = parser.parse_args()
    results = asyncio.run(measure(args.runs))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for kind, label in (("whole", "non-streaming"), ("stream", "streaming")):
        r = results[kind]
        print(
            f"{label}: {r['modules']:g} modules, {r['hops']:g} hops, {r['edges']:g} module-to-module edges, "
            f"{r['package_edges']:g} package-to-package edges"
        )
        for i, module in enumerate(r["path"], 1):
            print(f"  {i:2}. {module}")


if __name__ == "__main__":
    main()
