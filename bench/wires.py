"""Every wire the gateway speaks, against the direct simulator, in one run: added latency and
throughput of /v1/chat/completions, /v1/messages and /v1/embeddings.

Starts the provider simulator (pinned to CPU 1, with the load generators) and the gateway (one
process, pinned to CPU 0, with records and all bookkeeping on), as bench/overhead.py does (its
helpers are used here), then for each wire, direct and through the gateway:

  1. latency at concurrency 1 (sequential requests, aiohttp client)   -> added p50 (and p99)
  2. throughput, instant upstream, fixed concurrency, time-bounded (wrk) -> requests/s
  and the gateway's CPU ms per request during its throughput run.

The upstream answers at once for every wire (the simulator's default: an echo of the prompt, or
one 1,536-dimension vector sent as base64, which is what the openai SDK asks for), so what is
measured is the gateway's own work per wire. A wire the gateway does not answer (404) is
reported as "skipped: 404". The issue's target: Messages and embeddings within 20% of the chat
figures (added p50, and gateway throughput as a share of the direct one).

The measurements are split into rounds, each measuring every wire in turn, so that a neighbour's
load on a shared machine falls on every wire alike.

Usage: python bench/wires.py [--duration 10] [--sequential 1000] [--rounds 5] [--connections 64]
                             [--out bench/results/wires.json]
(`--duration 1 --sequential 30 --rounds 1` is the quick run the test suite makes.) Needs `wrk`. Only talks
to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from overhead import create_key, free_port, pinned, wait_healthy, wrk

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Say hello in one short sentence."


@dataclass(frozen=True)
class Wire:
    name: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


WIRES = (
    Wire(
        "chat",
        "/v1/chat/completions",
        {"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": PROMPT}]},
    ),
    Wire(
        "messages",
        "/v1/messages",
        {"model": "deepseek-v4-flash", "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]},
        {"anthropic-version": "2023-06-01"},
    ),
    Wire(
        "embeddings",
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": PROMPT, "encoding_format": "base64"},
    ),
)


def headers_for(wire: Wire, key: str) -> dict[str, str]:
    # Both ways a key is sent: Bearer (OpenAI's SDK) and x-api-key (Anthropic's).
    return {
        "Authorization": f"Bearer {key}",
        "x-api-key": key,
        "Content-Type": "application/json",
        **wire.headers,
    }


async def probe(url: str, wire: Wire, key: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, data=orjson.dumps(wire.body), headers=headers_for(wire, key)
        ) as response:
            return response.status, (await response.text())[:300]


async def sequential(url: str, wire: Wire, key: str, n: int, warmup: int = 10) -> list[float]:
    """The latencies (ms) of `n` requests one after another, after `warmup` unmeasured ones."""
    data, headers = orjson.dumps(wire.body), headers_for(wire, key)
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + warmup):
            t0 = time.perf_counter()
            async with session.post(url, data=data, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}")
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return times


def throughput(
    url: str, wire: Wire, key: str, args: argparse.Namespace, seconds: int, proc: psutil.Process | None
) -> dict[str, float]:
    cpu0 = proc.cpu_times() if proc else None
    extra = {k: v for k, v in headers_for(wire, key).items() if k not in ("Authorization", "Content-Type")}
    out = wrk(url, key, wire.body, args.connections, seconds, headers=extra)
    if proc is not None and cpu0 is not None:
        cpu1 = proc.cpu_times()
        out["cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return out


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_ms": statistics.median(ordered), "p99_ms": ordered[max(int(len(ordered) * 0.99) - 1, 0)]}


def totals(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Several wrk runs as one: their requests over their time, and the gateway's CPU per request."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["requests"] / r["rps"] for r in runs if r["rps"])
    out: dict[str, Any] = {
        "rps": requests / seconds if seconds else 0.0,
        "requests": requests,
        "errors": sum(r["errors"] for r in runs),
        "rps_by_round": [round(r["rps"]) for r in runs],
    }
    if all("cpu_s" in r for r in runs):
        out["cpu_ms_per_request"] = sum(r["cpu_s"] for r in runs) * 1000 / max(requests, 1)
    return out


def measure(
    sim_root: str, gw_root: str, key: str, args: argparse.Namespace, gateway: psutil.Process
) -> dict[str, Any]:
    """Every wire, direct and through the gateway, in rounds: each round measures every wire in
    turn, so a neighbour's load on this shared machine falls on all wires alike, not on one."""
    results: dict[str, Any] = {}
    wires: list[Wire] = []
    for wire in WIRES:
        status, text = asyncio.run(probe(gw_root + wire.path, wire, key))
        if status != 200:
            print(f"[{wire.name}] skipped: {status}", flush=True)
            results[wire.name] = {"skipped": status, "detail": text}
        else:
            wires.append(wire)
    latencies: dict[tuple[str, str], list[float]] = {}
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    per_round = max(args.sequential // args.rounds, 1)
    seconds = max(args.duration // args.rounds, 1)
    for index in range(args.rounds):
        print(f"round {index + 1}/{args.rounds}: {', '.join(w.name for w in wires)}", flush=True)
        for wire in wires:
            for target, root in (("direct", sim_root), ("gateway", gw_root)):
                times = asyncio.run(sequential(root + wire.path, wire, key, per_round))
                latencies.setdefault((wire.name, target), []).extend(times)
        for wire in wires:
            for target, root in (("direct", sim_root), ("gateway", gw_root)):
                proc = gateway if target == "gateway" else None
                run = throughput(root + wire.path, wire, key, args, seconds, proc)
                runs.setdefault((wire.name, target), []).append(run)
    for wire in wires:
        results[wire.name] = {
            "direct_c1": summary(latencies[wire.name, "direct"]),
            "gateway_c1": summary(latencies[wire.name, "gateway"]),
            "direct_rps": totals(runs[wire.name, "direct"]),
            "gateway_rps": totals(runs[wire.name, "gateway"]),
        }
    return results


def start(args: list[str], cpu: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(pinned(cpu, args), env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="wrk seconds per wire and target, over all rounds"
    )
    parser.add_argument(
        "--sequential", type=int, default=1000, help="concurrency-1 requests per wire and target"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds the measurements are split into")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (fixed concurrency)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "wires.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="faregate-wires-"))
    sim_port, gw_port = free_port(), free_port()
    config = work / "faregate.yaml"
    config.write_text(
        f"server: {{port: {gw_port}}}\n"
        f"store: {{path: {str(work / 'store')!r}}}\n"
        f"sim: {{mode: 'on', launch: false, port: {sim_port}}}\n"
        # Every request reaches the upstream: a cache hit would measure the cache, not the wire.
        "cache: {enabled: false}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sim = start(
            [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port)],
            1,
            env,
            work / "sim.log",
        )
        processes.append(sim)
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        key = create_key(work / "store")
        gateway = start(
            [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
            0,
            env,
            work / "gateway.log",
        )
        processes.append(gateway)
        wait_healthy(f"http://127.0.0.1:{gw_port}/health")
        results = measure(
            f"http://127.0.0.1:{sim_port}",
            f"http://127.0.0.1:{gw_port}",
            key,
            args,
            psutil.Process(gateway.pid),
        )
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    results["settings"] = {**vars(args), "cpu_count": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    """One row per wire; the "vs chat" columns are the wire's figure over the chat wire's (the
    issue's target: within 20%, i.e. added p50 and CPU at most 1.2x, req/s at least 0.8x)."""
    lines = [
        "| wire | p50 direct | p50 gateway | added p50 (vs chat) | req/s direct | req/s gateway (vs chat) "
        "| gateway/direct | gateway CPU ms/req (vs chat) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    chat = results.get("chat", {})
    base = None if "skipped" in chat else figures(chat)
    for wire in WIRES:
        row = results.get(wire.name, {})
        if "skipped" in row:
            lines.append(f"| {wire.path} | skipped: {row['skipped']} |" + " |" * 6)
            continue
        added, rps, cpu = figures(row)
        direct, through = row["direct_c1"]["p50_ms"], row["gateway_c1"]["p50_ms"]
        rps_direct = row["direct_rps"]["rps"]

        def versus(value: float, index: int) -> str:
            return f" ({value / base[index]:.2f}x)" if base and base[index] else ""

        lines.append(
            f"| {wire.path} | {direct:.2f} ms | {through:.2f} ms | +{added:.2f} ms{versus(added, 0)} "
            f"| {rps_direct:.0f} | {rps:.0f}{versus(rps, 1)} | {rps / rps_direct:.1%} "
            f"| {cpu:.3f}{versus(cpu, 2)} |"
        )
    errors = {
        name: row["direct_rps"]["errors"] + row["gateway_rps"]["errors"]
        for name, row in results.items()
        if isinstance(row, dict) and "direct_rps" in row
    }
    lines += ["", f"wrk errors (non-2xx, timeouts): {errors}"]
    return "\n".join(lines)


def figures(row: dict[str, Any]) -> tuple[float, float, float]:
    """(added p50 ms, gateway req/s, gateway CPU ms per request) of one wire."""
    added = float(row["gateway_c1"]["p50_ms"] - row["direct_c1"]["p50_ms"])
    return added, float(row["gateway_rps"]["rps"]), float(row["gateway_rps"].get("cpu_ms_per_request", 0))


if __name__ == "__main__":
    main()
