"""Memory soak: a million mixed requests through the gateway, RSS sampled against requests served.

Starts the provider simulator (instant answers, pinned to CPU 1 with the load generator) and
`faregate serve` (pinned to CPU 0, one process) with what a real deployment runs: an API key,
request records in SQLite, the exact cache, metrics, alerts, breakers. Then `wrk` sends a mix
that touches every path that could keep something per request:

  non-streaming and streaming answers on three models (with and without usage in the stream),
  a fallback route whose first model is down (its breaker opens and half-opens all run long)
  and whose second fails 20% of the time in every way (5xx, 429, resets, blank answers, hangs
  past the first-byte timeout, streams cut short), forced upstream failures (on a model of their
  own, `soak-fail`, whose breaker opens and half-opens all run long), streams cut after
  their first content, exact-cache hits on repeated deterministic prompts and misses on unique
  ones (the LRU fills and turns over), eight valid keys, unknown keys (a new one each time),
  missing keys, unknown models and malformed JSON.

Every `--sample-s` it reads the gateway's RSS and the requests it has finished (the
`faregate_requests_total` counter of GET /metrics), with the load average. At every tenth of
the run it sends the gateway SIGUSR1 (bench/gateway_probe.py): RSS after a full gc, live objects
by type, malloc statistics, and with `--tracemalloc N` a tracemalloc snapshot (N frames; it
slows the gateway by ~2x), diffed at the end (first probe after warm-up against the last).

Usage: python bench/soak.py [--requests 1000000] [--max-seconds 1800] [--connections 64]
                            [--tracemalloc 0] [--trim] [--malloc-arena-max N]
                            [--usage-estimate light|tokenizer] [--backpressure N]
                            [--out bench/results/soak.json] [--png bench/results/soak.png]
Needs `wrk` (Debian package). Only talks to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import free_port, pinned, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
KEYS = 8
REPEATED_PROMPTS = 200

SIM_SCRIPT = """\
seed: 17
defaults:
  ttft_ms: 0
  tokens_per_s: 0
  answer: {lorem: 12}
  retry_after_s: 0
  hang_s: 2
models:
  soak-flaky:
    faults: {server_error: 0.05, rate_limit: 0.03, unavailable: 0.02, reset: 0.03,
             empty_choices: 0.02, blank: 0.01, truncate: 0.03, hang: 0.01}
    after_tokens: 0
  soak-down:
    faults: {unavailable: 1.0}
  soak-fail:
    faults: {server_error: 1.0}
"""


def gateway_config(
    port: int, sim_port: int, store: Path, usage_estimate: str = "light", backpressure: int | None = None
) -> str:
    records = "" if backpressure is None else f"records: {{backpressure_pending: {backpressure}}}\n"
    return f"""\
server: {{port: {port}}}
accounts: {{usage_estimate: {usage_estimate}}}
{records}store: {{path: {str(store)!r}}}
sim: {{mode: 'on', launch: false, port: {sim_port}, first_byte_timeout_s: 0.5, total_timeout_s: 5}}
metrics: {{public: true}}
models:
  soak-flaky: {{input: 0.2, output: 0.8}}
  soak-down: {{input: 0.1, output: 0.4}}
  soak-fail: {{input: 0.1, output: 0.4}}
routes:
  soak-chain: {{chain: [soak-down, soak-flaky, deepseek-v4-flash]}}
"""


# The mix, in slots of 100 (one cycle of wrk's request counter). kind, slots.
MIX: list[tuple[str, int]] = [
    ("plain", 36),  # non-streaming, not cacheable (no temperature)
    ("stream", 12),  # streaming, instant, 12 tokens
    ("stream_usage", 4),  # streaming with stream_options.include_usage
    ("chain", 10),  # the failing route, non-streaming
    ("chain_stream", 6),  # the failing route, streaming
    ("cache_repeat", 10),  # temperature 0, one of 200 prompts: hits after the first
    ("cache_repeat_stream", 3),  # the same, streamed (replayed from the cache)
    ("cache_unique", 7),  # temperature 0, a new prompt each time: misses, the LRU turns over
    # The upstream fails every attempt, on a model of its own: on a model the rest of the mix uses,
    # its retries, lined up, opened that model's shared breaker (bench/README.md, "Memory soak").
    ("forced_5xx", 2),
    ("cut_stream", 2),  # a stream cut after its first content: an error event mid-stream
    ("bad_key", 3),  # an unknown key, a new one each time
    ("no_key", 1),
    ("unknown_model", 2),  # one of 20 wrong model names
    ("bad_json", 2),
]


LUA = """
local keys = {@KEYS@}
local order = {@ORDER@}
local n = 0
local unique = 0
local msg = '[{"role":"user","content":"%s"}]'
local function body(model, content, extra)
  return '{"model":"' .. model .. '","messages":' .. string.format(msg, content) .. (extra or '') .. '}'
end
local instant = ',"sim":{"ttft_ms":0,"tokens_per_s":0,"answer":{"lorem":12}}'
local fixed = {
  plain = body("deepseek-v4-flash", "Say hello in one short sentence.", instant),
  stream = body("deepseek-v4-flash", "Say hello in one short sentence.", instant .. ',"stream":true'),
  stream_usage = body("qwen3-32b", "Say hello in one short sentence.",
    instant .. ',"stream":true,"stream_options":{"include_usage":true}'),
  chain = body("soak-chain", "Say hello in one short sentence."),
  chain_stream = body("soak-chain", "Say hello in one short sentence.", ',"stream":true'),
  forced_5xx = body("soak-fail", "Fail.", ',"sim":{"fault":"server_error"}'),
  cut_stream = body("glm-4-plus", "Cut.", ',"stream":true,"sim":{"fault":"truncate","after_tokens":3}'),
  bad_json = '{"model": "deepseek-v4-flash", "messages": [',
}
function request()
  n = n + 1
  local kind = order[(n % 100) + 1]
  local key = keys[(n % #keys) + 1]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  local b = fixed[kind]
  if kind == "cache_repeat" or kind == "cache_repeat_stream" then
    local p = "Repeated question " .. ((n * 7) % @REPEATED@) .. ": what is two plus two?"
    b = body("qwen3-32b", p, ',"temperature":0' .. (kind == "cache_repeat_stream" and ',"stream":true' or ''))
  elseif kind == "cache_unique" then
    unique = unique + 1
    b = body("glm-4-plus", "Unique question " .. unique .. ": what is the time?", ',"temperature":0')
  elseif kind == "unknown_model" then
    -- A client with a wrong model name sends it again and again: 20 of them.
    b = body("no-such-model-" .. (n % 20), "Hello?")
  elseif kind == "bad_key" then
    headers["Authorization"] = "Bearer fg-" .. string.format("%040d", n)
    b = fixed.plain
  elseif kind == "no_key" then
    headers["Authorization"] = nil
    b = fixed.plain
  end
  return wrk.format("POST", "/v1/chat/completions", headers, b)
end
"""


def lua_script(keys: list[str]) -> str:
    """wrk's request() builds each request from the counter; fixed bodies are formatted once."""
    slots: list[str] = []
    for kind, n in MIX:
        slots += [kind] * n
    assert len(slots) == 100, len(slots)
    # Spread each kind over the cycle instead of running it in a block.
    order = [slots[(i * 37) % 100] for i in range(100)]
    lua_keys = ", ".join(json.dumps(k) for k in keys)
    lua_order = ", ".join(json.dumps(k) for k in order)
    return (
        LUA.replace("@KEYS@", lua_keys)
        .replace("@ORDER@", lua_order)
        .replace("@REPEATED@", str(REPEATED_PROMPTS))
    )


def create_keys(store: Path, n: int) -> list[str]:
    code = (
        "import asyncio\n"
        "from faregate.store.sqlite.store import SQLiteStore\n"
        "from faregate.accounts.keys import KeyStore\n"
        "async def main():\n"
        f"    store = await SQLiteStore.open({str(store)!r})\n"
        f"    for i in range({n}):\n"
        "        _, raw = await KeyStore(store).create(name=f'soak-{i}')\n"
        "        print(raw)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


_REQUESTS = re.compile(r"^faregate_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)
_STATUS = re.compile(r'status="(\d+)"')


def scrape(url: str) -> tuple[int, dict[str, int]]:
    """Requests finished by the gateway, in all and by HTTP status."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    total = 0
    statuses: dict[str, int] = {}
    for labels, value in _REQUESTS.findall(text):
        count = int(float(value))
        total += count
        status = _STATUS.search(labels)
        if status:
            statuses[status.group(1)] = statuses.get(status.group(1), 0) + count
    return total, statuses


def load_average() -> float:
    return os.getloadavg()[0]


def wait_probe(dump: Path, index: int, timeout: float = 120) -> dict[str, Any] | None:
    path = dump / f"probe-{index}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.1)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="faregate-soak-"))
    dump = work / "probes"
    dump.mkdir()
    sim_port, gw_port = free_port(), free_port()
    (work / "sim.yaml").write_text(SIM_SCRIPT)
    config = work / "faregate.yaml"
    store = work / "store"
    config.write_text(gateway_config(gw_port, sim_port, store, args.usage_estimate, args.backpressure))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    gateway_env = {
        **env,
        "SOAK_DUMP_DIR": str(dump),
        "SOAK_TRACEMALLOC": str(args.tracemalloc),
        "SOAK_TRIM": "1" if args.trim else "0",
    }
    if args.malloc_arena_max:
        gateway_env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    processes: list[subprocess.Popen[bytes]] = []
    samples: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "requests_target": args.requests,
        "mix": dict(MIX),
        "connections": args.connections,
        "tracemalloc_frames": args.tracemalloc,
        "malloc_arena_max": args.malloc_arena_max,
        "trim": args.trim,
        "usage_estimate": args.usage_estimate,
        "backpressure_pending": args.backpressure,
        "cpu_count": os.cpu_count(),
        "load_at_start": load_average(),
    }
    metrics_url = f"http://127.0.0.1:{gw_port}/metrics"
    try:
        sim = subprocess.Popen(
            pinned(1, [sys.executable, "-m", "faregate.cli.main", "sim", "--port", str(sim_port),
                       "--script", str(work / "sim.yaml")]),
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "sim.log", "wb"),
        )  # fmt: skip
        processes.append(sim)
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        keys = create_keys(work / "store", KEYS)
        gateway = subprocess.Popen(
            pinned(0, [sys.executable, str(ROOT / "bench" / "gateway_probe.py"), "serve", "-c", str(config)]),
            env=gateway_env, stdout=subprocess.DEVNULL, stderr=open(work / "gateway.log", "wb"),
        )  # fmt: skip
        processes.append(gateway)
        # tracemalloc slows the start-up (the catalog's import and build) several times over.
        wait_healthy(f"http://127.0.0.1:{gw_port}/health", timeout=240 if args.tracemalloc else 60)
        proc = psutil.Process(gateway.pid)
        time.sleep(1.0)
        result["rss_idle_mib"] = proc.memory_info().rss / 2**20

        lua = work / "soak.lua"
        lua.write_text(lua_script(keys))
        wrk = subprocess.Popen(
            pinned(1, ["wrk", "-t1", f"-c{args.connections}", f"-d{int(args.max_seconds)}s",
                       "--timeout", "10s", "-s", str(lua), f"http://127.0.0.1:{gw_port}"]),
            stdout=open(work / "wrk.out", "wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        processes.append(wrk)
        started = time.monotonic()
        cpu0 = proc.cpu_times()
        milestones = [args.requests * i // 10 for i in range(1, 11)]
        if args.warmup_probe:
            milestones.insert(0, args.warmup_probe)
        next_probe = 0
        done = 0
        last_print = 0.0
        while wrk.poll() is None:
            time.sleep(args.sample_s)
            done, statuses = scrape(metrics_url)
            now = time.monotonic() - started
            cpu = proc.cpu_times()
            samples.append({
                "t": round(now, 2),
                "requests": done,
                "rss_mib": round(proc.memory_info().rss / 2**20, 2),
                "cpu_s": round(cpu.user + cpu.system - cpu0.user - cpu0.system, 2),
                "fds": proc.num_fds(),
                "load": load_average(),
            })  # fmt: skip
            if now - last_print >= 30:
                last_print = now
                s = samples[-1]
                print(f"  {now:6.0f}s {done:>9,} requests  RSS {s['rss_mib']:.1f} MiB  load {s['load']:.2f}",
                      flush=True)  # fmt: skip
            if next_probe < len(milestones) and done >= milestones[next_probe]:
                next_probe += 1
                os.kill(gateway.pid, signal.SIGUSR1)
                found = wait_probe(dump, next_probe)
                if found is not None:
                    found["requests"] = done
                    probes.append(found)
            if done >= args.requests:
                break
        elapsed = time.monotonic() - started
        if wrk.poll() is None:
            wrk.send_signal(signal.SIGINT)  # wrk prints its summary on SIGINT
            try:
                wrk.wait(10)
            except subprocess.TimeoutExpired:
                wrk.kill()
        time.sleep(3.0)
        done, statuses = scrape(metrics_url)
        cpu = proc.cpu_times()
        result["elapsed_s"] = elapsed
        result["requests"] = done
        result["statuses"] = statuses
        result["cpu_s"] = cpu.user + cpu.system - cpu0.user - cpu0.system
        result["rss_end_idle_mib"] = proc.memory_info().rss / 2**20
        os.kill(gateway.pid, signal.SIGUSR1)
        found = wait_probe(dump, next_probe + 1)
        if found is not None:
            found["requests"] = done
            found["final"] = True
            probes.append(found)
        result["load_at_end"] = load_average()
        result["wrk"] = (work / "wrk.out").read_text()
        result["gateway_log_tail"] = (work / "gateway.log").read_text()[-3000:]
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
    result["samples"] = samples
    result["probes"] = probes
    if args.tracemalloc:
        result["tracemalloc_top"] = tracemalloc_diff(dump, probes)
    result["work_dir"] = str(work)
    return result


def tracemalloc_diff(dump: Path, probes: list[dict[str, Any]], top: int = 30) -> list[str]:
    """What grew between the first probe after warm-up and the last (by traceback)."""
    indexes = [p["probe"] for p in probes if (dump / f"probe-{p['probe']}.tracemalloc").exists()]
    if len(indexes) < 2:
        return []
    first = tracemalloc.Snapshot.load(str(dump / f"probe-{indexes[0]}.tracemalloc"))
    last = tracemalloc.Snapshot.load(str(dump / f"probe-{indexes[-1]}.tracemalloc"))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    first, last = first.filter_traces(ignore), last.filter_traces(ignore)
    out = []
    for stat in last.compare_to(first, "traceback")[:top]:
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback[:6])
        out.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  {frames}")
    return out


def figures(result: dict[str, Any]) -> dict[str, Any]:
    samples = [s for s in result["samples"] if s["requests"] > 0]
    if not samples:
        return {}
    total = samples[-1]["requests"]
    half = [s for s in samples if s["requests"] >= total / 2]
    rss = [s["rss_mib"] for s in samples]
    # Least-squares slope of RSS over the second half, MiB per 100,000 requests.
    xs = [s["requests"] for s in half]
    ys = [s["rss_mib"] for s in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 1e5 if var else 0.0
    return {
        "rss_idle_mib": result.get("rss_idle_mib"),
        "rss_peak_mib": max(rss),
        "rss_at_10pct_mib": next(s["rss_mib"] for s in samples if s["requests"] >= total * 0.1),
        "rss_at_half_mib": half[0]["rss_mib"],
        "rss_end_loaded_mib": samples[-1]["rss_mib"],
        "rss_end_idle_mib": result.get("rss_end_idle_mib"),
        "second_half_growth_mib": samples[-1]["rss_mib"] - half[0]["rss_mib"],
        "second_half_slope_mib_per_100k": slope,
        "requests": result.get("requests"),
        "req_per_s": result["requests"] / result["elapsed_s"] if result.get("elapsed_s") else None,
        "cpu_ms_per_request": 1000 * result["cpu_s"] / result["requests"] if result.get("requests") else None,
        "load_min_max": [min(s["load"] for s in samples), max(s["load"] for s in samples)],
        "fds_start_end": [samples[0]["fds"], samples[-1]["fds"]],
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """RSS against requests finished, one curve per run (the idle RSS drawn at 0 requests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    for i, result in enumerate(results):
        samples = [{"requests": 0, "rss_mib": result.get("rss_idle_mib", 0)}, *result["samples"]]
        label = result.get("title") or "RSS"
        ax.plot([s["requests"] / 1e6 for s in samples], [s["rss_mib"] for s in samples], lw=1.2,
                color=f"C{i}", label=label)  # fmt: skip
        gc_points = [p for p in result["probes"] if "rss_after_gc" in p]
        if gc_points:
            ax.scatter([p["requests"] / 1e6 for p in gc_points],
                       [p["rss_after_gc"] / 2**20 for p in gc_points],
                       s=10, color=f"C{i}", zorder=3)  # fmt: skip
    ax.axhline(120, color="grey", ls="--", lw=0.8, label="target: 120 MiB")
    ax.set_xlabel("requests finished (millions); dots: probes, after gc.collect()")
    ax.set_ylabel("gateway RSS (MiB)")
    ax.set_title("faregate serve: RSS against requests (bench/soak.py)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop the load after this long")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--warmup-probe", type=int, default=20_000, help="an extra probe after this many")
    parser.add_argument("--tracemalloc", type=int, default=0, help="frames per traceback (0: off)")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) at each probe")
    parser.add_argument("--malloc-arena-max", type=int, default=0)
    parser.add_argument(
        "--usage-estimate",
        choices=["light", "tokenizer"],
        default="light",
        help="accounts.usage_estimate: tokenizer loads o200k at the first stream without usage",
    )
    parser.add_argument(
        "--backpressure",
        type=int,
        default=None,
        metavar="N",
        help="records.backpressure_pending (default: the gateway's, 4,096; 0: off, as before it)",
    )
    parser.add_argument(
        "--plot-only",
        nargs="+",
        metavar="JSON",
        help="no run: draw the RSS curves of these earlier --out files into one --png",
    )
    parser.add_argument("--title", default="")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    parser.add_argument("--png", default=str(ROOT / "bench" / "results" / "soak.png"))
    args = parser.parse_args()
    if args.plot_only:
        plot([json.loads(Path(p).read_text()) for p in args.plot_only], Path(args.png))
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    result = run(args)
    result["title"] = args.title
    result["figures"] = figures(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot([result], Path(args.png))
    print(json.dumps(result["figures"], indent=1))
    print("statuses:", result.get("statuses"))
    for p in result["probes"]:
        print(f"  probe {p['probe']:>2} at {p['requests']:>9,}: RSS {p['rss_before_gc'] / 2**20:6.1f} MiB, "
              f"after gc {p['rss_after_gc'] / 2**20:6.1f}, gc objects {p['gc_objects']:>8,}"
              + (f", traced {p['traced_bytes'] / 2**20:.1f} MiB" if "traced_bytes" in p else "")
              + (f", trim gave back {p['trim_released'] / 2**20:.1f} MiB" if "trim_released" in p
                 else ""))  # fmt: skip
    for line in result.get("tracemalloc_top", []):
        print(line)


if __name__ == "__main__":
    main()
