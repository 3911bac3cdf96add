"""Throughput with `serve --workers 1` and `--workers 2`, against the direct upstream, in one run.

On a 2-core machine the load generator (wrk) and the upstream (the simulator, one Python
process) need CPU too, so nothing is pinned: every process may use both cores, and the CPU time
of each (the gateway's supervisor and workers together, the simulator, wrk) is read over each
run. Rounds alternate direct → 1 worker → 2 workers, each `wrk -t1 -c64` for `--duration` s
against an instant upstream (the non-streaming request of overhead.py), after 2 s of warm-up.

Reported per run: req/s; the cores each party used (CPU seconds / wall seconds); the gateway's
CPU ms per request; its memory after the run as PSS (the supervisor and the workers together,
each shared page counted once). Two ratios of 2 workers to 1:
- measured: req/s with 2 workers / req/s with 1, on this machine as it is (the simulator and
  wrk take their share of the two cores);
- per gateway core: (req/s / cores the gateway used), i.e. what the workers would serve with a
  core each to themselves at the CPU per request measured here. 2.0 would be perfect scaling.

Usage: python bench/workers.py [--duration 10] [--rounds 2] [--accounts] [--out FILE]
(--accounts: metering on, so every request reserves and settles in the SQLite file that the
workers share.) Needs `wrk`. Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import ROOT, body, free_port, wait_healthy

WARMUP_S = 2


def create_key(store: Path) -> str:
    """A key with a million dollars of credits (metering on: requests are reserved, never refused)."""
    code = (
        "import asyncio\n"
        "from faregate.store.sqlite.store import SQLiteStore\n"
        "from faregate.accounts.keys import KeyStore\n"
        "async def main():\n"
        f"    store = await SQLiteStore.open({str(store)!r})\n"
        "    _, raw = await KeyStore(store).create(name='bench', credits_nano=10**15)\n"
        "    await store.close()\n"
        "    print(raw)\n"
        "asyncio.run(main())\n"
    )
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return made.stdout.strip()


def cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk_run(url: str, key: str, connections: int, duration: int) -> dict[str, float]:
    """wrk, unpinned; its own CPU from the rusage of reaped children."""
    lua = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    lua.write(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body()))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("RESULT %d %d %d\\n", summary.requests, summary.duration,'
        " summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))\n"
        "end\n"
    )
    lua.close()
    before = children_cpu_s()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", lua.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = children_cpu_s() - before
    os.unlink(lua.name)
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    requests, duration_us, errors = (int(x) for x in line.split()[1:])
    return {"requests": requests, "seconds": duration_us / 1e6, "errors": errors, "wrk_cpu_s": used}


def measure(
    url: str, key: str, duration: int, gateway: list[psutil.Process], sim: psutil.Process
) -> dict[str, Any]:
    wrk_run(url, key, 64, WARMUP_S)
    g0, s0 = cpu_s(gateway), cpu_s([sim])
    result = wrk_run(url, key, 64, duration)
    g1, s1 = cpu_s(gateway), cpu_s([sim])
    wall = result["seconds"]
    rps = result["requests"] / wall
    out: dict[str, Any] = {
        "rps": rps,
        "errors": result["errors"],
        "cores_gateway": (g1 - g0) / wall,
        "cores_sim": (s1 - s0) / wall,
        "cores_wrk": result["wrk_cpu_s"] / wall,
    }
    if gateway:
        out["gateway_cpu_ms_per_request"] = (g1 - g0) * 1000 / max(result["requests"], 1)
        out["rps_per_gateway_core"] = rps / max(out["cores_gateway"], 1e-9)
        # Proportional set size: pages shared by the supervisor and its workers counted once.
        out["gateway_pss_mib"] = sum(p.memory_full_info().pss for p in gateway) / 2**20
    return out


def start_gateway(
    workers: int, config: Path, port: int, work: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"gateway-{workers}.log", "wb"),
    )
    wait_healthy(f"http://127.0.0.1:{port}/health", timeout=60)
    # Every worker listening (the supervisor logs it once they all are).
    deadline = time.monotonic() + 60
    while "workers listening" not in (work / f"gateway-{workers}.log").read_text() and workers > 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not all start")
        time.sleep(0.1)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accounts", action="store_true", help="metering on (reserve and settle in SQLite)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "workers.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="faregate-workers-"))
    sim_port, gw_port = free_port(), free_port()
    config = work / "faregate.yaml"
    # Limits far above what wrk sends: every request is reserved, rate-limited and settled, none refused.
    limits = "{requests_per_minute: 100000000, tokens_per_minute: 100000000000}"
    accounts = f"accounts: {{enabled: true, standard: {limits}}}\n" if args.accounts else ""
    config.write_text(
        f"server: {{port: {gw_port}}}\n"
        f"store: {{path: {str(work / 'store')!r}}}\n"
        f"sim: {{mode: 'on', launch: false, port: {sim_port}}}\n" + accounts
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    sim = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    runs: list[dict[str, Any]] = []
    try:
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        key = create_key(work / "store")
        sim_process = psutil.Process(sim.pid)
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}: direct ...", flush=True)
            direct = measure(
                f"http://127.0.0.1:{sim_port}/v1/chat/completions", key, args.duration, [], sim_process
            )
            runs.append({"round": round_, "target": "direct", "load": os.getloadavg()[0], **direct})
            for workers in (1, 2):
                print(f"round {round_}: {workers} worker(s) ...", flush=True)
                gateway = start_gateway(workers, config, gw_port, work, env)
                try:
                    measured = measure(
                        f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                        key,
                        args.duration,
                        tree(gateway.pid),
                        sim_process,
                    )
                finally:
                    stop(gateway)
                runs.append(
                    {
                        "round": round_,
                        "target": f"{workers} worker(s)",
                        "load": os.getloadavg()[0],
                        **measured,
                    }
                )
    finally:
        if sim.poll() is None:
            sim.terminate()
            sim.wait(10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"accounts": args.accounts, "cpu_count": os.cpu_count(), "runs": runs}, indent=2)
    )
    print(report(runs))


def report(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| round | target | req/s | cores: gateway / simulator / wrk | gateway CPU ms/req "
        "| req/s per gateway core | gateway PSS | errors |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        per_core = f"{run['rps_per_gateway_core']:,.0f}" if "rps_per_gateway_core" in run else ""
        cpu = f"{run['gateway_cpu_ms_per_request']:.3f}" if "gateway_cpu_ms_per_request" in run else ""
        cores = f"{run['cores_gateway']:.2f} / {run['cores_sim']:.2f} / {run['cores_wrk']:.2f}"
        pss = f"{run['gateway_pss_mib']:.0f} MiB" if "gateway_pss_mib" in run else ""
        lines.append(
            f"| {run['round']} | {run['target']} | {run['rps']:,.0f} | {cores} | {cpu} | {per_core} | {pss} "
            f"| {run['errors']:,} |"
        )
    one = [r for r in runs if r["target"] == "1 worker(s)"]
    two = [r for r in runs if r["target"] == "2 worker(s)"]
    if one and two:
        pairs = list(zip(one, two, strict=True))
        measured = statistics.mean(b["rps"] / a["rps"] for a, b in pairs)
        per_core = statistics.mean(
            2 * b["rps_per_gateway_core"] / a["rps_per_gateway_core"] for a, b in pairs
        )
        lines.append("")
        lines.append(f"2 workers / 1 worker, measured req/s: {measured:.2f}x")
        lines.append(f"2 workers / 1 worker, per gateway core (a core per worker): {per_core:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
