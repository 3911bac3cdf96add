"""What the quality loop adds to a request: the same router route with and without `quality`.

One gateway, the simulator answering at once, three router routes over the same trained file and
models: `fixed` (a fixed threshold, no calibration: the baseline of the same run), `calibrated-5`
(`quality` with 5% shadow calls) and `calibrated-100` (every request verified: the worst case, a
shadow call after every response). The requests are sent one at a time, in rounds that alternate
the routes (in a rotating order), so the verification of one request runs while the next is being
answered, as under real traffic; the client times each request. Reported: p50 and p95 per route
and their ratio to `fixed`.

    python bench/quality_overhead.py [--requests 300]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from routes_gsm8k import ROOT, env, free_port, wait_healthy

ROUTES = ("fixed", "calibrated-5", "calibrated-100")
SIM = """
seed: 1
defaults: {ttft_ms: 0, tokens_per_s: 0, faults: {}}
models:
  strong-m: {answer: {fixed: "The answer is 42."}}
  weak-m: {answer: {fixed: "The answer is 42."}}
"""


def config(port: int, sim_port: int, store: Path) -> str:
    router = f"{{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-m}}"
    quality = "{{target: 0.95, verification: {{share: {share}, comparator: final_answer{extra}}}}}"
    uniform = ", frontier: 0, rest_ratio: 1"
    return f"""
server: {{port: {port}, request_timeout_s: 60}}
store: {{path: {store}}}
sim: {{mode: 'on', launch: false, port: {sim_port}}}
baseline_model: strong-m
models:
  strong-m: {{input: 10, output: 30}}
  weak-m: {{input: 0.6, output: 0.6}}
routes:
  fixed:
    router: {{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-m, threshold: 0.3}}
  calibrated-5:
    router: {router}
    quality: {quality.format(share=0.05, extra="")}
  calibrated-100:
    router: {router}
    quality: {quality.format(share=1.0, extra=uniform)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per route")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faregate-quality-overhead-"))
    sim_port, port = free_port(), free_port()
    (work / "sim.yaml").write_text(SIM)
    (work / "faregate.yaml").write_text(config(port, sim_port, work / "store"))
    cli = [sys.executable, "-m", "faregate.cli.main"]
    sim = subprocess.Popen(
        [*cli, "sim", "--port", str(sim_port), "--script", str(work / "sim.yaml")], env=env()
    )
    gateway = subprocess.Popen([*cli, "serve", "-c", str(work / "faregate.yaml")], env=env())
    timings: dict[str, list[float]] = {route: [] for route in ROUTES}
    try:
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        wait_healthy(f"http://127.0.0.1:{port}/health")
        key = subprocess.run(
            [*cli, "keys", "create", "--name", "bench", "-c", str(work / "faregate.yaml")],
            env=env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
        for i in range(args.requests + 20):
            # Rotated each round: the background verification of one request overlaps whichever
            # route comes next, so no route always follows the one that verifies the most.
            for route in ROUTES[i % 3 :] + ROUTES[: i % 3]:
                prompt = f"Question {i}: what is {i} plus {i * 3}?"
                started = time.perf_counter()
                client.chat.completions.create(model=route, messages=[{"role": "user", "content": prompt}])
                if i >= 20:  # the first rounds load the embedding model and warm up
                    timings[route].append((time.perf_counter() - started) * 1000)
    finally:
        for process in (gateway, sim):
            process.terminate()
            process.wait(timeout=30)
    base = statistics.median(timings["fixed"])
    print(f"{args.requests} requests per route, one at a time, routes alternating\n")
    print("| route | p50 | p95 | p50 vs fixed |")
    print("|---|---|---|---|")
    for route, values in timings.items():
        values.sort()
        p50, p95 = statistics.median(values), values[int(0.95 * (len(values) - 1))]
        print(f"| {route} | {p50:.1f} ms | {p95:.1f} ms | {p50 / base:.2f}x |")


if __name__ == "__main__":
    main()
