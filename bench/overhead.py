"""Gateway overhead and throughput, measured against the direct upstream in the same run.

Starts the provider simulator (pinned to CPU 1, with the load generators) and the
gateway (one process, one worker, pinned to CPU 0, with request records and all
bookkeeping on), then drives the same load direct and through the gateway:

  1. latency at concurrency 1 (sequential requests, aiohttp client)  -> added p50/p99
  2. throughput against an instant upstream (wrk, 64 connections)    -> requests/s
  3. throughput against a 200 ms upstream at concurrency 256 (wrk)   -> % of the ideal 1,280 req/s
  4. streaming time to first token at concurrency 16                 -> added TTFT p50
  and the gateway's CPU ms per request, its RSS after the runs, and its time to healthy.

Usage: python bench/overhead.py [--duration 10] [--sequential 2000] [--streams 60]
                                [--out bench/results/overhead.json]
(`--duration 1 --sequential 50 --streams 2` is the quick run the test suite makes.)
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


def body(stream: bool = False, ttft_ms: int = 0, tokens: int = 12, tokens_per_s: int = 0) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "sim": {"ttft_ms": ttft_ms, "answer": {"lorem": tokens}, "tokens_per_s": tokens_per_s},
    }
    if stream:
        payload["stream"] = True
    return payload


def wrk(
    url: str,
    key: str,
    payload: dict[str, Any],
    connections: int,
    duration: int,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """`headers`: more request headers (another wire's own, e.g. anthropic-version)."""
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    extra = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())
    lua.write(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(payload))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        + extra
        + "done = function(summary, latency, requests)\n"
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
    # A paced stream, as models send them: first token after 20 ms, then 100 tokens/s.
    data = orjson.dumps(body(stream=True, ttft_ms=20, tokens=40, tokens_per_s=100))
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
        "from faregate.store.sqlite.store import SQLiteStore\n"
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


def measure(
    name: str, url: str, key: str, args: argparse.Namespace, proc: psutil.Process | None
) -> dict[str, Any]:
    """The four scenarios against one target; CPU per request when the target's process is known."""
    out: dict[str, Any] = {}
    print(f"[{name}] 1/4 concurrency 1 ...", flush=True)
    out["c1"] = asyncio.run(sequential(url, key, args.sequential))
    print(f"[{name}] 2/4 throughput, instant upstream ...", flush=True)
    cpu0 = proc.cpu_times() if proc else None
    out["instant"] = wrk(url, key, body(), 64, args.duration)
    if proc is not None and cpu0 is not None:
        cpu1 = proc.cpu_times()
        used = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        out["cpu_ms_per_request"] = used * 1000 / max(out["instant"]["requests"], 1)
    print(f"[{name}] 3/4 throughput, 200 ms upstream, 256 connections ...", flush=True)
    out["slow"] = wrk(url, key, body(ttft_ms=200), 256, args.duration)
    print(f"[{name}] 4/4 streaming TTFT, concurrency 16 ...", flush=True)
    out["stream"] = asyncio.run(streaming_ttft(url, key, 16, args.streams))
    if proc is not None:
        time.sleep(1.0)
        out["rss_mib"] = proc.memory_info().rss / 2**20
    return out


def start_litellm(
    binary: str, sim_port: int, work: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{sim_port}/v1\n"
        "      api_key: sk-bench\n"
    )
    process = subprocess.Popen(
        pinned(0, [binary, "--config", str(config), "--port", str(port), "--num_workers", "1"]),
        # No database and no auth: the lightest LiteLLM setup (favourable to it).
        env={**env, "LITELLM_LOG": "ERROR", "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"},
        stdout=subprocess.DEVNULL,
        stderr=open(work / "litellm.log", "wb"),
    )
    healthy = wait_healthy(f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
    return process, port, healthy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--sequential", type=int, default=2000, help="requests in the concurrency-1 run")
    parser.add_argument(
        "--streams", type=int, default=60, help="streams per client in the TTFT run (16 clients)"
    )
    parser.add_argument("--litellm", help="path to a `litellm` proxy binary to measure side by side")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="faregate-bench-"))
    sim_port, gw_port = free_port(), free_port()
    config = work / "faregate.yaml"
    config.write_text(
        f"server: {{port: {gw_port}}}\n"
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
        results["direct"] = measure(
            "direct", f"http://127.0.0.1:{sim_port}/v1/chat/completions", key, args, None
        )

        gateway = subprocess.Popen(
            pinned(0, [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)]),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(work / "gateway.log", "wb"),
        )
        processes.append(gateway)
        healthy = wait_healthy(f"http://127.0.0.1:{gw_port}/health")
        results["faregate"] = measure(
            "faregate",
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            key,
            args,
            psutil.Process(gateway.pid),
        )
        results["faregate"]["healthy_s"] = healthy
        gateway.terminate()
        gateway.wait(10)

        if args.litellm:
            litellm, port, healthy = start_litellm(args.litellm, sim_port, work, env)
            processes.append(litellm)
            results["litellm"] = measure(
                "litellm",
                f"http://127.0.0.1:{port}/v1/chat/completions",
                key,
                args,
                psutil.Process(litellm.pid),
            )
            results["litellm"]["healthy_s"] = healthy
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(report(results))


def added(target: dict[str, Any], direct: dict[str, Any], scenario: str) -> float:
    return float(target[scenario]["p50_ms"] - direct[scenario]["p50_ms"])


def report(results: dict[str, Any]) -> str:
    direct = results["direct"]
    targets = [name for name in ("faregate", "litellm") if name in results]
    lines = [
        "| figure | direct | " + " | ".join(targets) + " | target (Faregate) |",
        "|---|---|" + "---|" * len(targets) + "---|",
    ]

    def row(label: str, direct_value: str, values: list[str], target: str) -> None:
        lines.append(f"| {label} | {direct_value} | " + " | ".join(values) + f" | {target} |")

    row(
        "p50 latency, concurrency 1",
        f"{direct['c1']['p50_ms']:.2f} ms",
        [f"{results[t]['c1']['p50_ms']:.2f} ms (+{added(results[t], direct, 'c1'):.2f})" for t in targets],
        "added < 1 ms",
    )
    row(
        "p99 latency, concurrency 1",
        f"{direct['c1']['p99_ms']:.2f} ms",
        [f"{results[t]['c1']['p99_ms']:.2f} ms" for t in targets],
        "",
    )
    row(
        "req/s, instant upstream, 64 conns",
        f"{direct['instant']['rps']:.0f}",
        [f"{results[t]['instant']['rps']:.0f}" for t in targets],
        ">= 2,000",
    )
    row(
        "req/s, 200 ms upstream, 256 conns",
        f"{direct['slow']['rps']:.0f}",
        [
            f"{results[t]['slow']['rps']:.0f} ({results[t]['slow']['rps'] / 1280:.1%} of 1,280)"
            for t in targets
        ],
        ">= 95% of 1,280",
    )
    row(
        "stream TTFT p50, concurrency 16",
        f"{direct['stream']['p50_ms']:.2f} ms",
        [
            f"{results[t]['stream']['p50_ms']:.2f} ms (+{added(results[t], direct, 'stream'):.2f})"
            for t in targets
        ],
        "added < 2 ms",
    )
    row(
        "CPU ms per request (instant run)",
        "",
        [f"{results[t].get('cpu_ms_per_request', 0):.3f}" for t in targets],
        "",
    )
    row("RSS after the runs", "", [f"{results[t].get('rss_mib', 0):.0f} MiB" for t in targets], "< 150 MiB")
    row("healthy after start", "", [f"{results[t].get('healthy_s', 0):.2f} s" for t in targets], "< 2 s")
    errors = {t: results[t]["instant"]["errors"] + results[t]["slow"]["errors"] for t in ["direct", *targets]}
    lines.append("")
    lines.append(f"wrk errors (non-2xx, timeouts): {errors}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
