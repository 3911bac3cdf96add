"""Where a non-streaming request's CPU goes: CPU per request, a cProfile of the gateway under load,
and callgrind instruction counts per request (deterministic: no noise from a shared machine).

Starts the provider simulator (instant answers, pinned to CPU 1 with the load generator) and
`faregate serve` as bench/overhead.py does (pinned to CPU 0: an API key, request records in
SQLite, the exact cache's decision, metrics, alerts), through bench/gateway_probe.py. Then, after
a warm-up, `wrk` sends overhead.py's non-streaming request for `--duration` seconds:

  --mode cpu        the gateway's CPU ms per request (user + system, from /proc) and req/s,
                    with the direct simulator's req/s measured in the same run as the baseline;
  --mode cprofile   the same with cProfile on in the gateway for the measured window: the self
                    time by area (aiohttp server, event loop, upstream call, routing, metrics...)
                    and the top functions (cProfile inflates small Python calls: read the shares,
                    and the `cpu` mode for the absolute figure);
  --mode pyspy      the gateway started under `py-spy record` (sampling: no bias toward small
                    calls; `--pyspy PATH` if it is not beside this Python): the share of samples
                    by area and the top leaf functions. Use `--native`: with C frames, system calls
                    and the GC are seen as such, and the loop's idle wait is not counted (without
                    it the wait shows as asyncio; start-up is slow under it, ~1 min here);
  --mode callgrind  the gateway under `valgrind --tool=callgrind`, collecting only during the
                    window (`callgrind_control -i on/off`): instructions per request in all and
                    the top C functions (CPython's eval loop, orjson, httptools, uvloop, malloc...).
                    Slow (about 50x): use a short window (`--duration 20`, ~1,000 requests).
                    Note that the other threads' counts (SQLite: records, rollups) are per
                    request at that slow rate, where a flush writes a few records, not hundreds.

`--stream` measures a streaming request instead: bench/ttft.py's instant 40-token stream (the
simulator sends every token at once; wrk reads each stream to its end), so the figures are per
stream: the relay's per-chunk work (parse, re-encode, write) times 40 plus the request's own.

Each figure is printed with the machine's load average at start and end. `--pythonpath DIR`
runs the gateway from another checkout's `src` (A/B a change: run both, alternating).

Usage: python bench/profile_request.py [--mode cpu|cprofile|callgrind] [--duration 10] [--wire chat]
                                       [--stream] [--connections 64] [--top 25] [--pythonpath DIR]
Needs `wrk`; callgrind needs `valgrind`. Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import body, create_key, free_port, pinned, wait_healthy, wrk
from wires import WIRES
from workers import create_key as funded_key

ROOT = Path(__file__).resolve().parent.parent
STREAM_TOKENS = 40  # bench/ttft.py's default stream
SIM_SCRIPT = "defaults: {ttft_ms: 0, tokens_per_s: 0, answer: {lorem: 12}}\n"

# cProfile self time is summed into these areas by the function's file (first match wins).
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("aiohttp server (parse, request, response)", ("aiohttp/", "multidict/", "yarl/")),
    ("upstream call (providers/transport, http, openai_compat)", ("faregate/providers/",)),
    ("attempt loop and health", ("faregate/routing/attempts.py", "faregate/routing/health.py")),
    ("routing plan", ("faregate/routing/",)),
    ("pipeline, parse, responses", ("faregate/server/",)),
    (
        "metrics",
        ("faregate/telemetry/metrics.py", "faregate/telemetry/metric_cells.py", "prometheus_client/"),
    ),
    ("records (writer, SQLite rows)", ("faregate/telemetry/", "faregate/store/", "aiosqlite/")),
    ("auth (key cache)", ("faregate/accounts/",)),
    ("cache decision", ("faregate/cache/",)),
    ("types, money", ("faregate/types.py", "decimal")),
    ("asyncio (tasks, timeouts, locks)", ("asyncio/",)),
    ("other faregate", ("faregate/",)),
]
BUILTIN_AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("JSON (orjson)", ("orjson",)),
    ("event loop (uvloop: sockets, callbacks)", ("uvloop", "UVStream", "Loop", "TCPTransport")),
    ("aiohttp server (parse, request, response)", ("aiohttp", "_http_", "multidict", "yarl")),
    ("upstream call (providers/transport, http, openai_compat)", ("httptools",)),
    ("auth (key cache)", ("sha256", "hexdigest", "hashlib")),
    ("asyncio (tasks, timeouts, locks)", ("_asyncio", "Task", "Future", "Context")),
]


def area_of(filename: str, name: str) -> str:
    if filename == "~":
        for area, needles in BUILTIN_AREAS:
            if any(n in name for n in needles):
                return area
        return "other built-ins"
    for area, needles in AREAS:
        if any(n in filename for n in needles):
            return area
    return "stdlib and other"


def short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def cprofile_report(path: Path, requests: int, top: int) -> dict[str, Any]:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    areas: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_cc, nc, tt, ct, _callers) in raw.items():
        areas[area_of(filename, name)] += tt
        rows.append((tt, ct, nc, f"{short(filename)}:{line}({name})" if filename != "~" else name))
    rows.sort(reverse=True)
    per = 1e6 / max(requests, 1)
    return {
        "profiled_us_per_request": total * per,
        "areas": sorted(((a, t * per, t / total) for a, t in areas.items()), key=lambda r: -r[1]),
        "top_self": [(name, tt * per, ct * per, nc / max(requests, 1)) for tt, ct, nc, name in rows[:top]],
        "top_cumulative": _cumulative(raw, per, requests, top),
    }


def _cumulative(raw: dict[Any, Any], per: float, requests: int, top: int) -> list[tuple[str, float, float]]:
    """Inclusive time of the gateway's own stages (not the event loop's run, which holds it all)."""
    rows = []
    for (filename, line, name), (_cc, nc, _tt, ct, _callers) in raw.items():
        if "faregate/" in filename or "aiohttp/web_protocol" in filename:
            rows.append((ct * per, nc / max(requests, 1), f"{short(filename)}:{line}({name})"))
    rows.sort(reverse=True)
    return [(name, us, calls) for us, calls, name in rows[:top]]


NATIVE_AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collector (gc)", ("gc_collect", "collect_generations", "_PyObject_GC_")),
    ("socket writes (send syscalls)", ("write (libc", "writev (libc", "send (libc", "sendmsg (libc")),
    ("socket reads (recv syscalls)", ("read (libc", "recv (libc", "readv (libc")),
    ("event loop wait (epoll)", ("epoll_",)),
    ("random bytes (getrandom syscall)", ("getrandom",)),
]


def _is_python(frame: str) -> bool:
    return ".py:" in frame or "<frozen" in frame


def _sample_area(frames: list[str]) -> str:
    """A sample's area: native leaves by what they are (gc, syscalls), else by the innermost Python
    frame's file (a C function called from Python is that Python code's cost)."""
    if not _is_python(frames[-1]):
        for area, needles in NATIVE_AREAS:
            if any(n in f for f in frames[-4:] for n in needles):
                return area
    for frame in reversed(frames):
        if _is_python(frame):
            name, _, where = frame.partition(" (")
            return area_of(where.rsplit(":", 1)[0], name)
    return "other native code"


def pyspy_report(path: Path, top: int) -> dict[str, Any]:
    """Samples of the event loop's thread while it serves (start-up and first-time imports left
    out), by area and by leaf frame; the other threads (SQLite's) are counted apart."""
    areas: dict[str, int] = defaultdict(int)
    leaves: dict[str, int] = defaultdict(int)
    stages: dict[str, int] = defaultdict(int)
    loop_samples = other = 0
    # py-spy writes native frames' symbol names as it finds them, not always UTF-8.
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any("gateway_probe.py" in f for f in frames[:3]):
            other += count  # another thread (SQLite's, the default executor's)
            continue
        serving = any("faregate/server/runner.py" in f for f in frames)
        if not serving or any("build_gateway" in f or "_find_and_load" in f or "wait_healthy" in f
                              for f in frames):  # fmt: skip
            continue
        loop_samples += count
        leaves[frames[-1]] += count
        areas[_sample_area(frames)] += count
        functions = {f.split(":")[0] + ")" for f in frames if ".py:" in f}
        for f in functions:
            if (
                "faregate/" in f and "faregate/cli/" not in f and "runner.py" not in f
            ) or "web_protocol" in f:
                stages[f] += count
    total = max(loop_samples, 1)
    return {
        "samples": loop_samples,
        "other_thread_samples": other,
        "areas": sorted(((a, n / total) for a, n in areas.items()), key=lambda r: -r[1]),
        "top_leaves": [(f, n / total) for f, n in sorted(leaves.items(), key=lambda r: -r[1])[:top]],
        "top_inclusive": [(f, n / total) for f, n in sorted(stages.items(), key=lambda r: -r[1])[:top]],
    }


def callgrind_report(out: Path, requests: int, top: int) -> dict[str, Any]:
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=99.9", str(out)], capture_output=True, text=True, check=True
    ).stdout
    total_match = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text, re.M)
    total = int(total_match.group(1).replace(",", "")) if total_match else 0
    functions = []
    for m in re.finditer(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S.*)$", text, re.M):
        name = m.group(3)
        if "PROGRAM TOTALS" in name:
            continue
        functions.append((name.split(" [")[0][-90:], int(m.group(1).replace(",", "")) / max(requests, 1)))
    return {
        "instructions_per_request": total / max(requests, 1),
        "top_functions": functions[:top],
    }


# Metering on, with limits far above the load: every request is reserved and settled, none refused.
ACCOUNTS = (
    "accounts: {enabled: true, standard: {requests_per_minute: 100000000, tokens_per_minute: 100000000000}}\n"
)


def start(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sim_port, gw_port = free_port(), free_port()
    (work / "sim.yaml").write_text(SIM_SCRIPT)
    config = work / "faregate.yaml"
    config.write_text(
        f"server: {{port: {gw_port}}}\n"
        f"store: {{path: {str(work / 'store')!r}}}\n"
        f"sim: {{mode: 'on', launch: false, port: {sim_port}}}\n"
        "metrics: {public: true}\n" + (ACCOUNTS if args.accounts else "")
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    if args.pythonpath:
        env["PYTHONPATH"] = str(Path(args.pythonpath).resolve())
        # create_key's subprocess too: the store is made (and migrated) by the code under test.
        os.environ["PYTHONPATH"] = env["PYTHONPATH"]
    return {"sim_port": sim_port, "gw_port": gw_port, "config": config, "env": env}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="faregate-profile-"))
    setup = start(args, work)
    env, gw_port, sim_port = setup["env"], setup["gw_port"], setup["sim_port"]
    path, payload, headers = request_of(args.wire, args.stream)
    url = f"http://127.0.0.1:{gw_port}{path}"
    metrics_url = f"http://127.0.0.1:{gw_port}/metrics"
    result: dict[str, Any] = {"mode": args.mode, "stream": args.stream, "load_at_start": os.getloadavg()[0]}
    processes: list[subprocess.Popen[bytes]] = []
    profile_out = work / "gateway.pstats"
    callgrind_out = work / "callgrind.out"
    try:
        sim = subprocess.Popen(
            pinned(1, [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port),
                       "--script", str(work / "sim.yaml")]),
            env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(sim)
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        key = funded_key(work / "store") if args.accounts else create_key(work / "store")
        gateway_cmd = [
            sys.executable,
            str(ROOT / "bench" / "gateway_probe.py"),
            "serve",
            "-c",
            str(setup["config"]),
        ]
        gateway_env = {**env, "PROFILE_OUT": str(profile_out)}
        spy_out = work / "pyspy.txt"
        if args.mode == "pyspy":
            # The sampler on CPU 1, the gateway it starts on CPU 0 (taskset again inside).
            gateway_cmd = pinned(1, [
                args.pyspy, "record", "--rate", str(args.rate), "--format", "raw", "--output", str(spy_out),
                # --native needs to pause the process for each sample; without it py-spy reads it live.
                *(["--native"] if args.native else ["--nonblocking"]), "--", *pinned(0, gateway_cmd),
            ])  # fmt: skip
        if args.mode == "callgrind":
            if not shutil.which("valgrind"):
                sys.exit("valgrind is needed for --mode callgrind")
            gateway_cmd = [
                "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                f"--callgrind-out-file={callgrind_out}",
                *gateway_cmd,
            ]  # fmt: skip
        gateway = subprocess.Popen(
            gateway_cmd if args.mode == "pyspy" else pinned(0, gateway_cmd), env=gateway_env,
            stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb"),
        )  # fmt: skip
        processes.append(gateway)
        wait_healthy(f"http://127.0.0.1:{gw_port}/health", timeout=300)
        gateway_pid = gateway.pid
        if args.mode == "pyspy":
            # The Popen is py-spy; the gateway is its child (CPU time and signals go to it).
            children: list[psutil.Process] = []
            while not children:
                children = [c for c in psutil.Process(gateway.pid).children(recursive=True)
                            if "gateway_probe.py" in " ".join(c.cmdline())]  # fmt: skip
                time.sleep(0.1)
            gateway_pid = children[0].pid
        direct = None
        if args.mode == "cpu":
            direct = wrk(f"http://127.0.0.1:{sim_port}{path}", key, payload, args.connections,
                         args.duration, headers)  # fmt: skip
        # Warm-up: first calls, caches, the upstream pool's connections.
        wrk(url, key, payload, args.connections, args.warmup, headers)
        proc = psutil.Process(gateway_pid)
        before = _requests(metrics_url)
        if args.mode == "cprofile":
            os.kill(gateway_pid, signal.SIGUSR2)
        elif args.mode == "callgrind":
            subprocess.run(
                ["callgrind_control", "-i", "on", str(gateway_pid)], check=True, capture_output=True
            )
        cpu0 = proc.cpu_times()
        load = wrk(url, key, payload, args.connections, args.duration, headers)
        cpu1 = proc.cpu_times()
        if args.mode == "cprofile":
            os.kill(gateway_pid, signal.SIGUSR2)
            _wait_for(profile_out)
        elif args.mode == "callgrind":
            subprocess.run(
                ["callgrind_control", "-i", "off", str(gateway_pid)], check=True, capture_output=True
            )
        requests = _requests(metrics_url) - before
        result.update(
            requests=requests,
            req_per_s=load["rps"],
            wrk_errors=load["errors"],
            cpu_ms_per_request=(cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1000 / max(requests, 1),
            system_ms_per_request=(cpu1.system - cpu0.system) * 1000 / max(requests, 1),
            direct_req_per_s=direct["rps"] if direct else None,
        )  # fmt: skip
        if args.mode == "callgrind":
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(120)
        if args.mode == "pyspy":
            gateway.send_signal(signal.SIGINT)  # py-spy writes its samples, then waits for its child
            time.sleep(1.0)
            os.kill(gateway_pid, signal.SIGTERM)
            gateway.wait(60)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    if args.mode == "cprofile":
        result["cprofile"] = cprofile_report(profile_out, result["requests"], args.top)
    elif args.mode == "pyspy":
        result["pyspy"] = pyspy_report(work / "pyspy.txt", args.top)
    elif args.mode == "callgrind":
        # One file per thread: -01 is the event loop's (the request path); the others are SQLite's
        # threads (request records, rollups) and the default executor's.
        files = sorted(work.glob("callgrind.out-*"))
        if files:
            result["callgrind"] = callgrind_report(files[0], result["requests"], args.top)
            result["callgrind"]["other_threads_per_request"] = sum(
                callgrind_report(f, result["requests"], 0)["instructions_per_request"] for f in files[1:]
            )
        result["callgrind_files"] = [str(f) for f in files]
    result["load_at_end"] = os.getloadavg()[0]
    result["work_dir"] = str(work)
    return result


def request_of(wire: str, stream: bool = False) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(path, body, extra headers) of the measured request: overhead.py's chat request, or
    bench/wires.py's request of another wire (`--wire messages`, `--wire embeddings`); with
    `stream`, ttft.py's instant 40-token chat stream."""
    if stream:
        if wire != "chat":
            sys.exit("--stream measures the chat wire's stream only")
        return "/v1/chat/completions", body(stream=True, tokens=STREAM_TOKENS), {}
    if wire == "chat":
        return "/v1/chat/completions", body(), {}
    chosen = next(w for w in WIRES if w.name == wire)
    return chosen.path, chosen.body, dict(chosen.headers)


def _requests(metrics_url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    return sum(int(float(v)) for v in re.findall(r"^faregate_requests_total\{[^}]*\} (\S+)$", text, re.M))


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def report(result: dict[str, Any]) -> str:
    lines = [
        ("streaming (40 tokens), per request = per stream; " if result.get("stream") else "")
        + f"mode {result['mode']}: {result['requests']:,} requests, {result['req_per_s']:.0f} req/s, "
        f"gateway CPU {result['cpu_ms_per_request']:.3f} ms/request"
        f" ({result['system_ms_per_request']:.3f} in the kernel)"
        + (f", direct simulator {result['direct_req_per_s']:.0f} req/s"
           if result.get("direct_req_per_s") else "")
        + f" (load {result['load_at_start']:.2f} -> {result['load_at_end']:.2f},"
        f" wrk errors {result['wrk_errors']})"
    ]  # fmt: skip
    profile = result.get("cprofile")
    if profile:
        lines.append(
            f"\ncProfile: {profile['profiled_us_per_request']:.0f} µs profiled per request;"
            " self time by area:"
        )
        lines.append("| area | µs/request | share |\n|---|---:|---:|")
        lines += [f"| {a} | {us:.1f} | {share:.1%} |" for a, us, share in profile["areas"]]
        lines.append("\ntop functions by self time (µs/request, inclusive µs/request, calls/request):")
        lines += [f"  {tt:7.1f} {ct:7.1f} {nc:5.1f}  {name}" for name, tt, ct, nc in profile["top_self"]]
        lines.append("\nthe gateway's own stages, inclusive (µs/request, calls/request):")
        lines += [f"  {us:7.1f} {nc:5.2f}  {name}" for name, us, nc in profile["top_cumulative"]]
    spy = result.get("pyspy")
    if spy:
        lines.append(
            f"\npy-spy: {spy['samples']:,} samples of the event loop's thread"
            f" ({spy['other_thread_samples']:,} of other threads); share by area of the leaf frame:"
        )
        lines.append("| area | share |\n|---|---:|")
        lines += [f"| {a} | {share:.1%} |" for a, share in spy["areas"]]
        lines.append("\ntop leaf frames:")
        lines += [f"  {share:6.1%}  {f}" for f, share in spy["top_leaves"]]
        lines.append("\nthe gateway's own stages, inclusive:")
        lines += [f"  {share:6.1%}  {f}" for f, share in spy["top_inclusive"]]
    grind = result.get("callgrind")
    if grind:
        lines.append(
            f"\ncallgrind: {grind['instructions_per_request']:,.0f} instructions per request on the event"
            f" loop's thread, {grind.get('other_threads_per_request', 0):,.0f} on the other threads"
        )
        lines += [f"  {ir:12,.0f}  {name}" for name, ir in grind["top_functions"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["cpu", "cprofile", "pyspy", "callgrind"], default="cpu")
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load")
    parser.add_argument(
        "--wire", choices=["chat", "messages", "embeddings"], default="chat", help="the request measured"
    )
    parser.add_argument(
        "--stream", action="store_true", help="an instant 40-token chat stream (bench/ttft.py's) per request"
    )
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--pythonpath", help="run the gateway from this src directory (A/B)")
    parser.add_argument(
        "--accounts", action="store_true", help="metering on: every request reserved and settled in SQLite"
    )
    beside = Path(sys.executable).parent / "py-spy"  # the dev extra installs it in the venv
    parser.add_argument(
        "--pyspy", default=str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
    )
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy: C extension frames too")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_request.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(report(result))


if __name__ == "__main__":
    main()
