"""Gateway overhead and throughput, measured against the direct upstream in the same run.

Starts the provider simulator (pinned to CPU 1, with the load generators) and the
gateway (one process, one worker, pinned to CPU 0, with request records and all
bookkeeping on), then drives the same load direct and through the gateway:

  1. latency at concurrency 1 (sequential requests, aiohttp client)  -> added p50/p99
  2. throughput against an instant upstream (wrk, 64 connections)    -> requests/s
  3. throughput against a 200 ms upstream at concurrency 256 (wrk)   -> % of the ideal 1,280 req/s
  4. streaming time to first token at concurrency 16                 -> added TTFT p50
  and the gateway's CPU ms per request, its RSS after the runs, and its time to healthy.

Usage: python bench/overhead.py [--duration 10] [--out bench/results/overhead.json]
Needs `wrk` (Debian package). Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
MODEL = "deepseek-v4-flash"
UPSTREAM_MODEL = "deepseek-ai/DeepSeek-V4-Flash"
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, args: list[str]) -> list[str]:
    return (
        ["taskset", "-c", str(cpu), *args]
        if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1
        else args
    )


def wait_healthy(url: str, timeout: float = 30) -> float:
    import urllib.request

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


def body(stream: bool = False, ttft_ms: int = 0, tokens: int = 12) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "sim": {"ttft_ms": ttft_ms, "answer": {"lorem": tokens}, "tokens_per_s": 0},
    }
    if stream:
        payload["stream"] = True
    return payload


def wrk(url: str, key: str, payload: dict[str, Any], connections: int, duration: int) -> dict[str, float]:
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(payload))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,'
        " latency:percentile(50), latency:percentile(99),"
        " summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))\n"
        "end\n"
    )
    lua.close()
    threads = 1
    out = subprocess.run(
        pinned(
            1,
            [
                "wrk",
                "-t",
                str(threads),
                "-c",
                str(connections),
                "-d",
                f"{duration}s",
                "--timeout",
                "10s",
                "-s",
                lua.name,
                url,
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
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


async def sequential(url: str, key: str, n: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = orjson.dumps(body())
    times = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 50):
            t0 = time.perf_counter()
            async with session.post(url, data=data, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            if i >= 50:  # warm-up excluded
                times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


async def streaming_ttft(url: str, key: str, concurrency: int, per_worker: int) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = orjson.dumps(body(stream=True, ttft_ms=20, tokens=40))
    ttfts: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in range(per_worker):
            t0 = time.perf_counter()
            first = None
            async with session.post(url, data=data, headers=headers) as response:
                assert response.status == 200, response.status
                async for line in response.content:
                    if (
                        first is None
                        and line.startswith(b"data: {")
                        and b'"content":"' in line
                        and b'"content":""' not in line
                    ):
                        first = time.perf_counter()
            if first is not None:
                ttfts.append((first - t0) * 1000)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    ttfts.sort()
    return {"p50_ms": statistics.median(ttfts), "p99_ms": ttfts[int(len(ttfts) * 0.99) - 1], "n": len(ttfts)}


def create_key(store: Path) -> str:
    code = (
        "import asyncio, sys\n"
        "from faregate.store.sqlite import SQLiteStore\n"
        "from faregate.accounts.keys import KeyStore\n"
        "async def main():\n"
        f"    store = await SQLiteStore.open({str(store)!r})\n"
        "    _, raw = await KeyStore(store).create(name='bench')\n"
        "    await store.close()\n"
        "    print(raw)\n"
        "asyncio.run(main())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--sequential", type=int, default=2000, help="requests in the concurrency-1 run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="faregate-bench-"))
    sim_port, gw_port = free_port(), free_port()
    config = work / "faregate.yaml"
    config.write_text(
        f"server: {{port: {gw_port}, announce: false}}\n"
        f"store: {{path: {str(work / 'store')!r}}}\n"
        f"sim: {{mode: 'on', launch: false, port: {sim_port}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    processes: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        sim = subprocess.Popen(
            pinned(1, [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port)]),
            env=env,
            stdout=subprocess.DEVNULL,
        )
        processes.append(sim)
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        key = create_key(work / "store")
        gateway = subprocess.Popen(
            pinned(0, [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)]),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "gateway.log", "wb"),
        )
        processes.append(gateway)
        results["healthy_s"] = wait_healthy(f"http://127.0.0.1:{gw_port}/health")
        gw_proc = psutil.Process(gateway.pid)
        direct = f"http://127.0.0.1:{sim_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"

        print("1/4 concurrency 1 ...", flush=True)
        results["c1_direct"] = asyncio.run(sequential(direct, key, args.sequential))
        results["c1_gateway"] = asyncio.run(sequential(via, key, args.sequential))

        print("2/4 throughput, instant upstream ...", flush=True)
        results["instant_direct"] = wrk(direct, key, body(), 64, args.duration)
        cpu0 = gw_proc.cpu_times()
        results["instant_gateway"] = wrk(via, key, body(), 64, args.duration)
        cpu1 = gw_proc.cpu_times()
        used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        results["gateway_cpu_ms_per_request"] = used * 1000 / max(results["instant_gateway"]["requests"], 1)

        print("3/4 throughput, 200 ms upstream, 256 connections ...", flush=True)
        results["slow_direct"] = wrk(direct, key, body(ttft_ms=200), 256, args.duration)
        results["slow_gateway"] = wrk(via, key, body(ttft_ms=200), 256, args.duration)

        print("4/4 streaming TTFT, concurrency 16 ...", flush=True)
        results["stream_direct"] = asyncio.run(streaming_ttft(direct, key, 16, 60))
        results["stream_gateway"] = asyncio.run(streaming_ttft(via, key, 16, 60))

        time.sleep(1.0)
        results["gateway_rss_mib"] = gw_proc.memory_info().rss / 2**20
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    summary = {
        "added_p50_ms_c1": results["c1_gateway"]["p50_ms"] - results["c1_direct"]["p50_ms"],
        "added_p99_ms_c1": results["c1_gateway"]["p99_ms"] - results["c1_direct"]["p99_ms"],
        "instant_rps_direct": results["instant_direct"]["rps"],
        "instant_rps_gateway": results["instant_gateway"]["rps"],
        "slow_rps_gateway": results["slow_gateway"]["rps"],
        "slow_share_of_ideal_1280": results["slow_gateway"]["rps"] / 1280,
        "added_ttft_p50_ms_c16": results["stream_gateway"]["p50_ms"] - results["stream_direct"]["p50_ms"],
        "gateway_cpu_ms_per_request": results["gateway_cpu_ms_per_request"],
        "gateway_rss_mib": results["gateway_rss_mib"],
        "healthy_s": results["healthy_s"],
    }
    results["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    targets = [
        ("added p50 at concurrency 1", f"{summary['added_p50_ms_c1']:.2f} ms", "< 1 ms"),
        (
            "requests/s, instant upstream",
            f"{summary['instant_rps_gateway']:.0f} (direct {summary['instant_rps_direct']:.0f})",
            ">= 2,000",
        ),
        (
            "requests/s, 200 ms upstream, c=256",
            f"{summary['slow_rps_gateway']:.0f} ({summary['slow_share_of_ideal_1280']:.1%} of 1,280)",
            ">= 95%",
        ),
        ("added TTFT p50, streaming c=16", f"{summary['added_ttft_p50_ms_c16']:.2f} ms", "< 2 ms"),
        ("gateway CPU per request", f"{summary['gateway_cpu_ms_per_request']:.3f} ms", ""),
        ("gateway RSS after the runs", f"{summary['gateway_rss_mib']:.0f} MiB", "< 150 MiB"),
        ("healthy after start", f"{summary['healthy_s']:.2f} s", "< 2 s"),
    ]
    print("\n| figure | measured | target |\n|---|---|---|")
    for name, value, target in targets:
        print(f"| {name} | {value} | {target} |")


if __name__ == "__main__":
    main()
