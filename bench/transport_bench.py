"""Upstream client cost: aiohttp's ClientSession against faregate's transport, in one run.

Starts the provider simulator (pinned to CPU 1, beside wrk) and, one after another, a tiny
aiohttp server pinned to CPU 0 that answers each POST by:

  canned     returning a fixed body (the ceiling: the server alone, no upstream call)
  aiohttp    proxying it upstream with aiohttp.ClientSession.post (the old hot path)
  transport  proxying it upstream with faregate's ConnectionPool (the new hot path)
  provider   calling OpenAICompatibleProvider.complete (the transport plus JSON parse/serialise)

each driven by `wrk -t1 -c64` with the same chat-completions body; reports requests/s and the
server's CPU µs per request (from its process CPU time), with the ratio to aiohttp.

Usage: python bench/transport_bench.py [--duration 5] [--modes canned,aiohttp,transport,provider]
       [--out bench/results/transport.json]
Needs `wrk` (Debian package). Only talks to 127.0.0.1, on free ports picked by the OS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

BODY = {
    "model": "deepseek-v4-flash",
    "messages": [{"role": "user", "content": "Say hello"}],
    "sim": {"answer": {"lorem": 12}},
}
MODES = ("canned", "aiohttp", "transport", "provider")
CANNED = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"deepseek-v4-flash","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Lorem ipsum dolor sit amet."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int, args: list[str]) -> list[str]:
    many = (os.cpu_count() or 1) > 1
    return ["taskset", "-c", str(cpu), *args] if shutil.which("taskset") and many else args


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy after {timeout_s:.0f}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wrk(url: str, duration_s: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,'
            " latency:percentile(50), latency:percentile(99),"
            " summary.errors.status + summary.errors.connect"
            " + summary.errors.read + summary.errors.timeout))\n"
            "end\n"
        )
    try:
        args = ["wrk", "-t1", "-c64", f"-d{duration_s}s", "--timeout", "5s", "-s", lua.name, url]
        out = subprocess.run(
            pinned(1, args), capture_output=True, text=True, check=True, timeout=duration_s + 30
        ).stdout
    finally:
        os.unlink(lua.name)
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not match:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    requests, duration_us, p50, p99, errors = (int(x) for x in match.groups())
    return {
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "requests": requests,
        "errors": errors,
    }


def measure(mode: str, upstream: str, duration_s: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        pinned(0, [sys.executable, __file__, "--serve", mode, "--port", str(port), "--upstream", upstream])
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", server)
        wrk(f"{url}/v1/chat/completions", 1)  # warm up: connections, caches
        cpu = psutil.Process(server.pid).cpu_times()
        result = wrk(f"{url}/v1/chat/completions", duration_s)
        after = psutil.Process(server.pid).cpu_times()
        used_s = (after.user + after.system) - (cpu.user + cpu.system)
        result["cpu_us_per_request"] = used_s * 1e6 / max(result["requests"], 1)
        return result
    finally:
        stop(server)


# --- the proxy under test (runs in its own pinned process) --------------------------------------


def serve(mode: str, port: int, upstream: str) -> None:
    import uvloop
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        handler, cleanup = await make_handler(mode, upstream)
        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await cleanup()
            await runner.cleanup()

    uvloop.run(main())


async def make_handler(mode: str, upstream: str) -> tuple[Any, Any]:
    from aiohttp import web

    chat_url = upstream.rstrip("/") + "/chat/completions"

    async def nothing() -> None:
        pass

    if mode == "canned":

        async def canned(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=CANNED, content_type="application/json")

        return canned, nothing

    if mode == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1000, keepalive_timeout=30, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        headers = {"Content-Type": "application/json"}

        async def via_aiohttp(request: web.Request) -> web.Response:
            body = await request.read()
            async with session.post(chat_url, data=body, headers=headers) as resp:
                data = await resp.read()
                return web.Response(body=data, status=resp.status, content_type="application/json")

        return via_aiohttp, session.close

    from faregate.providers.http import USER_AGENT
    from faregate.providers.registry import make_upstream_pool

    pool = make_upstream_pool()
    if mode == "transport":
        from faregate.providers.http_framing import Endpoint, request_bytes, request_head

        endpoint = Endpoint(chat_url)
        head = request_head(endpoint, {"User-Agent": USER_AGENT, "Content-Type": "application/json"})

        async def via_transport(request: web.Request) -> web.Response:
            body = await request.read()
            resp = await pool.request(
                endpoint, request_bytes(head, body), head_timeout_s=60, total_timeout_s=600
            )
            try:
                data = await resp.read()
            finally:
                resp.release()
            return web.Response(body=data, status=resp.status, content_type="application/json")

        return via_transport, pool.close

    import orjson

    from faregate.catalog.models import Offer
    from faregate.config import ProviderSettings
    from faregate.providers.base import UpstreamCall
    from faregate.providers.openai_compat import OpenAICompatibleProvider
    from faregate.types import Price

    provider = OpenAICompatibleProvider("sim", ProviderSettings(base_url=upstream), pool)
    offer = Offer("deepseek-v4-flash", "sim", "deepseek-v4-flash", Price(Decimal(0), Decimal(0)), True)

    async def via_provider(request: web.Request) -> web.Response:
        call = UpstreamCall(offer, orjson.loads(await request.read()), False, 60.0, 600.0)
        completion = await provider.complete(call)
        return web.Response(body=orjson.dumps(completion.body), content_type="application/json")

    return via_provider, pool.close


# --- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return
    if shutil.which("wrk") is None:
        sys.exit("needs wrk (apt-get install wrk)")
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        sys.exit(f"unknown modes: {sorted(unknown)}")

    sim_port = free_port()
    sim = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port)]),
        stdout=subprocess.DEVNULL,
    )
    results: dict[str, dict[str, float]] = {}
    try:
        wait_healthy(f"http://127.0.0.1:{sim_port}/health", sim)
        upstream = f"http://127.0.0.1:{sim_port}/v1"
        for mode in modes:
            results[mode] = measure(mode, upstream, args.duration)
            r = results[mode]
            print(
                f"{mode:>10}: {r['rps']:8.0f} req/s  {r['cpu_us_per_request']:6.0f} µs CPU/req  "
                f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  errors {r['errors']:.0f}",
                flush=True,
            )
    finally:
        stop(sim)
    if "aiohttp" in results:
        base = results["aiohttp"]["rps"]
        for mode in ("transport", "provider"):
            if mode in results:
                print(f"{mode} / aiohttp: {results[mode]['rps'] / base:.2f}x req/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"duration_s": args.duration, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
