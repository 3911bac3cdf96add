"""Time to first token through the gateway against the direct upstream, with the gateway saturated
by concurrent streams, and where the first chunk waits inside the gateway.

Starts the provider simulator and the load (pinned to CPU 1) and `faregate serve` (pinned to CPU 0,
as bench/overhead.py runs it: a key, records, the exact cache's decision, metrics) through
bench/gateway_probe.py with its stream probe on. `--clients` concurrent clients then open streams
back to back for `--seconds`, alternating rounds against the simulator directly and through the
gateway (direct, gateway, direct, gateway...), so both see the same machine. By default the
streams are instant (the simulator sends every token at once, as `wrk` runs do) so the gateway,
not the upstream, sets the pace: that is the saturated case of issue #17.

Reported: the client's time to first content (p50/p90/p99) direct and through the gateway, the
added time, streams per second and the gateway's CPU per stream; and, from inside the gateway, the
median time from the handler's start to each stage of a stream (upstream call sent, its response
head in, the first content chunk parsed, the first content frame written to the client).

Usage: python bench/ttft.py [--clients 16] [--seconds 8] [--rounds 2] [--ttft-ms 0]
                            [--tokens 40] [--tokens-per-s 0] [--pythonpath DIR]
Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import body, create_key, free_port, pinned, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("upstream_sent", "upstream_head", "first_content", "first_write")


async def streams(url: str, key: str, clients: int, seconds: float, payload: bytes) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ttfts: list[float] = []
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            first = None
            async with session.post(url, data=payload, headers=headers) as response:
                assert response.status == 200, response.status
                async for line in response.content:
                    if first is None and b'"content":"' in line and b'"content":""' not in line:
                        first = time.perf_counter()
            if first is not None:
                ttfts.append((first - t0) * 1000)
            done += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return {"ttfts": ttfts, "streams": done}


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": statistics.median(ordered), "p90": at(0.9), "p99": at(0.99), "n": len(ordered)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="faregate-ttft-"))
    sim_port, gw_port = free_port(), free_port()
    (work / "sim.yaml").write_text("defaults: {ttft_ms: 0, tokens_per_s: 0}\n")
    config = work / "faregate.yaml"
    config.write_text(
        f"server: {{port: {gw_port}}}\n"
        f"store: {{path: {str(work / 'store')!r}}}\n"
        f"sim: {{mode: 'on', launch: false, port: {sim_port}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    if args.pythonpath:
        env["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
        # create_key's subprocess too: the store is made (and migrated) by the code under test.
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    ttft_out = work / "ttft.jsonl"
    payload = orjson.dumps(
        body(stream=True, ttft_ms=args.ttft_ms, tokens=args.tokens, tokens_per_s=args.tokens_per_s)
    )
    processes: list[subprocess.Popen[bytes]] = []
    rounds: list[dict[str, Any]] = []
    try:
        sim = subprocess.Popen(
            pinned(1, [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port),
                       "--script", str(work / "sim.yaml")]),
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(sim)
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        key = create_key(work / "store")
        gateway = subprocess.Popen(
            pinned(0, [sys.executable, str(ROOT / "bench" / "gateway_probe.py"), "serve", "-c", str(config)]),
            env={**env, "TTFT_OUT": str(ttft_out)}, stdout=subprocess.DEVNULL,
            stderr=open(work / "gateway.log", "wb"),
        )  # fmt: skip
        processes.append(gateway)
        wait_healthy(f"http://127.0.0.1:{gw_port}/health")
        proc = psutil.Process(gateway.pid)
        # The load generator runs on CPU 1 with the simulator, as in overhead.py.
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        targets = {
            "direct": f"http://127.0.0.1:{sim_port}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gw_port}/v1/chat/completions",
        }
        asyncio.run(streams(targets["gateway"], key, args.clients, 1.0, payload))  # warm-up
        os.kill(gateway.pid, signal.SIGUSR2)  # drop the warm-up's timings
        for index in range(args.rounds):
            for name, url in targets.items():
                load = os.getloadavg()[0]
                cpu0 = proc.cpu_times()
                got = asyncio.run(streams(url, key, args.clients, args.seconds, payload))
                cpu1 = proc.cpu_times()
                entry: dict[str, Any] = {
                    "round": index + 1,
                    "target": name,
                    "load": load,
                    "streams_per_s": got["streams"] / args.seconds,
                    **quantiles(got["ttfts"]),
                }
                if name == "gateway":
                    entry["cpu_ms_per_stream"] = (
                        (cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1000 / max(got["streams"], 1)
                    )
                    before = ttft_out.stat().st_mtime_ns if ttft_out.exists() else 0
                    os.kill(gateway.pid, signal.SIGUSR2)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and (
                        not ttft_out.exists() or ttft_out.stat().st_mtime_ns == before
                    ):
                        time.sleep(0.05)
                    marks = [json.loads(line) for line in ttft_out.read_text().splitlines()]
                    entry["stages_ms_p50"] = {
                        stage: statistics.median(m[stage] for m in marks if stage in m) for stage in STAGES
                    }
                rounds.append(entry)
                print(summary_line(entry), flush=True)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "ttft_ms": args.ttft_ms,
        "tokens": args.tokens,
        "tokens_per_s": args.tokens_per_s,
        "rounds": rounds,
        "work_dir": str(work),
    }


def summary_line(entry: dict[str, Any]) -> str:
    line = (
        f"round {entry['round']} {entry['target']:>7}: TTFT p50 {entry['p50']:.2f} ms,"
        f" p90 {entry['p90']:.2f}, p99 {entry['p99']:.2f} ({entry['n']} streams,"
        f" {entry['streams_per_s']:.0f}/s, load {entry['load']:.2f})"
    )
    if "cpu_ms_per_stream" in entry:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in entry["stages_ms_p50"].items())
        line += f"; gateway CPU {entry['cpu_ms_per_stream']:.3f} ms/stream; stages p50 (ms): {stages}"
    return line


def report(result: dict[str, Any]) -> str:
    direct = [r for r in result["rounds"] if r["target"] == "direct"]
    gateway = [r for r in result["rounds"] if r["target"] == "gateway"]
    added = [g["p50"] - d["p50"] for d, g in zip(direct, gateway, strict=False)]
    return (
        f"{result['clients']} clients, streams of {result['tokens']} tokens "
        f"(first after {result['ttft_ms']} ms, {result['tokens_per_s'] or 'instant'} tokens/s): "
        f"added TTFT p50 per round: {', '.join(f'{a:+.2f} ms' for a in added)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round and target")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttft-ms", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--tokens-per-s", type=int, default=0)
    parser.add_argument("--pythonpath", help="run the gateway from this src directory (A/B)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "ttft.json"))
    args = parser.parse_args()
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(report(result))


if __name__ == "__main__":
    main()
